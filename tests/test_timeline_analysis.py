"""The timeline analysis (``reports/validation/realtime/timeline_analysis.py``) read back on committed H200 runs:
the late copies that motivated ``HostReader`` and the step times the ``alternate`` link model reproduces."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1] / "reports" / "validation" / "realtime"
_spec = importlib.util.spec_from_file_location("timeline_analysis", ROOT / "timeline_analysis.py")
ta = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ta)


def _late(run: Path) -> tuple[int, int, int, float]:
    return ta.late_copies(pd.read_parquet(run / "timeline.parquet"))


def test_tolist_routing_reads_held_the_other_slice_back() -> None:
    """Before HostReader (fourteenth call): 238 of 1,958 copies late, 211 of them just after the other slice's
    routing read; after it (fifteenth call, the same trace): 31 late, none so."""
    n, late, near, delay = _late(ROOT / "h200_timeline" / "mig_saturated-s10")
    assert (n, late, near) == (1958, 238, 211)
    assert delay == pytest.approx(0.0131, abs=5e-4)
    n, late, near, _ = _late(ROOT / "h200_pinned" / "mig_saturated-s10-p")
    assert (n, late, near) == (1958, 31, 0)


def test_two_decoding_slices_share_one_copy_engine() -> None:
    """Fifteenth call: two decoding slices each take about 1.72x their step alone, the extra all in the copies."""
    run = ROOT / "h200_pinned" / "mig_saturated-s10-p"
    st = ta.step_kinds(pd.read_parquet(run / "timeline.parquet"), pd.read_parquet(run / "segments.parquet"))
    dec = st[st["phase"] == "decode"].groupby("ctx")
    alone, both = dec.get_group("alone"), dec.get_group("beside_decode")
    ratio = both["dur"].mean() / alone["dur"].mean()
    assert ratio == pytest.approx(1.72, abs=0.03)
    rest = (both["dur"] - both["copy_s"]).mean() / (alone["dur"] - alone["copy_s"]).mean()
    assert rest == pytest.approx(1.1, abs=0.1)  # outside the copies about as alone


def test_committed_timeline_md_matches(tmp_path) -> None:
    """The committed ``timeline.md`` of the fifteenth call is what the script writes now."""
    committed = (ROOT / "h200_pinned" / "timeline.md").read_text()
    runs = re.findall(r"^### (\S+)", committed, flags=re.M)
    out = tmp_path / "t.md"
    assert ta.main([str(out), *(str(ROOT / r) for r in runs)]) == 0
    body = lambda s: s.split("\n", 3)[3]  # noqa: E731 (after the command line, which names other paths)
    assert body(out.read_text()) == body(committed)

"""What a report shows, and the one place its options are read and range-checked.

Options come from the sweep's ``multirun.yaml`` (its ``report`` node), then the command line of
``python -m moesim.report`` overrides them. Every value is checked by ``check_options``; a bad one is a
``UserError`` of one line naming the option, the value and what is valid.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moesim.errors import UserError


@dataclass(frozen=True)
class ReportOptions:
    """What the report shows (see ``moesim.config.ReportConfig``).

    Attributes:
        cdf_rate: per-tenant rate (requests/s) of the CDF and the timeline; None: the swept rate nearest the
            middle of the range (geometric middle).
        timeline_window_s: length of the timeline window (seconds).
        slo_target: share of requests that must meet the SLO for a rate to count as sustained, in (0, 1].
        baselines: policies compared against in the headline table (registered policy names).
        compare_rates: per-tenant rates (requests/s) the “vs” columns compare at; empty: every rate both
            series ran (the median of the per-rate ratios is shown).
        slo_ttft_s, slo_tpot_s: SLO targets (seconds) to recompute attainment with from requests.parquet;
            None: the targets each job ran with (its summary.json).
    """

    cdf_rate: float | None = None
    timeline_window_s: float = 30.0
    slo_target: float = 0.9
    baselines: tuple[str, ...] = ("mig", "reconfig")
    compare_rates: tuple[float, ...] = ()
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None

    @property
    def slo_override(self) -> bool:
        """True when the SLO differs from the one the jobs ran with (attainment is recomputed)."""
        return self.slo_ttft_s is not None or self.slo_tpot_s is not None


def _positive(name: str, value: Any, *, optional: bool = False, unit: str = "") -> float | None:
    if value is None and optional:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name}={value!r}: not a number; valid: a finite number > 0{unit}") from None
    if not math.isfinite(v) or v <= 0:
        raise UserError(f"{name}={value}: must be a finite number > 0{unit}")
    return v


def check_options(opts: ReportOptions, where: str = "") -> ReportOptions:
    """``opts`` with every value range-checked and normalised (UserError of one line on a bad one).

    ``where`` prefixes the option names (``report.`` for multirun.yaml, ``--`` for the command line).
    """
    from moesim.policies import POLICIES

    def name(field: str) -> str:
        return f"{where}{field}"

    cdf = _positive(name("cdf_rate"), opts.cdf_rate, optional=True, unit=" (requests/s per tenant)")
    window = _positive(name("timeline_window_s"), opts.timeline_window_s, unit=" (seconds)")
    try:
        target = float(opts.slo_target)
    except (TypeError, ValueError):
        raise UserError(f"{name('slo_target')}={opts.slo_target!r}: not a number; valid: a share in (0, 1]") from None
    if not (0 < target <= 1):
        raise UserError(f"{name('slo_target')}={opts.slo_target}: must be a share in (0, 1] (e.g. 0.9 for 90%)")
    if isinstance(opts.baselines, str):
        raise UserError(f"{name('baselines')}={opts.baselines!r}: must be a list of policies, e.g. [mig, reconfig]")
    baselines = tuple(str(b) for b in opts.baselines)
    valid = sorted(POLICIES.names())
    for b in baselines:
        if b not in valid:
            from moesim.errors import did_you_mean

            raise UserError(f"{name('baselines')}: unknown policy {b!r}{did_you_mean(b, list(valid))}; valid: "
                            f"{', '.join(valid)}")
    rates = tuple(_positive(name("compare_rates"), r, unit=" (requests/s per tenant)") or 0.0
                  for r in opts.compare_rates)
    ttft = _positive(name("slo_ttft_s"), opts.slo_ttft_s, optional=True, unit=" (seconds)")
    tpot = _positive(name("slo_tpot_s"), opts.slo_tpot_s, optional=True, unit=" (seconds)")
    return ReportOptions(cdf_rate=cdf, timeline_window_s=float(window or 0.0), slo_target=target,
                         baselines=baselines, compare_rates=rates, slo_ttft_s=ttft, slo_tpot_s=tpot)


def options_from_node(node: Any, where: str = "report.") -> ReportOptions:
    """Checked options from a ``report`` config node (a dict or OmegaConf node; None: the defaults)."""
    if node is None:
        return ReportOptions()
    if not isinstance(node, dict):
        from omegaconf import OmegaConf

        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, dict):
        raise UserError(f"{where.rstrip('.')}: must be a mapping of report options, not {node!r}")
    known = {f.name for f in dataclasses.fields(ReportOptions)}
    unknown = sorted(set(node) - known)
    if unknown:
        raise UserError(f"{where}{unknown[0]}: unknown report option; valid: {', '.join(sorted(known))}")
    d = dict(node)
    for key in ("baselines", "compare_rates"):
        if key in d and isinstance(d[key], list):
            d[key] = tuple(d[key])
    return check_options(dataclasses.replace(ReportOptions(), **d), where)


def options_from_sweep(root: Path) -> tuple[ReportOptions, str | None]:
    """The report options the sweep ran with (``report`` in its multirun.yaml), else the defaults; and a
    one-line note when multirun.yaml could not be used (the defaults are used then)."""
    p = Path(root) / "multirun.yaml"
    if not p.exists():
        return ReportOptions(), None
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(p)
        node = cfg.get("report") if hasattr(cfg, "get") else None
        return options_from_node(node), None
    except UserError as exc:
        return ReportOptions(), f"{p}: {exc}; the report uses the default options"
    except Exception as exc:  # a corrupt file: yaml errors of many kinds
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return ReportOptions(), f"{p}: unreadable ({type(exc).__name__}: {first}); the report uses the default options"


ARG_FIELDS = ("cdf_rate", "timeline_window_s", "slo_target", "baselines", "compare_rates", "slo_ttft_s",
              "slo_tpot_s")


def options_from_args(base: ReportOptions, args: dict[str, Any]) -> ReportOptions:
    """``base`` (the sweep's options) with the command line's values applied, checked (one-line
    UserError naming the ``--option`` on a bad value)."""
    values = dict(args)
    changes = {k: values[k] for k in ARG_FIELDS if values.get(k) is not None}
    for k in ("baselines", "compare_rates"):
        if k in changes:
            changes[k] = tuple(changes[k])
    # check the command line's values under their own names first, then the result as a whole
    check_options(dataclasses.replace(ReportOptions(), **changes))
    return check_options(dataclasses.replace(base, **changes))

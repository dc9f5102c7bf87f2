"""The 8-domain quality study: domains, bookkeeping (budgets, subsets, schedule), the two model families, activation
distances, one subset on untrained models, and the committed results read back."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from moesim.consolidation import quality_study as Q
from moesim.consolidation.domains import (
    DOMAINS8,
    build_domains,
    genre,
    python_prose_code,
    split_works,
    tail_split,
)
from moesim.consolidation.weights import expert_distances, layout_of
from moesim.tinymoe import CPU_CONFIG, FINE_CONFIG, LARGE_CONFIG, TinyMoE, count_params

ROOT = Path(__file__).resolve().parents[1]
CORPORA = ROOT / "corpora" / "data"


def test_genres_and_work_split() -> None:
    assert genre("THE TRAGEDY OF KING RICHARD THE SECOND") == "history"
    assert genre("THE TRAGEDY OF KING LEAR") == "tragedy"
    assert genre("THE SONNETS") == "poems"
    assert genre("THE TEMPEST") == "comedy"
    text = "A PLAY\n\nby William Shakespeare\nact one\n\nTHE SONNETS\nby William Shakespeare\nI\n"
    works = split_works(text)
    assert [w[0] for w in works] == ["A PLAY", "THE SONNETS"]
    assert "".join(w[1] for w in works) == text
    head, tail = tail_split("aaaa\nbbbb\ncccc\ndddd\n", 0.3)
    assert (head, tail) == ("aaaa\nbbbb\n", "cccc\ndddd\n")  # cut at 14 chars, back to the line start


def test_python_prose_and_code_lines() -> None:
    src = 'import os\n# a comment\ndef f():\n    """Doc\n    more."""\n    return 1  # trailing\n'
    prose, code = python_prose_code(src)
    assert prose == '# a comment\n    """Doc\n    more."""\n'
    assert code == "import os\ndef f():\n    return 1  # trailing\n"


def test_eight_domains_from_the_committed_corpora() -> None:
    d = build_domains(CORPORA)
    assert tuple(d) == DOMAINS8
    sizes = {k: (len(v["train"]), len(v["test"])) for k, v in d.items()}
    assert sizes == {
        "wikitext2": (1_144_248, 399_508), "milton": (904_597, 100_768),
        "python-code": (2_547_100, 224_984), "python-prose": (1_452_869, 175_002),
        "shakespeare-comedy": (1_399_641, 109_839), "shakespeare-tragedy": (955_873, 290_163),
        "shakespeare-history": (1_265_002, 172_611), "shakespeare-poems": (181_993, 24_915),
    }
    # python-code + python-prose is exactly the committed python text
    py = (CORPORA / "python" / "train.txt").read_bytes()
    assert len(d["python-code"]["train"]) + len(d["python-prose"]["train"]) == len(py)


def test_family_sizes() -> None:
    large, fine = TinyMoE(LARGE_CONFIG), TinyMoE(FINE_CONFIG)
    assert count_params(large) == 156_541_440 >= 100_000_000
    assert count_params(fine) == 62_796_672
    lay = layout_of(fine.state_dict())
    assert (lay.n_layers, lay.n_experts, lay.expert_params) == (6, 32, 3 * 384 * 256)
    # the shared expert is not a routed expert: it counts as non-expert (kept per variant)
    assert lay.nonexpert_params == 62_796_672 - 6 * 32 * 3 * 384 * 256
    assert any("shared_expert.w1" in k for k in fine.state_dict())


def test_shared_expert_adds_to_every_token() -> None:
    torch.manual_seed(0)
    cfg = replace(CPU_CONFIG, shared_d_ff=32, max_seq=16)
    m = TinyMoE(cfg).eval()
    x = torch.randn(1, 5, cfg.d_model)
    moe = m.model.layers[0].block_sparse_moe
    with torch.no_grad():
        out, _ = moe(x)
        saved = moe.shared_expert.w2.weight.clone()
        moe.shared_expert.w2.weight.zero_()
        routed, _ = moe(x)
        moe.shared_expert.w2.weight.copy_(saved)
        shared = moe.shared_expert(x.reshape(-1, cfg.d_model)).view_as(x)
    assert torch.allclose(out, routed + shared, atol=1e-6)


def test_budgets_subsets_and_schedule() -> None:
    e, ne, n_pos = 4_718_592, 11_092_992, 64  # the large family, bf16
    assert Q.budget_copies(0.5, 4, n_pos, ne, e) == 123  # (0.5·4·313,082,880 − 4·11,092,992) // 4,718,592
    assert Q.budget_copies(0.25, 8, n_pos, ne, e) == 113
    assert Q.budget_copies(0.5, 2, n_pos, ne, e) is None  # below one copy per position
    assert Q.budget_copies(1.0, 3, n_pos, ne, e) == 3 * n_pos
    assert Q.paper_shared(123, 4, n_pos) == 45  # ⌈(256 − 123) / 3⌉
    assert Q.paper_shared(64, 2, n_pos) == 64
    assert Q.paper_shared(128, 2, n_pos) == 0
    subs = Q.subsets_for(0, 8, {8: 1, 2: 4, 4: 2})
    assert subs[0] == tuple(range(8))
    assert sorted(i for s in subs[1:5] for i in s) == list(range(8))  # the pairs cover every domain once
    assert sorted(i for s in subs[5:7] for i in s) == list(range(8))
    assert Q.subsets_for(1, 8, {2: 4}) != Q.subsets_for(0, 8, {2: 4})
    assert Q.lr_at(0.0, 0, 1.0, 10) == pytest.approx(0.1)
    assert Q.lr_at(0.0, 10, 1.0, 10) == pytest.approx(1.0)
    assert Q.lr_at(0.5, 100, 1.0, 10) == pytest.approx(0.55)
    assert Q.lr_at(2.0, 100, 1.0, 10) == pytest.approx(0.1)


def _unit_family() -> Q.Family:
    return Q.Family("unit", replace(CPU_CONFIG, max_seq=16), seq=16, batch=2, pretrain_lr=1e-3, pretrain_s=1.0,
                    finetune_lr=1e-3, finetune_steps=1, finetune_s=1.0, warmup=1, eval_windows=1, val_windows=1,
                    calib_windows=1, val_every=1, ft_val_every=1, seeds=(0,), subsets={2: 1})


def test_activation_distances_and_one_subset_on_untrained_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Q, "BUDGETS", (0.75,))  # all-shared and one more budget keep the test fast
    monkeypatch.setattr(Q, "MERGE_SCALES", (0.5, 1.0))
    torch.manual_seed(0)
    fam = _unit_family()
    runner = Q.Runner(fam, Q.Data(CORPORA, fam, torch.device("cpu")), torch.device("cpu"), [])
    base = TinyMoE(fam.model).state_dict()
    states = [{k: v + 0.02 * torch.randn_like(v) for k, v in base.items()} for _ in range(3)]
    states.append({k: v.clone() for k, v in states[0].items()})  # variant 3 = variant 0
    layout = layout_of(base)
    wd = expert_distances(states, layout, permute=True)
    act = Q.activation_distances(runner, base, states, layout, wd.perm)
    assert act.shape == (4, 4, 2, 8)
    assert np.allclose(act, act.transpose(1, 0, 2, 3))
    assert np.all(np.diagonal(act, axis1=0, axis2=1) == 0)
    assert np.allclose(act[0, 3], 0.0)
    assert (act[0, 1] > 0).sum() > 0
    alone = {d: runner.evaluate(states[i % 4], d) for i, d in enumerate(DOMAINS8)}
    rows: list[dict] = []
    Q.study_subset(runner, fam, 0, base, states, layout, wd, act, (0, 3), alone, rows.append, {})
    by = {(r["method"], r["budget"]): r for r in rows if r["domain"] == DOMAINS8[0]}
    # variants 0 and 3 are identical: every consolidation equals the variant alone, at every budget
    for (method, _budget), r in by.items():
        if method in Q.PLAN_METHODS or method == "uniform-average":
            assert r["perplexity"] == pytest.approx(by[("alone", "1")]["perplexity"], rel=1e-5), method
    # memory: all-shared = 2 non-expert sets + one copy per position, over 2 models
    e, ne = layout.expert_params * 2, layout.nonexpert_params * 2
    want = (2 * ne + 16 * e) / (2 * (ne + 16 * e))
    assert by[("act-cluster-mean", "all-shared")]["memory_fraction"] == pytest.approx(want, abs=1e-6)
    assert {r["method"] for r in rows} == {"alone", *Q.PLAN_METHODS, *Q.MERGE_METHODS}
    assert all(0 <= r["accuracy"] <= 1 and math.isfinite(r["perplexity"]) for r in rows)


REPORT = ROOT / "reports" / "consolidation" / "h200-v2"  # the second call (h200 preset)


def test_committed_results_read_back() -> None:
    import json

    from moesim.consolidation.quality_report import OURS, load, summarize

    q, meta, dist = load(REPORT)
    assert len(q) == 876
    assert meta["gpu"] == "NVIDIA H200"
    large, fine = meta["families"]["large"], meta["families"]["fine"]
    assert large["params"] == 156_541_440
    assert fine["params"] == 62_796_672
    # every alone row is the variant's own held-out perplexity recorded in metadata.json
    for _, r in q[q.method == "alone"].iterrows():
        ce, acc = meta["families"][r.family]["seeds"][str(r.seed)]["alone"][r.domain]
        assert r.perplexity == pytest.approx(math.exp(ce), rel=1e-5)
        assert r.accuracy == pytest.approx(acc, abs=1e-6)
    # nothing is lost or invented: each (family, seed, subset, method, budget) has one row per member
    for (_f, _s, subset, _m, _b), g in q.groupby(["family", "seed", "subset", "method", "budget"]):
        assert sorted(g.domain) == sorted(subset.split("+"))
    # the memory axis never exceeds its budget label
    lab = q[~q.budget.isin(["1", "all-shared"]) & ~q.budget.str.startswith("1/")]
    assert (lab.memory_fraction <= lab.budget.astype(float) + 1e-9).all()
    # the committed summary is what the committed CSV gives
    s = json.loads((REPORT / "summary.json").read_text())
    assert s == json.loads(json.dumps(summarize(q, meta)))
    half = {(t["family"], t["n_variants"]): t for t in s["targets"]}
    assert half[("fine", 8)][OURS]["worst_change"] == pytest.approx(-0.00109, abs=1e-5)
    assert half[("large", 8)][OURS]["every_domain_within_target"] is True
    assert s["wins"]["fine"][f"{OURS} vs uniform-average"]["wins"] == 56
    assert set(dist) == {"large/0", "large/1", "fine/0"}
    assert meta["families"]["large"]["seeds"]["2"] == "skipped: deadline"


def test_one_subset_per_n_first() -> None:
    plain = Q.subsets_for(0, 8, {2: 4, 3: 2, 4: 2, 8: 1})
    first = Q.subsets_for(0, 8, {2: 4, 3: 2, 4: 2, 8: 1}, one_per_n_first=True)
    assert sorted(plain) == sorted(first)
    assert [len(s) for s in first[:4]] == [2, 3, 4, 8]


def test_merge_of_single_family_runs_gives_the_same_summary(tmp_path: Path) -> None:
    import json

    import pandas as pd

    from moesim.consolidation.quality_report import load, merge, summarize
    from moesim.errors import UserError

    q = pd.read_csv(REPORT / "quality.csv", dtype={"budget": str})
    meta = json.loads((REPORT / "metadata.json").read_text())
    dist = json.loads((REPORT / "distances.json").read_text())
    parts = []
    for fam in ("large", "fine"):
        p = tmp_path / fam
        p.mkdir()
        q[q.family == fam].to_csv(p / "quality.csv", index=False)
        (p / "metadata.json").write_text(json.dumps({**meta, "families": {fam: meta["families"][fam]}}))
        (p / "distances.json").write_text(json.dumps({k: v for k, v in dist.items() if k.startswith(fam)}))
        parts.append(p)
    merge(tmp_path / "all", parts)
    qa, ma, _ = load(tmp_path / "all")
    q0, m0, _ = load(REPORT)
    assert json.dumps(summarize(qa, ma), sort_keys=True) == json.dumps(summarize(q0, m0), sort_keys=True)
    with pytest.raises(UserError, match=r"quality\.csv' not found"):
        merge(tmp_path / "x", [tmp_path / "missing"])
    with pytest.raises(UserError, match="family 'large' is in more than one part"):
        merge(tmp_path / "y", [parts[0], parts[0]])

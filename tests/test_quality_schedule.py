"""Sizing the time-boxed study (schedule), expert drift by depth against the paper (drift), the study's order
over seeds and its device-side batches."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from moesim.consolidation import quality_study as Q
from moesim.consolidation.domains import DOMAINS8
from moesim.consolidation.drift import (
    PAPER_DEEP_FROM,
    PAPER_LEAST_SIMILAR,
    depth_profile,
    spearman,
    summed_l2,
)
from moesim.consolidation.schedule import convergence, finetune_seconds, size_plan

CORPORA = Path(__file__).resolve().parents[1] / "corpora" / "data"


def test_size_plan_closed_form() -> None:
    # one fine-tune: 48 steps × 0.1 s + (48 // 4 + 1) validations × 0.4/8 s + 0.6 s set-up = 6.05 s
    assert finetune_seconds(0.1, 48, 4, 0.05, 0.6) == pytest.approx(6.05)
    kw = {"n_domains": 8, "ft_steps": 48, "ft_val_every": 4, "seeds_wanted": 3, "study_s_per_seed": 45.0,
              "extra_per_seed_s": 8.0, "min_pretrain_s": 120.0, "max_pretrain_steps": 10**6}
    p = size_plan(430.0, 0.1, 0.4, **kw)
    # per seed 8 × 6.05 + 8 = 56.4 s; 3 seeds need 3 × (56.4 + 45) = 304.2 s, leaving 125.8 s ≥ 120
    assert (p.n_seeds, p.per_seed_s, p.study_s) == (3, 56.4, 135.0)
    assert p.pretrain_steps == 1194  # (125.8 − 16 validations × 0.4 s) / 0.1 s
    assert p.val_every == 1194 // 16
    assert p.pretrain_s == pytest.approx(1194 * 0.1 + 16 * 0.4)
    assert size_plan(420.0, 0.1, 0.4, **kw).n_seeds == 2  # 420 − 304.2 < 120
    # a slower step: 3 seeds would leave < 120 s, so 2
    slow = size_plan(430.0, 0.17, 0.4, **kw)
    per_seed = 8 * (48 * 0.17 + 13 * 0.05 + 0.6) + 8
    assert slow.n_seeds == 2
    assert slow.per_seed_s == pytest.approx(per_seed)
    assert slow.pretrain_steps == int((430 - 2 * (per_seed + 45) - 6.4) / 0.17)
    # the step cap, and never fewer than one seed or one step
    assert size_plan(430.0, 0.1, 0.4, **{**kw, "max_pretrain_steps": 500}).pretrain_steps == 500
    tiny = size_plan(50.0, 0.1, 0.4, **kw)
    assert (tiny.n_seeds, tiny.pretrain_steps) == (1, 1)
    with pytest.raises(ValueError, match="must be positive"):
        size_plan(0.0, 0.1, 0.4, **kw)
    # the floor is never more than the capped steps need: 500 steps × 0.1 s + 6.4 s = 56.4 s < 120 s, so 420 s
    # (which left 115.8 s for pretraining, < 120) now fits 3 seeds
    assert size_plan(420.0, 0.1, 0.4, **{**kw, "max_pretrain_steps": 500}).n_seeds == 3


def test_size_plan_with_the_fourth_calls_measurements_fits_three_seeds() -> None:
    """reports/consolidation/h200-v4-2seeds/metadata.json (preset h200-v4): step 0.0723 s, validation 0.91 s, 391.4 s left.
    The 120 s floor made the sizer take 2 seeds, yet 1,100 capped steps need only 1,100 × 0.0723 + 16 × 0.91
    = 94.1 s, and 3 seeds leave 98.8 s: 3 seeds now, with the step cap reached."""
    import json

    meta = json.loads((CORPORA.parents[1] / "reports" / "consolidation" / "h200-v4-2seeds" / "metadata.json").read_text())
    sched = meta["families"]["large"]["schedule"]
    kw = {"n_domains": 8, "ft_steps": 48, "ft_val_every": 4, "seeds_wanted": 3, "study_s_per_seed": 45.0,
          "extra_per_seed_s": 8.0, "min_pretrain_s": 120.0, "max_pretrain_steps": 1100}
    step_s = meta["families"]["large"]["pretrain"]["step_s"]
    assert step_s == pytest.approx(0.0723, abs=1e-4)
    assert size_plan(sched["avail_s"], step_s, sched["val_s"], **{**kw, "max_pretrain_steps": 10**6}).n_seeds == 2
    p = size_plan(sched["avail_s"], step_s, sched["val_s"], **kw)
    assert p.n_seeds == 3
    assert p.pretrain_steps == 1100
    assert p.per_seed_s == pytest.approx(sched["per_seed_s"], abs=0.05)


def test_convergence_of_a_validation_curve() -> None:
    steps = [100, 200, 300, 400]
    flat = convergence(steps, [2.0, 1.5, 1.499, 1.495])  # tail = steps > 300: best before 1.499, overall 1.495
    assert flat["tail_gain"] == pytest.approx(math.exp(0.004) - 1, abs=1e-5)
    assert flat["converged"] is True
    falling = convergence(steps, [2.0, 1.5, 1.4, 1.3])
    assert falling["tail_gain"] == pytest.approx(math.exp(0.1) - 1, abs=1e-5)
    assert falling["converged"] is False
    over = convergence(steps, [2.0, 1.4, 1.45, 1.5])  # overfitting: best at step 200, before the tail
    assert (over["best_step"], over["tail_gain"], over["converged"]) == (200, 0.0, True)
    with pytest.raises(ValueError, match="non-empty"):
        convergence([], [])


def test_depth_profile_against_the_paper() -> None:
    n, n_layers, n_exp = 3, 8, 8
    l2 = np.ones((n, n, n_layers, n_exp))
    l2[:, :, 6:] = 5.0  # layers 6, 7 far apart
    for v in range(n):
        l2[v, v] = 0.0
    assert summed_l2(l2)[0, 0] == 3.0
    assert summed_l2(l2)[7, 0] == 15.0
    p = depth_profile(l2, base_norm=np.full((n_layers, n_exp), 3.0))
    assert p["least_similar"] == round(PAPER_LEAST_SIMILAR * 64) == 10
    assert p["deep_layers"] == [5, 6, 7]  # ⌈18/32 · 8⌉ = 5
    assert p["deep_share"] == 1.0
    assert p["deep_share_if_uniform"] == 0.375
    assert p["least_similar_per_layer"] == [0, 0, 0, 0, 0, 0, 8, 2]
    assert p["relative_by_layer"][0] == 1.0
    assert p["relative_by_layer"][7] == 5.0
    assert p["spearman_depth"] == pytest.approx(spearman(np.arange(8), np.array(p["by_layer"])), abs=1e-4)
    assert p["spearman_depth"] == pytest.approx(0.7559, abs=1e-4)  # six tied layers, then two higher
    assert spearman(np.arange(5), np.arange(5) ** 2) == pytest.approx(1.0)
    assert spearman(np.arange(5), -np.arange(5.0)) == pytest.approx(-1.0)
    assert math.isnan(spearman(np.arange(3), np.ones(3)))
    assert PAPER_DEEP_FROM == 18 / 32


def test_study_queue_round_robin_over_seeds_and_merge_scales() -> None:
    fam = Q.PRESETS["h200-v3"][0]
    q = Q.study_queue(fam, [0, 1, 2], 8)
    assert len(q) == 3 * sum(fam.subsets.values()) == 30
    assert [(s, len(sub)) for s, sub in q[:12]] == [(s, n) for n in (8, 4, 3, 2) for s in (0, 1, 2)]
    for seed in (0, 1, 2):  # each seed's subsets are subsets_for's, N by N
        mine = [sub for s, sub in q if s == seed]
        for n, c in fam.subsets.items():
            assert [sub for sub in mine if len(sub) == n] == Q.subsets_for(seed, 8, {n: c})
    assert Q.merge_scales(8) == (0.125, 0.2, 0.35, 0.5, 0.75, 1.0)
    assert Q.merge_scales(2) == (0.2, 0.35, 0.5, 0.75, 1.0)
    assert Q.fastest_correct({"loop": {"ok": True, "step_s": 0.2}, "grouped": {"ok": True, "step_s": 0.05},
                              "sorted": {"ok": False, "error": "x"}}) == "grouped"
    assert Q.fastest_correct({"error": "probe timed out"}) == "loop"
    # the third call's probe on the H200 (loop 5.64974): sorted / grouped are correct, a wrong loss is not
    assert Q.probe_ok(5.64971, 5.64974, 0.0521)
    assert not Q.probe_ok(5.70, 5.64974, 0.0)
    assert not Q.probe_ok(5.64971, 5.64974, 0.5)


def test_device_batches_lie_inside_one_domain_and_part_and_are_seeded() -> None:
    fam = Q.PRESETS["smoke-v3"][0]
    assert fam.pretrain_share == 0.5
    data = Q.Data(CORPORA, fam, torch.device("cpu"))
    doms = ("milton", "shakespeare-poems")
    idx = torch.as_tensor([data.domains.index(d) for d in doms])
    for part, half in (("pretrain", 0), ("finetune", 1)):
        src = data.parts[part]
        for d in DOMAINS8:  # the two parts split each domain's training bytes in half, nothing lost
            assert src.sizes[d] == (len(data.train[d]) // 2 if half == 0 else len(data.train[d]) - len(data.train[d]) // 2)
        sizes = torch.as_tensor([float(src.sizes[d]) for d in doms])
        cdf = torch.cumsum(sizes / sizes.sum(), 0)
        a = src.batch(idx, cdf, 300, fam.seq, torch.Generator().manual_seed(3))
        b = src.batch(idx, cdf, 300, fam.seq, torch.Generator().manual_seed(3))
        assert a.shape == (300, fam.seq + 1)
        assert a.dtype == torch.int64
        assert torch.equal(a, b)
        texts = {d: (data.train[d][: len(data.train[d]) // 2] if half == 0 else
                     data.train[d][len(data.train[d]) // 2:]).tobytes() for d in doms}
        found = dict.fromkeys(doms, 0)
        for w in a.numpy().astype(np.uint8):
            hits = [d for d in doms if w.tobytes() in texts[d]]
            assert hits, f"a {part} window is not inside one domain's {part} bytes"
            found[hits[0]] += 1
        share = found["milton"] / 300  # milton has ~5× poems' bytes: p = 859,367 / (859,367 + 172,893) ≈ 0.83
        assert 0.76 < share < 0.90


def test_train_sizes_itself_and_stops_at_the_validation_minimum(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from moesim.tinymoe import CPU_CONFIG, TinyMoE

    fam = replace(Q.PRESETS["smoke-v3"][0], model=replace(CPU_CONFIG, max_seq=16), seq=16, batch=2, size_at=5,
                  warmup=1)
    runner = Q.Runner(fam, Q.Data(CORPORA, fam, torch.device("cpu")), torch.device("cpu"), [])
    calls: list[float] = []

    def sizer(step_s: float) -> tuple[int, float, int]:
        calls.append(step_s)
        return 9, 1e9, 3  # 9 steps, validation every 3

    r = runner.train(TinyMoE(fam.model), "p", DOMAINS8, 1e-3, 1e9, None, 0, 100, sizer=sizer)
    assert len(calls) == 1
    assert calls[0] > 0
    assert (r["steps"], r["max_steps"], r["sized_at"], r["val_every"], r["early_stop"]) == (9, 9, 5, 3, None)
    assert [row["step"] for row in runner.log if row["split"] == "val"] == [6, 9]  # every 100 before sizing at 5
    # scripted validation losses: best at the 2nd validation, then 3 worse in a row -> stop at the 5th
    losses = iter([3.0, 2.0, 2.5, 2.6, 2.7, 1.0, 1.0])
    monkeypatch.setattr(runner, "evaluate", lambda state, d, split="test": (next(losses), 0.5))
    r = runner.train(TinyMoE(fam.model), "q", ("milton",), 1e-3, 1e9, 50, 0, 1, patience=3, val_at_start=True,
                     part="finetune")
    assert (r["kept_step"], r["early_stop"], r["steps"]) == (1, 4, 4)  # validations at steps 0, 1, 2, 3, 4


def test_third_call_results_read_back() -> None:
    """reports/consolidation/h200-v3 (preset h200-v3): rows consistent with metadata, summary = what the CSV
    gives, and the figures docs/consolidation.md quotes."""
    import json

    from moesim.consolidation.quality_report import OURS, load, summarize

    report = CORPORA.parents[1] / "reports" / "consolidation" / "h200-v3"
    q, meta, dist = load(report)
    fam = meta["families"]["large"]
    assert (len(q), meta["gpu"], fam["params"], fam["dispatch"]) == (462, "NVIDIA H200", 156_541_440, "loop")
    assert fam["seeds"]["1"] == fam["seeds"]["2"] == "skipped: deadline"  # the schedule fitted one seed
    assert set(dist) == {"large/0"}
    for _, r in q[q.method == "alone"].iterrows():
        ce, acc = fam["seeds"]["0"]["alone"][r.domain]
        assert r.perplexity == pytest.approx(math.exp(ce), rel=1e-5)
        assert r.accuracy == pytest.approx(acc, abs=1e-6)
    # each N's subsets cover every domain: 1 × 8, 2 × 4, 3 × 3, 4 × 2 members
    subsets = q[q.method == OURS].drop_duplicates("subset").subset.str.split("+")
    for n, c in ((8, 1), (4, 2), (3, 3), (2, 4)):
        mine = [s for s in subsets if len(s) == n]
        assert len(mine) == c
        assert {d for s in mine for d in s} == set(DOMAINS8)
    s = json.loads((report / "summary.json").read_text())
    assert s == json.loads(json.dumps(summarize(q, meta)))
    pre = s["training"]["large"]["pretrain"]
    assert (pre["tokens"], pre["kept_step"], pre["early_stop"]) == (1024 * 64 * 512, 832, 1024)
    assert pre["convergence"]["converged"] is True
    assert pre["convergence"]["tail_gain"] == pytest.approx(0.00374, abs=1e-5)
    gain = s["variant_gain"]["large/0"]
    assert sum(v < 0 for v in gain.values()) == 7
    assert gain["milton"] == pytest.approx(0.3518, abs=1e-4)
    dp = s["depth_profile"]["large/0"]
    assert (dp["least_similar"], dp["deep_layers"], dp["deep_share"]) == (10, [5, 6, 7], 0.7)
    half = {(r["n_variants"], r["budget"]): r for r in s["by_budget"]}
    for key, worst in (((8, "0.5"), 0.0012), ((4, "0.5"), -0.0004), ((3, "0.5"), 0.0051), ((2, "all-shared"), -0.0012)):
        assert half[key]["worst_change"] == pytest.approx(worst, abs=1e-4)
        assert half[key]["every_domain_within_target"] is True
    assert half[(8, "0.5")]["uniform-average"]["wins"] == 7
    assert half[(8, "all-shared")]["worst_change"] == pytest.approx(0.0244, abs=1e-4)
    assert s["wins"]["large"][f"{OURS} vs uniform-average"] == {
        "cases": 99, "wins": 76, "min_margin": pytest.approx(-0.25934, abs=1e-5),
        "median_margin": pytest.approx(0.01108, abs=1e-5)}


def test_fourth_call_results_read_back() -> None:
    """reports/consolidation/h200-v4-2seeds (preset h200-v4, two seeds): rows consistent with metadata, summary =
    what the CSV gives, and the figures docs/consolidation.md quotes."""
    import json

    from moesim.consolidation.quality_report import OURS, load, summarize

    report = CORPORA.parents[1] / "reports" / "consolidation" / "h200-v4-2seeds"
    q, meta, dist = load(report)
    fam = meta["families"]["large"]
    assert (len(q), meta["gpu"], fam["params"], fam["dispatch"]) == (924, "NVIDIA H200", 156_541_440, "grouped")
    assert fam["seeds"]["2"] == "skipped: deadline"  # the sizer fitted two seeds
    assert set(dist) == {"large/0", "large/1"}
    for seed in ("0", "1"):
        for _, r in q[(q.method == "alone") & (q.seed == int(seed))].iterrows():
            ce, acc = fam["seeds"][seed]["alone"][r.domain]
            assert r.perplexity == pytest.approx(math.exp(ce), rel=1e-5)
            assert r.accuracy == pytest.approx(acc, abs=1e-6)
    s = json.loads((report / "summary.json").read_text())
    assert s == json.loads(json.dumps(summarize(q, meta)))
    pre = s["training"]["large"]["pretrain"]
    assert (pre["tokens"], pre["kept_step"], pre["early_stop"]) == (1088 * 64 * 512, 884, 1088)
    assert pre["convergence"]["converged"] is True
    for seed in ("large/0", "large/1"):  # every fine-tune beats its base on its own text (milton too)
        assert all(v < -0.02 for v in s["variant_gain"][seed].values())
        dp = s["depth_profile"][seed]
        assert (dp["least_similar"], dp["deep_layers"], dp["deep_share"]) == (10, [5, 6, 7], 0.7)
    half = {(r["n_variants"], r["budget"]): r for r in s["by_budget"]}
    for key, worst in (((8, "0.5"), 0.0125), ((4, "0.5"), 0.0114), ((3, "0.5"), 0.0128), ((2, "all-shared"), 0.0194)):
        assert half[key]["worst_change"] == pytest.approx(worst, abs=1e-4)
        assert half[key]["every_domain_within_target"] is True
        assert half[key]["seeds"] == 2
    assert half[(8, "0.5")]["uniform-average"]["wins"] == 13
    assert half[(8, "all-shared")]["worst_change"] == pytest.approx(0.0473, abs=1e-4)
    assert s["wins"]["large"][f"{OURS} vs uniform-average"]["wins"] == 162
    assert s["wins"]["large"][f"{OURS} vs ties"]["wins"] == 181
    # every case a whole-model merge wins is a Shakespeare domain
    k = ["seed", "n_variants", "subset", "domain"]
    ours = q[(q.method == OURS) & (q.budget != "1")]
    for merge in ("uniform-average", "task-arithmetic", "ties"):
        j = ours.merge(q[q.method == merge][[*k, "perplexity"]], on=k, suffixes=("", "_m"))
        assert len(j) == 198
        assert j[j.perplexity > j.perplexity_m].domain.str.startswith("shakespeare").all()


def test_fifth_call_results_read_back() -> None:
    """reports/consolidation (preset h200-v4 after the sizer's fix, three seeds): the sizer took 3 seeds, the
    summary is what the CSV gives, and the figures docs/consolidation.md and the README quote."""
    import json

    from moesim.consolidation.quality_report import OURS, load, summarize

    report = CORPORA.parents[1] / "reports" / "consolidation"
    q, meta, dist = load(report)
    fam = meta["families"]["large"]
    assert (meta["gpu"], fam["params"], fam["schedule"]["n_seeds"]) == ("NVIDIA H200", 156_541_440, 3)
    assert set(dist) == {"large/0", "large/1", "large/2"}
    assert all(isinstance(fam["seeds"][s], dict) for s in ("0", "1", "2"))  # none skipped
    s = json.loads((report / "summary.json").read_text())
    assert s == json.loads(json.dumps(summarize(q, meta)))
    for seed in ("large/0", "large/1", "large/2"):  # every fine-tune beats its base on its own text
        assert all(v < -0.007 for v in s["variant_gain"][seed].values())
    assert [s["depth_profile"][f"large/{i}"]["deep_share"] for i in range(3)] == [0.5, 0.6, 0.6]
    half = {(r["n_variants"], r["budget"]): r for r in s["by_budget"]}
    for key, worst in (((8, "0.5"), 0.0073), ((4, "0.5"), 0.0064), ((3, "0.5"), 0.0090), ((2, "all-shared"), 0.0121)):
        assert half[key]["worst_change"] == pytest.approx(worst, abs=1e-4)
        assert half[key]["every_domain_within_target"] is True
        assert half[key]["seeds"] == 3
        assert half[key]["mean_change_seed_range"][1] < 0  # every seed's mean is better than the variants alone
    assert half[(8, "all-shared")]["worst_change"] == pytest.approx(0.0381, abs=1e-4)
    wins = s["wins"]["large"]
    assert [wins[f"{OURS} vs {m}"]["wins"] for m in ("uniform-average", "task-arithmetic", "ties", "dare")] == [
        242, 244, 279, 245]
    # every case a whole-model merge wins is a Shakespeare domain, and there the merge beats the variant alone too
    k = ["seed", "n_variants", "subset", "domain"]
    ours = q[(q.method == OURS) & (q.budget != "1")]
    alone = q[q.method == "alone"][[*k, "perplexity"]].rename(columns={"perplexity": "alone"})
    for merge in ("uniform-average", "task-arithmetic", "ties"):
        j = ours.merge(q[q.method == merge][[*k, "perplexity"]], on=k, suffixes=("", "_m")).merge(alone, on=k)
        assert len(j) == 297
        lost = j[j.perplexity > j.perplexity_m]
        assert lost.domain.str.startswith("shakespeare").all()
        assert (lost.perplexity_m < lost.alone).all()


def test_split_train_by_position_and_by_blocks() -> None:
    a = np.arange(25, dtype=np.uint8)
    pre, ft = Q.split_train(a, None)
    assert pre is a
    assert ft is a
    pre, ft = Q.split_train(a, 0.5)
    assert pre.tolist() == list(range(12))
    assert ft.tolist() == list(range(12, 25))
    pre, ft = Q.split_train(a, 0.5, block=10)  # blocks [0, 10), [10, 20), [20, 25): first 5 of each to pretraining
    assert pre.tolist() == [*range(5), *range(10, 15), *range(20, 25)]
    assert ft.tolist() == [*range(5, 10), *range(15, 20)]
    # milton with 64 KiB blocks: both halves hold text from its first and its last work, nothing lost
    m = Q.build_domains(CORPORA)["milton"]["train"]
    pre, ft = Q.split_train(m, 0.5, 65536)
    assert len(pre) + len(ft) == len(m)
    assert abs(len(pre) - len(ft)) <= 65536 // 2
    assert pre[:100].tobytes() == m[:100].tobytes()
    assert ft[-100:].tobytes() == m[-100:].tobytes()
    assert Q.PRESETS["h200-v4"][0].split_block == 65536
    assert Q.PRESETS["h200-v3"][0].split_block is None

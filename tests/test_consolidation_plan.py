"""Consolidation plans: hand-computed arithmetic, the paper's 217/256 figure, JSON round trip, bad input."""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.consolidation import load_plan, plan_from_distance_model
from moesim.consolidation.builders import build_plan, gpu_capacity, similarity_order, summed_distance
from moesim.consolidation.matching import align_to_reference, min_cost_assignment
from moesim.errors import UserError
from moesim.specs import get_model


def pair_from(d01: list[float], d02: list[float], d12: list[float]) -> np.ndarray:
    """(3, 3, 1, E) symmetric distances from per-expert pair values."""
    e = len(d01)
    p = np.zeros((3, 3, 1, e))
    for (u, v), d in {(0, 1): d01, (0, 2): d02, (1, 2): d12}.items():
        p[u, v, 0] = d
        p[v, u, 0] = d
    return p


def test_plan_module_is_torch_free() -> None:
    import subprocess

    code = "import sys, moesim.consolidation.plan as p, moesim.consolidation.builders; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_paper_plan_by_hand() -> None:
    # Summed distances per expert: 3, 0, 6, 1.5 → order 1, 3, 0, 2.
    pair = pair_from([1, 0, 2, 0.5], [1, 0, 2, 0.5], [1, 0, 2, 0.5])
    np.testing.assert_array_equal(summed_distance(pair), [[3, 0, 6, 1.5]])
    assert similarity_order(pair).tolist() == [1, 3, 0, 2]
    # One non-expert set of 100 bytes reserved, experts of 10 bytes, budget 130 → 3 GPU copies.
    assert gpu_capacity(130, 10, 100, 1) == 3
    plan = build_plan(
        pair,
        method="paper",
        budget_bytes=139,
        expert_bytes=10,
        nonexpert_bytes=100,
        nonexpert_sets_reserved=1,
    )
    shared = {c.expert: c.source_variant for c in plan.copies if c.on_gpu}
    assert shared == {1: 0, 3: 1, 0: 2}  # round robin in similarity order
    host = sorted((c.expert, c.source_variant) for c in plan.copies if not c.on_gpu)
    assert host == [(2, 0), (2, 1), (2, 2)]
    assert plan.memory() == {
        "gpu_expert_bytes": 30,
        "gpu_nonexpert_bytes": 100,
        "gpu_total_bytes": 130,
        "host_expert_bytes": 30,
        "all_weights_bytes": 3 * 100 + 6 * 10,
    }
    assert plan.separate_models_bytes == 3 * (100 + 4 * 10)
    for v in range(3):
        assert plan.resolve(v, 0, 2).source_variant == v
        assert plan.resolve(v, 0, 1).source_variant == 0
    groups = {(tuple(sorted(g.tenants)), g.on_gpu): g.positions for g in plan.expert_groups()}
    assert groups == {((0, 1, 2), True): 3, ((0,), False): 1, ((1,), False): 1, ((2,), False): 1}


def test_medoid_and_cluster_by_hand() -> None:
    # Expert 0: variants 0 and 1 close (1), 2 far (5). Expert 1: all at 4.
    pair = pair_from([1, 4], [5, 4], [5, 4])
    med = build_plan(pair, method="medoid", budget_bytes=20, expert_bytes=10, nonexpert_bytes=0)
    # Expert 0 summed distances per variant: 0→6, 1→6, 2→10 → medoid 0; expert 1 all 8 → 0.
    assert [c.source_variant for c in med.copies] == [0, 0]
    # 4 copies of 6: merge (0,1) at expert 0 (link 1), then at expert 1 the first pair at link 4.
    cl = build_plan(pair, method="cluster", budget_bytes=40, expert_bytes=10, nonexpert_bytes=0)
    users = [tuple(sorted(u)) for u in cl.users()]
    assert sorted(zip([c.expert for c in cl.copies], users, strict=True)) == [
        (0, (0, 1)),
        (0, (2,)),
        (1, (0, 1)),
        (1, (2,)),
    ]
    assert cl.gpu_total_bytes == 40
    mean = build_plan(pair, method="cluster-mean", budget_bytes=40, expert_bytes=10, nonexpert_bytes=0)
    assert [c.mean_of for c in mean.copies] == [(0, 1), (), (0, 1), ()]
    # Budget for all 6 copies: nothing shared.
    full = build_plan(pair, method="cluster", budget_bytes=60, expert_bytes=10, nonexpert_bytes=0)
    assert full.shared_positions() == 0
    assert len(full.copies) == 6


def test_mixtral_two_variants_217_resident() -> None:
    mixtral = get_model("mixtral-8x7b")
    plan = plan_from_distance_model(mixtral, 2, 82_900_000_000, nonexpert_sets_reserved=2)
    on_gpu = [c for c in plan.copies if c.on_gpu]
    assert len(on_gpu) == 217
    assert plan.shared_positions() == 217
    assert sum(not c.on_gpu for c in plan.copies) == 2 * 39
    assert plan.gpu_total_bytes == 2 * 3_211_272_192 + 217 * 352_321_536 <= 82_900_000_000
    host_layers = [c.layer for c in plan.copies if not c.on_gpu]
    assert np.mean(np.array(host_layers) >= 18) > 0.8  # mostly the deep layers, as the paper found


def test_save_load_round_trip(tmp_path) -> None:
    plan = plan_from_distance_model(
        get_model("mixtral-8x7b"), 3, 120_000_000_000, method="cluster-mean", seed=3
    )
    path = plan.save(tmp_path / "p.json")
    back = load_plan(path)
    assert back == plan
    assert back.expert_groups() == plan.expert_groups()
    d = json.loads(path.read_text())
    assert d["schema"] == "moesim.plan/1"
    assert d["memory"]["gpu_total_bytes"] == plan.gpu_total_bytes <= plan.budget_bytes


def test_bad_inputs(tmp_path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_plan(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"schema": "other/1"}))
    with pytest.raises(UserError, match="schema"):
        load_plan(tmp_path / "bad.json")
    plan = plan_from_distance_model(get_model("tiny"), 2, 10**9)
    d = plan.to_json()
    d["memory"]["gpu_total_bytes"] += 1
    (tmp_path / "tampered.json").write_text(json.dumps(d))
    with pytest.raises(UserError, match=r"memory\.gpu_total_bytes"):
        load_plan(tmp_path / "tampered.json")
    d = plan.to_json()
    d["assign"][0][0][1] = d["assign"][0][0][0]
    (tmp_path / "dup.json").write_text(json.dumps(d))
    with pytest.raises(UserError, match="two experts to one copy"):
        load_plan(tmp_path / "dup.json")
    del d["copies"]
    (tmp_path / "nocopies.json").write_text(json.dumps(d))
    with pytest.raises(UserError, match="bad plan field"):
        load_plan(tmp_path / "nocopies.json")
    tiny = get_model("tiny")
    with pytest.raises(UserError, match="smaller than 2 non-expert"):
        plan_from_distance_model(tiny, 2, 2 * tiny.nonexpert_bytes - 1)
    with pytest.raises(UserError, match="unknown consolidation method"):
        plan_from_distance_model(tiny, 2, 10**9, method="nope")


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 4),
    layers=st.integers(1, 3),
    experts=st.integers(2, 5),
    copies=st.integers(0, 30),
    method=st.sampled_from(["paper", "medoid", "cluster", "cluster-mean"]),
    seed=st.integers(0, 10**6),
)
def test_plan_invariants(n: int, layers: int, experts: int, copies: int, method: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.random((n, layers, experts, 3))
    pair = np.sqrt(((x[:, None] - x[None, :]) ** 2).sum(-1))
    perm = np.stack([np.stack([rng.permutation(experts) for _ in range(layers)]) for _ in range(n)])
    perm[0] = np.arange(experts)
    plan = build_plan(
        pair,
        method=method,
        budget_bytes=7 + 3 * copies,
        expert_bytes=3,
        nonexpert_bytes=7,
        nonexpert_sets_reserved=1,
        perm=perm,
    )
    assert plan.gpu_total_bytes <= plan.budget_bytes
    for v in range(n):
        for layer in range(layers):
            own = [plan.resolve(v, layer, e) for e in range(experts)]
            assert len({c.id for c in own}) == experts  # each expert its own copy
            for e, c in enumerate(own):
                if plan.users()[c.id] == frozenset({v}):
                    assert (c.source_variant, c.source_expert) == (v, e)
                else:  # a shared copy sits in the slot matching put this expert in
                    assert perm[v, layer, c.expert] == e
    for v in range(n):
        assert sum(g.positions for g in plan.expert_groups() if v in g.tenants) == layers * experts
    n_gpu = sum(c.on_gpu for c in plan.copies)
    assert n_gpu == min(copies, layers * experts * (n if method.startswith("cluster") else 1))


@settings(max_examples=30, deadline=None)
@given(size=st.integers(1, 6), seed=st.integers(0, 10**6))
def test_exact_matching_equals_brute_force(size: int, seed: int) -> None:
    cost = np.random.default_rng(seed).random((size, size))
    best = min(sum(cost[i, p[i]] for i in range(size)) for p in itertools.permutations(range(size)))
    got = min_cost_assignment(cost)
    assert sorted(got) == list(range(size))
    assert sum(cost[i, got[i]] for i in range(size)) == pytest.approx(best, abs=1e-12)


def test_matching_recovers_planted_permutation() -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((8, 16))
    planted = rng.permutation(8)
    other = base[planted] + 0.01 * rng.standard_normal((8, 16))  # other's expert j is base's planted[j]
    cost = np.linalg.norm(base[:, None] - other[None, :], axis=-1)  # cost[i, j]: base i vs other j
    perm = align_to_reference(np.stack([np.zeros((1, 8, 8)), cost[None]]))
    assert (base[np.arange(8)] - other[perm[1, 0]]).std() < 0.05
    assert [int(planted[p]) for p in perm[1, 0]] == list(range(8))

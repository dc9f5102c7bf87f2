"""The fleet: one SimPy env for many GPUs, placement files and strategies, live routers.

Must hold: a fleet of one GPU reproduces the single-GPU engine byte for byte (golden files captured before
the fleet existed); G GPUs with disjoint tenants are G independent simulations; every request is served
once or refused once with a reason, only by a GPU holding its variant; replicas share load as the router
says (hand-worked cases).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moesim.cost import COST_MODELS
from moesim.engine import simulate
from moesim.engine.simulation import GPUSetup, simulate_fleet
from moesim.errors import UserError
from moesim.fleet import (
    PLACEMENTS,
    ROUTERS,
    FleetSpec,
    GPUPlacement,
    Placement,
    PlacementProblem,
    TenantLoad,
    load_placement,
    plan_placement,
    run_fleet,
    save_placement,
)
from moesim.io import write_parquet
from moesim.policies import POLICIES
from moesim.specs import get_gpu, get_model
from moesim.workloads.request import Request

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_golden import GOLDEN_DIR, LEGACY_COLUMNS, policy_params, workloads

MODEL = get_model("mixtral-8x7b")
H200 = get_gpu("h200")
A100 = get_gpu("a100-80gb")


def _cost(gpu=H200):
    return COST_MODELS.build("roofline", {}, model=MODEL, gpu=gpu)


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    """The bytes ``moesim.io.write_parquet`` writes for ``df`` (as a job's requests.parquet)."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "r.parquet"
        write_parquet(p, df)
        return p.read_bytes()


# ---- the fleet of one is today's run -------------------------------------------------------------------
@pytest.mark.parametrize("policy", sorted(POLICIES.names()))
@pytest.mark.parametrize("wname", ["steady3", "bursty4"])
def test_fleet_of_one_is_byte_identical_to_the_single_gpu_golden(policy: str, wname: str) -> None:
    golden = GOLDEN_DIR / f"{wname}__{policy}.parquet"
    if not golden.exists():
        pytest.skip(f"no golden file for policy {policy}")
    reqs, n_t = workloads()[wname]
    # through the fleet API: one GPU, every tenant on it, the job's policy
    fleet = FleetSpec.uniform("h200", 1)
    placement = Placement((GPUPlacement(0, tuple(range(n_t))),))
    res = run_fleet(MODEL, fleet, placement, reqs, policy=policy, policy_cfg=POLICIES.config(policy, policy_params(policy)),
                    cost="roofline", cost_cfg=None)
    assert _parquet_bytes(res.requests[LEGACY_COLUMNS]) == golden.read_bytes()
    assert (res.requests["gpu"] == 0).all()
    assert (res.requests["rejected"] == "").all()
    # and through the single-GPU entry point (the same engine)
    plain = simulate(MODEL, H200, POLICIES.build(policy, policy_params(policy)), _cost(), reqs, n_tenants=n_t)
    assert _parquet_bytes(plain.requests[LEGACY_COLUMNS]) == golden.read_bytes()


# ---- disjoint tenants: independent GPUs ----------------------------------------------------------------
def _mixed_requests(n: int = 90, tenants: int = 5, seed: int = 3) -> list[Request]:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(0.6, size=n))
    ten = rng.integers(0, tenants, size=n)
    p = rng.integers(16, 600, size=n)
    o = rng.integers(1, 120, size=n)
    return [Request(i, int(ten[i]), float(t[i]), int(p[i]), int(o[i])) for i in range(n)]


@pytest.mark.parametrize("policies", [("reconfig", "multiplex", "mig"), ("swap", "reconfig_fast", "naive")])
def test_disjoint_tenants_are_independent_single_gpu_runs(policies: tuple[str, str, str]) -> None:
    reqs = _mixed_requests()
    groups = [(3, 0), (1,), (4, 2)]  # global tenants per GPU, in the order the GPU numbers them
    setups = [GPUSetup(H200, POLICIES.build(pol, {"max_batch": 4} if pol not in ("mig", "naive", "swap") else {}),
                       _cost(), g, node=0, name=f"gpu{k}")
              for k, (pol, g) in enumerate(zip(policies, groups, strict=True))]
    fleet = simulate_fleet(MODEL, setups, reqs).requests
    assert (fleet["rejected"] == "").all()
    for k, (pol, g) in enumerate(zip(policies, groups, strict=True)):
        local = {t: i for i, t in enumerate(g)}
        mine = [r for r in reqs if r.tenant in local]
        sub = [Request(i, local[r.tenant], r.arrival_s, r.prompt_tokens, r.output_tokens) for i, r in enumerate(mine)]
        alone = simulate(MODEL, H200, POLICIES.build(pol, {"max_batch": 4} if pol not in ("mig", "naive", "swap") else {}),
                         _cost(), sub, n_tenants=len(g)).requests
        got = fleet.set_index("request_id").loc[[r.id for r in mine]]
        assert (got["gpu"] == k).all()
        for col in ("start_s", "first_token_s", "finish_s", "swap_wait_s"):
            np.testing.assert_array_equal(got[col].to_numpy(), alone[col].to_numpy())  # exact, not approximate


# ---- served once or refused once, only where the variant is ----------------------------------------------
def test_every_request_served_once_or_refused_with_a_reason() -> None:
    reqs = _mixed_requests(n=120, tenants=6)
    fleet = FleetSpec.uniform("h200", 3)
    placement = Placement((GPUPlacement(0, (0, 1)), GPUPlacement(1, (1, 2, 3)), GPUPlacement(2, (3, 0))))
    res = run_fleet(MODEL, fleet, placement, reqs, policy="multiplex", policy_cfg=None, cost="roofline",
                    cost_cfg=None, router=ROUTERS.build("least_work"))
    df = res.requests
    refused = df["rejected"] != ""
    # tenants 4 and 5 are placed nowhere: refused, with the reason, never started
    assert set(df.loc[refused, "tenant"]) <= {4, 5}
    assert refused.sum() == df["tenant"].isin([4, 5]).sum() > 0
    assert df.loc[refused, "rejected"].str.contains("no replica").all()
    assert df.loc[refused, ["start_s", "first_token_s", "finish_s"]].isna().all().all()
    assert (df.loc[refused, ["gpu", "instance"]] == -1).all().all()
    served = df[~refused]
    assert not served[["start_s", "first_token_s", "finish_s"]].isna().any().any()
    # no request reaches a GPU lacking its variant
    holds = {p.gpu: set(p.tenants) for p in placement.gpus}
    assert all(t in holds[g] for t, g in zip(served["tenant"], served["gpu"], strict=True))
    inst_tenants = {i: set(info["tenants"]) for i, info in enumerate(res.instances)}
    assert all(t in inst_tenants[i] for t, i in zip(served["tenant"], served["instance"], strict=True))
    # each served request's tokens were produced exactly once, on the timeline
    seg = res.segments
    produced = seg.loc[seg["kind"] == "prefill", "n_seqs"].sum() + seg.loc[seg["kind"] == "decode", "tokens"].sum()
    assert produced == served["output_tokens"].sum()


# ---- routers: hand-worked cases --------------------------------------------------------------------------
def _two_replicas(reqs, router: str, policy: str = "multiplex", placement=None, **router_params):
    fleet = FleetSpec.uniform("h200", 2)
    placement = placement or Placement((GPUPlacement(0, (0, 1)), GPUPlacement(1, (0, 1))))
    return run_fleet(MODEL, fleet, placement, reqs, policy=policy, policy_cfg=None, cost="roofline", cost_cfg=None,
                     router=ROUTERS.build(router, router_params)).requests


def test_round_robin_alternates_replicas_per_variant() -> None:
    fleet = FleetSpec.uniform("h200", 3)
    placement = Placement((GPUPlacement(0, (0, 1)), GPUPlacement(1, (0,)), GPUPlacement(2, (0, 1))))
    reqs = [Request(i, [0, 1, 0, 0, 1, 0, 0, 1][i], 0.5 * i, 20, 5) for i in range(8)]
    df = run_fleet(MODEL, fleet, placement, reqs, policy="multiplex", policy_cfg=None, cost="roofline",
                   cost_cfg=None, router=ROUTERS.build("round_robin")).requests
    # tenant 0 (replicas 0,1,2): its 1st..5th requests → 0,1,2,0,1; tenant 1 (replicas 0,2): → 0,2,0
    assert df.loc[df.tenant == 0, "gpu"].tolist() == [0, 1, 2, 0, 1]
    assert df.loc[df.tenant == 1, "gpu"].tolist() == [0, 2, 0]


def test_least_work_follows_outstanding_tokens() -> None:
    # r0: 200 tokens → GPU 0 (tie, lowest index); r1: 100 tokens → GPU 1 (0 < 200);
    # r2 → GPU 1 (100 < 200); r3 arrives after all finished → GPU 0 again (tie)
    reqs = [Request(0, 0, 0.0, 100, 100), Request(1, 1, 0.001, 50, 50), Request(2, 0, 0.002, 10, 10),
            Request(3, 1, 500.0, 10, 10)]
    df = _two_replicas(reqs, "least_work")
    assert df["gpu"].tolist() == [0, 1, 1, 0]
    # power of two choices with exactly two replicas compares both: the same decisions
    assert _two_replicas(reqs, "power_of_two")["gpu"].tolist() == [0, 1, 1, 0]


def test_affinity_prefers_the_gpu_where_the_tenant_is_resident() -> None:
    # reconfig keeps one non-expert set resident: GPU 0 starts with tenant 0's, GPU 1 (tenants listed 1, 0)
    # with tenant 1's. Idle fleet, so least_work sends tenant 1 to GPU 0 (tie) and pays a swap; affinity sends
    # it to GPU 1 and does not.
    placement = Placement((GPUPlacement(0, (0, 1)), GPUPlacement(1, (1, 0))))
    reqs = [Request(0, 1, 0.0, 20, 5)]
    lw = _two_replicas(reqs, "least_work", "reconfig", placement)
    af = _two_replicas(reqs, "affinity", "reconfig", placement)
    assert lw["gpu"].tolist() == [0]
    assert lw["swap_wait_s"].iloc[0] > 0
    assert af["gpu"].tolist() == [1]
    assert af["swap_wait_s"].iloc[0] == 0
    # beyond max_extra_tokens of extra load a warm replica loses to the least loaded one
    reqs = [Request(0, 1, 0.0, 500, 500), Request(1, 1, 0.001, 20, 5)]
    tight = _two_replicas(reqs, "affinity", "reconfig", placement, max_extra_tokens=100)
    assert tight["gpu"].tolist() == [1, 0]
    loose = _two_replicas(reqs, "affinity", "reconfig", placement, max_extra_tokens=-1)
    assert loose["gpu"].tolist() == [1, 1]


def test_replicas_split_a_steady_stream_evenly_under_round_robin() -> None:
    reqs = [Request(i, 0, 0.1 * i, 20, 3) for i in range(101)]
    df = _two_replicas(reqs, "round_robin")
    assert df["gpu"].value_counts().to_dict() == {0: 51, 1: 50}


# ---- node-level host bandwidth --------------------------------------------------------------------------
def test_node_bandwidth_cap_slows_fetching_gpus_and_a_loose_cap_changes_nothing() -> None:
    reqs = [Request(i, i % 2, 0.0, 64, 16) for i in range(8)]
    # a 3g MIG instance holds part of Mixtral's experts: the rest are fetched from the host per use
    placement = Placement(tuple(GPUPlacement(g, (g,), "mig", {"layout": "3g+3g"}) for g in (0, 1)))

    def finish(cap_GBps: float) -> float:
        fleet = FleetSpec.uniform("h200", 2, gpus_per_node=2, node_host_GBps=cap_GBps)
        df = run_fleet(MODEL, fleet, placement, reqs, policy="mig", policy_cfg=None, cost="roofline",
                       cost_cfg=None).requests
        return float(df["finish_s"].max())

    base = finish(0.0)
    assert finish(1e6) == base
    assert finish(20.0) > base * 1.2


# ---- placement files ------------------------------------------------------------------------------------
def test_placement_file_round_trip_and_bad_files(tmp_path: Path) -> None:
    p = Placement((GPUPlacement(0, (2, 0)), GPUPlacement(3, (1,), "mig", {"layout": "3g+3g"})), "hand")
    for name in ("p.yaml", "p.json"):
        save_placement(p, tmp_path / name)
        assert load_placement(tmp_path / name) == p
    assert p.replicas() == {0: (0,), 1: (3,), 2: (0,)}
    (tmp_path / "bad.yaml").write_text("gpus:\n  - gpu: 0\n    tenant: [1]\n")
    with pytest.raises(UserError, match=r"gpus\[0\]: unknown field 'tenant' \(did you mean 'tenants'\?\)"):
        load_placement(tmp_path / "bad.yaml")
    with pytest.raises(UserError, match=r"gpu=5 is not in the fleet; valid: 0\.\.3"):
        Placement((GPUPlacement(5, (0,)),)).check(4)
    with pytest.raises(UserError, match="no such file"):
        load_placement(tmp_path / "missing.yaml")


def test_a_gpu_may_run_its_own_policy() -> None:
    reqs = _mixed_requests(n=40, tenants=3)
    placement = Placement((GPUPlacement(0, (1, 2), "mig", {"layout": "3g+3g"}), GPUPlacement(1, (0,))))
    res = run_fleet(MODEL, FleetSpec.uniform("h200", 2), placement, reqs, policy="multiplex", policy_cfg=None,
                    cost="roofline", cost_cfg=None)
    # tenants 1, 2 are GPU 0's local 0, 1: MIG instances 0 and 1; names, tenants and timeline in global ids
    assert [i["name"] for i in res.instances] == ["gpu0/mig0:3g.71gb", "gpu0/mig1:3g.71gb", "gpu1/gpu0"]
    assert [i["tenants"] for i in res.instances] == [[1], [2], [0]]
    seg = res.segments[res.segments.kind != "swap"]
    assert seg.groupby("instance")["tenants"].unique().map(list).to_dict() == {
        "gpu0/mig0:3g.71gb": ["1"], "gpu0/mig1:3g.71gb": ["2"], "gpu1/gpu0": ["0"]}
    assert [g["policy"] for g in res.meta["gpus"]] == ["mig", "multiplex"]


# ---- strategies -----------------------------------------------------------------------------------------
def _problem(rates, n_gpus: int, policy: str = "multiplex", gpu: str = "h200") -> PlacementProblem:
    return PlacementProblem(MODEL, FleetSpec.uniform(gpu, n_gpus).gpus(), TenantLoad(tuple(rates), 200, 100),
                            policy, POLICIES.config(policy), "roofline", COST_MODELS.config("roofline"))


def test_per_variant_gives_spare_gpus_to_the_heaviest_load_per_replica() -> None:
    pl = PLACEMENTS.build("per_variant").place(_problem([3.0, 1.0, 1.0], 5))
    # one each, then spares: 3/1 → tenant 0; 3/2 = 1.5 > 1 → tenant 0 again
    assert pl.replicas() == {0: (0, 3, 4), 1: (1,), 2: (2,)}
    with pytest.raises(UserError, match="needs at least 3 GPUs"):
        PLACEMENTS.build("per_variant").place(_problem([1.0, 1.0, 1.0], 2))


def test_pack_respects_memory_and_groups_similar_variants(tmp_path: Path) -> None:
    prob = _problem([0.01] * 6, 6)
    kmax = prob.max_tenants(prob.gpus[0])
    assert 1 <= kmax < 6 or kmax == 6
    pl = PLACEMENTS.build("pack").place(prob)
    assert all(len(p.tenants) <= kmax for p in pl.gpus)
    assert sorted(t for p in pl.gpus for t in p.tenants) == list(range(6))
    # light load: as few GPUs as memory allows
    assert len(pl.gpus) == -(-6 // kmax)
    # similarity: 0 with 3, 1 with 4, 2 with 5, at two variants per GPU
    sim = np.eye(6)
    for a, b in ((0, 3), (1, 4), (2, 5)):
        sim[a, b] = sim[b, a] = 1.0
    np.savetxt(tmp_path / "sim.csv", sim, delimiter=",")
    prob2 = _problem([0.01] * 6, 3)
    prob2._cap.update({("h200", k): (1.0 if k <= 2 else 0.0) for k in range(1, 7)})  # memory: two per GPU
    pl2 = PLACEMENTS.build("pack", {"similarity": str(tmp_path / "sim.csv")}).place(prob2)
    assert sorted(tuple(p.tenants) for p in pl2.gpus) == [(0, 3), (1, 4), (2, 5)]


def test_optimal_replicates_the_hot_variant_to_balance_two_gpus() -> None:
    prob = _problem([3.0, 1.0], 2)
    prob._cap.update({("h200", k): 10.0 for k in range(1, 3)})
    pl = PLACEMENTS.build("optimal").place(prob)
    # without a replica the max load is 3 of 4; with tenant 0 on both GPUs it is 2: the optimum
    assert pl.replicas()[0] == (0, 1)
    assert len(pl.replicas()[1]) == 1


def test_greedy_slo_places_every_variant_and_replicates_by_load() -> None:
    prob = _problem([4.0, 0.5, 0.5, 0.5], 4)
    prob._cap.update({("h200", k): 3.0 for k in range(1, 5)})
    pl = PLACEMENTS.build("greedy_slo").place(prob)
    reps = pl.replicas()
    assert set(reps) == {0, 1, 2, 3}
    assert len(reps[0]) >= 2
    assert len(reps[0]) > max(len(reps[t]) for t in (1, 2, 3))


def test_plan_placement_and_run_from_a_workload() -> None:
    reqs = _mixed_requests(n=80, tenants=4)
    fleet = FleetSpec.uniform("h200", 2)
    load = TenantLoad.of(reqs, 4, reqs[-1].arrival_s)
    assert sum(load.rates) == pytest.approx(80 / reqs[-1].arrival_s)
    for strategy in ("everywhere", "pack", "greedy_slo", "optimal"):
        pl = plan_placement(strategy, None, MODEL, fleet, load, policy="multiplex", policy_cfg=None,
                            cost="roofline", cost_cfg=None)
        res = run_fleet(MODEL, fleet, pl, reqs, policy="multiplex", policy_cfg=None, cost="roofline", cost_cfg=None,
                        router=ROUTERS.build("power_of_two"))
        assert (res.requests["rejected"] == "").all(), strategy
        assert res.requests["finish_s"].notna().all()


def test_fleet_file_and_a100_group(tmp_path: Path) -> None:
    from moesim.fleet import load_fleet

    (tmp_path / "f.yaml").write_text("groups:\n  - {gpu: h200, count: 3, gpus_per_node: 2, node_host_GBps: 40}\n"
                                     "  - {gpu: a100-80gb, count: 1}\n")
    f = load_fleet(tmp_path / "f.yaml")
    assert [(g.index, g.spec.name, g.node) for g in f.gpus()] == [(0, "h200", 0), (1, "h200", 0), (2, "h200", 1),
                                                                  (3, "a100-80gb", 2)]
    assert f.node_caps_Bps() == {0: 40e9, 1: 40e9}
    (tmp_path / "g.yaml").write_text("groups:\n  - {gpu: h200, count: 0}\n")
    with pytest.raises(UserError, match="count=0 is invalid"):
        load_fleet(tmp_path / "g.yaml")


# ---- refusals by capacity: only replicas that can hold a request are offered -----------------------------
def test_a_request_only_some_replicas_can_hold_goes_to_those() -> None:
    # GPU 0: a 3g MIG instance (less KV room); GPU 1: the whole GPU. A request too long for the MIG
    # instance's KV must go to GPU 1 even under round robin; one too long for both is refused with the reason.
    placement = Placement((GPUPlacement(0, (0,), "mig", {"layout": "3g+3g"}), GPUPlacement(1, (0,))))
    fleet = FleetSpec.uniform("h200", 2)
    plans = POLICIES.build("mig", {"layout": "3g+3g"}).layout(MODEL, H200, 1)
    mig_tokens = int(plans[0].kv_capacity_bytes // MODEL.kv_bytes_per_token)
    big = mig_tokens + 100  # fits the whole GPU, not the MIG instance
    huge = 10 ** 7
    reqs = [Request(0, 0, 0.0, 20, 5), Request(1, 0, 0.1, big - 10, 10), Request(2, 0, 0.2, huge, 10),
            Request(3, 0, 0.3, 20, 5)]
    df = run_fleet(MODEL, fleet, placement, reqs, policy="multiplex", policy_cfg=None, cost="roofline",
                   cost_cfg=None, router=ROUTERS.build("round_robin")).requests
    assert df["gpu"].tolist() == [0, 1, -1, 1]
    assert df["rejected"].iloc[2] != ""
    assert (df["rejected"].iloc[[0, 1, 3]] == "").all()


# ---- architecture: policies see a declared view, never the engine -----------------------------------------
def test_policies_do_not_import_the_engine_and_the_instance_implements_the_view() -> None:
    import subprocess

    code = ("import sys, moesim.policies; "
            "print(any(m.startswith('moesim.engine') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    import simpy

    from moesim.engine.instance import Instance
    from moesim.engine.simulation import HostLink, Recorder
    from moesim.policies.view import InstanceView

    pol = POLICIES.build("reconfig")
    plan = pol.layout(MODEL, H200, 2)[0]
    inst = Instance(0, plan, simpy.Environment(), _cost(), pol, HostLink(), Recorder(0))
    members = set(InstanceView.__annotations__) | {m for m in vars(InstanceView) if not m.startswith("_")}
    assert members == {"plan", "queue", "resident", "kv_free_bytes", "kv_bytes_per_token", "now", "n_running",
                       "running_tenants"}
    for name in members:
        assert hasattr(inst, name), name
    assert inst.now == 0.0
    assert inst.n_running == 0
    assert inst.running_tenants() == set()


# ---- SLO classes ---------------------------------------------------------------------------------------
def test_slo_classes_give_tenants_their_own_targets() -> None:
    from moesim.metrics import summarize
    from moesim.slo import SLO_TPOT_S, SLO_TTFT_S, SLOClass

    # tenant 0: TTFT 1.0 s; tenant 1: TTFT 3.0 s; one output token each (no TPOT)
    df = pd.DataFrame({"request_id": [0, 1, 2, 3], "tenant": [0, 0, 1, 1], "arrival_s": [0.0] * 4,
                       "start_s": [0.0] * 4, "first_token_s": [1.0, 3.0, 1.0, 3.0], "finish_s": [1.0, 3.0, 1.0, 3.0],
                       "prompt_tokens": [5] * 4, "output_tokens": [1] * 4, "rejected": ["", "", "", ""]})
    seg = pd.DataFrame(columns=["instance", "kind", "start_s", "end_s", "expert_fetches", "tenants"])
    plain = summarize(df, seg)
    assert (plain["slo_ttft_s"], plain["slo_tpot_s"]) == (SLO_TTFT_S, SLO_TPOT_S) == (2.0, 0.2)
    assert plain["slo_attainment"] == 0.5
    gold = SLOClass("gold", 0.5, 0.1, (0,))
    s = summarize(df, seg, slo_ttft_s=3.5, slo_classes=(gold,))
    assert s["slo_attainment_gold"] == 0.0  # 1.0 and 3.0 both miss 0.5
    assert s["slo_attainment"] == 0.5  # tenant 1 keeps 3.5: both attain


# ---- the job: fleet groups from the config, placement.yaml written ----------------------------------------
def test_job_runs_a_fleet_and_writes_its_placement(tmp_path: Path) -> None:
    from moesim import job
    from moesim.config import JobSpec
    from moesim.fleet import FLEETS, ROUTERS
    from moesim.workloads import WORKLOADS

    spec = JobSpec(MODEL, H200, POLICIES.config("multiplex"), COST_MODELS.config("roofline"),
                   WORKLOADS.config("poisson", {"rate": 0.2, "tenants": 3, "duration_s": 60.0}), 0, 2.0, 0.2,
                   fleet=FLEETS.config("uniform", {"gpus": 4}), placement=PLACEMENTS.config("per_variant"),
                   router=ROUTERS.config("round_robin"))
    s = job.run(spec, tmp_path)
    assert s["gpus"] == 4
    pl = load_placement(tmp_path / job.PLACEMENT)
    assert pl.strategy == "per_variant"
    assert len(pl.gpus) == 4
    req = pd.read_parquet(tmp_path / job.REQUESTS)
    assert len(req) == s["n_requests"] > 0
    holds = {p.gpu: set(p.tenants) for p in pl.gpus}
    assert all(t in holds[g] for t, g in zip(req["tenant"], req["gpu"], strict=True))


# ---- many tenants: per-tenant rates ----------------------------------------------------------------------
def test_per_tenant_rates_by_weights_reach_the_placement() -> None:
    from moesim.workloads import WORKLOADS

    w = WORKLOADS.build("poisson", {"tenants": 3, "rate": 1.0, "popularity": "weights", "weights": (4, 1, 1),
                                    "duration_s": 3000.0})
    np.testing.assert_allclose(w.tenant_rates_per_s, [2.0, 0.5, 0.5])
    reqs = w.generate(0)
    load = TenantLoad.of(reqs, 3, w.horizon_s)
    # Poisson counts: 6000 ± 77 and 1500 ± 39 expected; 5 standard deviations of slack
    assert abs(load.rates[0] * 3000 - 6000) < 5 * 77
    assert all(abs(load.rates[t] * 3000 - 1500) < 5 * 39 for t in (1, 2))
    with pytest.raises(UserError, match=r"weights=\[4, 1\] is invalid; valid: 3 numbers"):
        WORKLOADS.build("poisson", {"tenants": 3, "popularity": "weights", "weights": (4, 1)})


@pytest.mark.parametrize("router", ["least_work", "power_of_two", "affinity", "round_robin"])
def test_replicated_fleet_is_causal_conserving_and_deterministic(router: str) -> None:
    # replicas' arrivals cut running decode runs when routed (not planned stops): check the invariants there
    reqs = _mixed_requests(n=150, tenants=4, seed=9)
    placement = Placement((GPUPlacement(0, (0, 1, 2)), GPUPlacement(1, (0, 3)), GPUPlacement(2, (0, 1, 3))))

    def run() -> tuple[pd.DataFrame, pd.DataFrame]:
        res = run_fleet(MODEL, FleetSpec.uniform("h200", 3), placement, reqs, policy="multiplex",
                        policy_cfg=POLICIES.config("multiplex", {"max_batch": 8}), cost="roofline", cost_cfg=None,
                        router=ROUTERS.build(router))
        return res.requests, res.segments

    df, seg = run()
    eps = 1e-9
    assert (df["arrival_s"] <= df["start_s"] + eps).all()
    assert (df["start_s"] <= df["first_token_s"] + eps).all()
    assert (df["first_token_s"] <= df["finish_s"] + eps).all()
    produced = seg.loc[seg["kind"] == "prefill", "n_seqs"].sum() + seg.loc[seg["kind"] == "decode", "tokens"].sum()
    assert produced == df["output_tokens"].sum()
    assert df["gpu"].isin([0, 1, 2]).all()
    df2, _ = run()
    pd.testing.assert_frame_equal(df, df2, check_exact=True)

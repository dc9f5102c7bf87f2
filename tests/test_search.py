"""The capacity search (moesim.search): galloping/bisection closed forms on a synthetic oracle, the price
table, the placement, the trial function, the margin rule on fresh seeds, monotonicity in load, the CLI's
outputs and one-line errors. Ray against the local backend is in test_search_ray.py."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.errors import UserError
from moesim.search.config import SearchConfig
from moesim.search.driver import Arm, Search, _Bracket, scale_workload
from moesim.search.prices import DEFAULT_PRICES, load_prices
from moesim.search.trial import NONDETERMINISTIC, run_trial

# a small workload where the policies differ: 4 Mixtral variants on H200s, 30 s of Poisson arrivals
BASE = {"model": "mixtral-8x7b",
        "workload": {"name": "poisson", "rate": 2.0, "tenants": 4, "duration_s": 30.0, "prompt_tokens": 20,
                     "output_tokens": 25, "popularity": "equal", "zipf_s": 1.0, "tokens_from": ""},
        "cost": {"name": "best"}, "slo_ttft_s": 2.0, "slo_tpot_s": 0.2}


class OracleBackend:
    """A backend whose trial attainment is 1 from ``threshold[(gpu, policy)]`` GPUs on, else 0; counts calls."""

    name = "oracle"
    workers = 1

    def __init__(self, threshold: dict[tuple[str, str], int]) -> None:
        self.threshold = threshold
        self.calls: list[dict[str, Any]] = []

    def map(self, configs: Sequence[dict[str, Any]], progress: Callable[[int], None] | None = None
            ) -> list[dict[str, Any]]:
        out = []
        for c in configs:
            self.calls.append(c)
            ok = c["count"] >= self.threshold[(c["gpu"], c["policy"])]
            a = [1.0 if ok else 0.0] * len(c["seeds"])
            out.append({"attainment": a, "attainment_min": min(a), "attainment_mean": min(a), "n_requests": 10,
                        "n_refused": 0, "tokens_per_s": 1000.0, "output_tokens_per_s": 500.0,
                        "mean_ttft_s": 0.1, "p90_ttft_s": 0.2, "horizon_s": 10.0,
                        "placement": [{"gpu": g, "tenants": [0]} for g in range(c["count"])], "error": "",
                        "wall_s": 0.0})
        return out

    def close(self) -> None:
        pass


# ---- galloping / bisection --------------------------------------------------------------------------------


@given(threshold=st.integers(1, 64))
@settings(max_examples=40, deadline=None)
def test_bracket_finds_the_threshold_in_logarithmic_trials(threshold: int) -> None:
    br, tried = _Bracket(), []
    while (n := br.next_count(64)) is not None:
        tried.append(n)
        if n >= threshold:
            br.hi = n if br.hi is None else min(br.hi, n)
        else:
            br.lo = max(br.lo, n)
    assert br.hi == threshold
    # galloping: 1 + ceil(log2 t) probes up to the first feasible; bisection: < log2 of the gap
    assert len(tried) <= 2 * math.ceil(math.log2(threshold)) + 1
    assert len(set(tried)) == len(tried)


def test_bracket_gives_up_at_max_gpus() -> None:
    br, tried = _Bracket(), []
    while (n := br.next_count(20)) is not None:
        tried.append(n)
        br.lo = n  # never feasible
    assert tried == [1, 2, 4, 8, 16, 20]
    assert br.hi is None


def test_search_picks_the_cheapest_verified_fleet_on_an_oracle() -> None:
    prices = load_prices()
    # h200 needs 3 (3 x 4.00 = 12.0), a100 needs 8 (8 x 1.30 = 10.4): the a100 fleet is cheaper
    thr = {("h200", "multiplex"): 3, ("a100-80gb", "multiplex"): 8, ("h200", "swap"): 5,
           ("a100-80gb", "swap"): 20}
    be = OracleBackend(thr)
    cfg = SearchConfig(gpus=("h200", "a100-80gb"), strategies=("greedy_slo",), policies=("multiplex", "swap"),
                       max_batch=(8,), max_gpus=32, loads=(1.0,))
    res = Search(cfg, BASE, prices, be).run()
    needed = {(r.gpu, r.policy): int(r.needed) for r in res.needed.itertuples()}
    assert needed == thr
    assert res.answer is not None
    assert (res.answer.arm, res.answer.count) == (Arm("a100-80gb", "greedy_slo", "multiplex", 8), 8)
    assert res.answer.usd_per_hour == pytest.approx(8 * 1.30)
    # $/Mtok = $/h / (tokens/s * 3600) * 1e6 with the oracle's 1000 tokens/s
    assert res.answer.usd_per_mtok == pytest.approx(10.4 / 3.6)
    # one verify trial on the verify seeds, the rest on the search seeds
    verify = [c for c in be.calls if c["seeds"] == [1000, 1001]]
    assert len(verify) == 1
    assert verify[0]["count"] == 8
    assert set(res.trials["phase"]) == {"search", "verify"}
    assert len(res.trials) == len(be.calls)


def test_margin_rule_raises_the_count_until_the_fresh_seeds_hold() -> None:
    class Flaky(OracleBackend):
        """Search seeds pass from 2 GPUs, verify seeds only from 4."""

        def map(self, configs: Sequence[dict[str, Any]], progress: Any = None) -> list[dict[str, Any]]:
            out = super().map(configs, progress)
            for c, s in zip(configs, out, strict=True):
                if c["seeds"] == [1000, 1001] and c["count"] < 4:
                    s["attainment"] = [0.95, 0.85]
                    s["attainment_min"] = 0.85
            return out

    be = Flaky({("h200", "multiplex"): 2})
    cfg = SearchConfig(gpus=("h200",), strategies=("greedy_slo",), policies=("multiplex",), max_batch=(8,),
                       max_gpus=8)
    res = Search(cfg, BASE, load_prices(), be).run()
    assert res.answer is not None
    assert res.answer.count == 4
    verify = res.trials[res.trials["phase"] == "verify"]
    assert verify["count"].tolist() == [2, 3, 4]
    assert verify["feasible"].tolist() == [False, False, True]


def test_nothing_feasible_gives_no_answer() -> None:
    be = OracleBackend({("h200", "multiplex"): 99})
    cfg = SearchConfig(gpus=("h200",), strategies=("greedy_slo",), policies=("multiplex",), max_batch=(8,),
                       max_gpus=6)
    res = Search(cfg, BASE, load_prices(), be).run()
    assert res.answer is None
    assert res.needed["needed"].isna().all()
    assert res.trials["count"].tolist() == [1, 2, 4, 6]


# ---- prices ---------------------------------------------------------------------------------------------


def test_default_prices_are_labelled_approximate() -> None:
    p = load_prices()
    assert Path(p.path) == DEFAULT_PRICES
    assert "approximate" in p.source.lower()
    assert "APPROXIMATE" in DEFAULT_PRICES.read_text()
    assert p.per_hour("h200", 3) == pytest.approx(3 * p.prices["h200"])


@pytest.mark.parametrize(("text", "needle"), [
    ("prices: {h300: 2.0}", "prices.h300: unknown gpu (did you mean 'h200'?); valid: a100-40gb, a100-80gb, b200, h100-80gb"),
    ("prices: {h200: -1}", "prices.h200=-1: must be a number > 0"),
    ("prices: {h200: cheap}", "prices.h200='cheap'"),
    ("prices: [1, 2]", "expected a mapping with 'prices:"),
    ("prices: {h200: [1", "not valid YAML"),
])
def test_bad_price_files_fail_in_one_line(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(UserError) as ei:
        load_prices(f)
    assert needle in str(ei.value)
    assert "\n" not in str(ei.value)


def test_a_gpu_without_a_price_is_refused_before_any_trial(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("prices: {h200: 3.5}\n")
    be = OracleBackend({})
    with pytest.raises(UserError, match=r"no price for gpu 'a100-80gb'"):
        Search(SearchConfig(gpus=("h200", "a100-80gb")), BASE, load_prices(f), be)
    assert be.calls == []


# ---- placement and trials -------------------------------------------------------------------------------


def _trial(count: int, policy: str = "multiplex", seeds: tuple[int, ...] = (0, 1), **wl: Any) -> dict[str, Any]:
    return {"model": BASE["model"], "gpu": "h200", "count": count, "strategy": "greedy_slo", "policy": policy,
            "policy_params": {"max_batch": 8}, "workload": {**BASE["workload"], **wl}, "cost": {"name": "best"},
            "seeds": list(seeds), "slo_ttft_s": 2.0, "slo_tpot_s": 0.2}


def test_trial_is_deterministic_and_counts_every_request() -> None:
    from moesim.workloads import WORKLOADS

    cfg = _trial(2)
    a, b = run_trial(cfg), run_trial(json.loads(json.dumps(cfg)))
    for k in NONDETERMINISTIC:
        a.pop(k), b.pop(k)
    assert a == b
    wl = WORKLOADS.build("poisson", {k: v for k, v in BASE["workload"].items() if k != "name"})
    assert a["n_requests"] == len(wl.generate(0)) + len(wl.generate(1))
    assert a["n_refused"] == 0
    assert [p["gpu"] for p in a["placement"]] == [0, 1]
    assert sorted(v for p in a["placement"] for v in p["tenants"]) == [0, 1, 2, 3]
    assert len(a["attainment"]) == 2
    assert all(0 <= x <= 1 for x in a["attainment"])


def test_trial_that_cannot_fit_is_infeasible_not_an_exception() -> None:
    s = run_trial(_trial(1, policy="mig", tenants=8))  # 8 MIG instances: an H200 holds at most 7
    assert s["error"] == ("placement=greedy_slo: no GPU has memory room for variant 5; 1 GPUs hold at most 7 "
                          "variant copies")
    assert s["attainment"] == [0.0, 0.0]


def test_trial_refuses_unknown_keys() -> None:
    with pytest.raises(UserError, match="unknown key"):
        run_trial({**_trial(1), "gpus": 3})


def test_scale_workload() -> None:
    assert scale_workload({"name": "poisson", "rate": 0.5}, 2.0)["rate"] == 1.0
    assert scale_workload({"name": "azure_conv", "rate": 0.0, "time_scale": 2.0}, 4.0)["time_scale"] == 0.5
    with pytest.raises(UserError):
        scale_workload({"name": "x"}, 2.0)


# ---- must hold: the answer holds on fresh seeds; GPUs needed never fall as load rises --------------------


def _search(rate: float, policies: tuple[str, ...] = ("multiplex", "swap"), **kw: Any) -> Any:
    from moesim.search.backends import LocalBackend

    base = {**BASE, "workload": {**BASE["workload"], "rate": rate}}
    cfg = SearchConfig(gpus=("h200",), strategies=("greedy_slo",), policies=policies, max_batch=(8,), max_gpus=16,
                       **kw)
    return Search(cfg, base, load_prices(), LocalBackend(1)).run()


def test_answer_is_feasible_on_a_third_fresh_seed_set() -> None:
    res = _search(2.0)
    ans = res.answer
    assert ans is not None
    # the answer reached target + margin on the search seeds and target on the verify seeds ...
    assert min(ans.attainment_search) >= 0.9 + 0.01
    assert min(ans.attainment_verify) >= 0.9
    # ... and holds on seeds neither phase saw
    fresh = run_trial({**_trial(ans.count, ans.arm.policy, seeds=(7, 8, 9)),
                       "policy_params": {"max_batch": ans.arm.max_batch}})
    assert min(fresh["attainment"]) >= 0.9, fresh["attainment"]
    # it is the cheapest: one GPU fewer of the same arm failed the search seeds
    if ans.count > 1:
        fewer = res.trials[(res.trials["policy"] == ans.arm.policy) & (res.trials["count"] == ans.count - 1)
                           & (res.trials["phase"] == "search") & (res.trials["load"] == 1.0)]
        assert len(fewer) == 1
        assert not bool(fewer["feasible"].iloc[0])


@cache
def _needed(rate: float) -> int | None:
    res = _search(rate, policies=("swap",), seeds=(0,), verify_seeds=(1000,))
    n = res.needed["needed"].iloc[0]
    return None if pd.isna(n) else int(n)


@given(rates=st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0, 4.0, 6.0]), min_size=2, max_size=2, unique=True))
@settings(max_examples=6, deadline=None)
def test_gpus_needed_never_fall_as_load_rises(rates: list[float]) -> None:
    lo, hi = sorted(rates)
    n_lo, n_hi = _needed(lo), _needed(hi)
    assert n_lo is not None
    assert n_hi is None or n_lo <= n_hi, (lo, n_lo, hi, n_hi)


# ---- the command line ----------------------------------------------------------------------------------


def test_cli_writes_every_output_and_they_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from moesim.search.__main__ import main

    out = tmp_path / "s"
    rc = main(["workload.tenants=4", "workload.rate=2.0", "workload.duration_s=30", "search.gpus=h200",
               "search.strategies=greedy_slo", "search.policies=multiplex,swap", "search.max_batch=8", "search.max_gpus=8", "search.loads=0.5,2",
               "search.backend=local", "search.workers=1", "search.progress=false", f"search.out={out}"])
    assert rc == 0
    line = capsys.readouterr().out
    assert "cheapest fleet meeting SLO attainment 0.9" in line
    assert "approximate list prices" in line
    trials = pd.read_csv(out / "search.csv")
    summary = json.loads((out / "search.json").read_text())
    assert summary["trials"] == len(trials)
    ans = summary["answer"]
    # the placement file is moesim.fleet's: it loads back, every variant placed, on GPUs of the fleet
    from moesim.fleet import load_placement

    placement = load_placement(out / "best_placement.yaml")
    placement.check(ans["count"], 4)
    assert set(placement.replicas()) == {0, 1, 2, 3}
    assert {(g.policy, g.policy_params["max_batch"]) for g in placement.gpus} == {(ans["arm"]["policy"], 8)}
    assert placement.strategy == ans["arm"]["strategy"]
    raw = yaml.safe_load((out / "best_placement.yaml").read_text())
    assert [g["tenants"] for g in raw["gpus"]] == [list(p["tenants"]) for p in ans["placement"]]
    # the verify row of the answer is in the table, feasible, priced as count x price
    v = trials[(trials["phase"] == "verify") & (trials["feasible"])]
    assert len(v) == 1
    assert int(v["count"].iloc[0]) == ans["count"]
    assert float(v["usd_per_hour"].iloc[0]) == pytest.approx(ans["count"] * 4.00)
    # report: the three figures, the chosen star at the answer's price, the approximate-price label
    html = (out / "report.html").read_text()
    figs = {}
    for name in ("frontier", "needed", "placement"):
        start = html.index(f'data-figure="fig-{name}">') + len(f'data-figure="fig-{name}">')
        figs[name] = json.loads(html[start:html.index("</script>", start)])
    star = next(t for t in figs["frontier"]["data"] if t["name"] == "chosen")
    assert star["x"] == [pytest.approx(ans["usd_per_hour"])]
    assert "APPROXIMATE list prices" in html
    # GPUs needed vs rate: one line per policy on h200 over the 3 loads, x = total rate (req/s)
    needed = pd.read_csv(out / "needed.csv")
    for t in figs["needed"]["data"]:
        pol = t["name"].split(" · ")[0]
        d = needed[needed["policy"] == pol].sort_values("load")
        assert t["x"] == pytest.approx([2.0 * 4 * x for x in d["load"]], rel=0.15)
        assert [y for y in t["y"] if y is not None] == [int(n) for n in d["needed"].dropna()]
    # the placement figure: one bar segment per variant replica, shares summing to 100 %
    shares = [x for t in figs["placement"]["data"] for x in t["x"]]
    assert sum(shares) == pytest.approx(100.0)


@pytest.mark.parametrize(("argv", "needle"), [
    (["gpu=h200"], "gpu=h200: the search sets gpu itself; use search.gpus=..."),
    (["search.gpus=h300"], "unknown gpu in search.gpus 'h300'"),
    (["search.policies=fifo"], "unknown policy in search.policies 'fifo'"),
    (["search.target=1.5"], "search.target=1.5: must be in (0, 1]"),
    (["search.verify_seeds=0,5"], "must be disjoint from search.seeds=0,1"),
    (["search.backend=spark"], "search.backend='spark': unknown; valid: ray, local"),
    (["workload.tenants=0"], "tenants=0 is invalid"),
    (["search.max_batch=x"], "search.max_batch='x': expected an integer"),
    (["search.prices=/nonexistent.yaml"], "search.prices=/nonexistent.yaml: no such file"),
    (["oops"], "argument 'oops': expected key=value"),
])
def test_cli_errors_are_one_line(argv: list[str], needle: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from moesim.search.__main__ import main

    with pytest.raises(SystemExit) as ei:
        main(["search.backend=local", *argv, f"search.out={tmp_path / 'o'}"])
    assert ei.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moesim: error: ")
    assert "\n" not in err
    assert needle in err
    assert not (tmp_path / "o").exists()


def test_cli_help_lists_every_search_key(capsys: pytest.CaptureFixture[str]) -> None:
    import dataclasses

    from moesim.search.__main__ import main

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(SearchConfig):
        assert f"search.{f.name}=" in text
    assert "usage: python -m moesim.search" in text


def test_a_trial_is_the_plain_simulation_job_of_its_placement(tmp_path: Path) -> None:
    """The search's trial and ``python -m moesim.simulate placement=file`` of the placement it saved give the
    same per-request times (the trial is a plain fleet simulation job)."""
    from hydra import compose, initialize_config_dir

    from moesim import job
    from moesim.config import CONF_DIR, job_spec, register_configs
    from moesim.fleet import save_placement
    from moesim.search.fleet_eval import evaluate, placement_of

    cfg = {**_trial(2, "multiplex", seeds=(3,)), "router": "least_work"}
    run = evaluate(cfg, 3)
    path = save_placement(placement_of(cfg), tmp_path / "p.yaml")
    wl = BASE["workload"]
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        composed = compose("config", overrides=[
            "model=mixtral-8x7b", "gpu=h200", "policy=multiplex", "policy.max_batch=8", "fleet.gpus=2",
            "placement=file", f"placement.path={path}", "router=least_work", "seed=3",
            f"workload.tenants={wl['tenants']}", f"workload.rate={wl['rate']}",
            f"workload.duration_s={wl['duration_s']}"])
    job.run(job_spec(composed), tmp_path / "job")
    req = pd.read_parquet(tmp_path / "job" / "requests.parquet").sort_values("request_id")
    assert len(req) == len(run.requests)
    assert req["gpu"].tolist() == run.requests["gpu"].tolist()
    assert req["first_token_s"].tolist() == run.requests["first_token_s"].tolist()
    assert req["finish_s"].tolist() == run.requests["finish_s"].tolist()

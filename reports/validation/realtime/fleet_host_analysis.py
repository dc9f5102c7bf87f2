"""Why the 2-GPU fleet with host experts is simulated fast: routing, step timelines, host contention (torch-free).

    PYTHONPATH=. python reports/validation/realtime/fleet_host_analysis.py [RUN_FOLDER] [TABLE] > out.md

Defaults: ``reports/validation/realtime/h200x2b/fleet_host`` and that call's ``tables/decode_table.csv``. Prints
markdown: (1) each request's GPU measured and simulated, and at each arrival of a replicated variant the
outstanding tokens per GPU the ``least_work`` router saw in each (requests routed there and not finished);
(2) each measured segment's time per step outside its copies against the fraction of it during which the other
GPU was busy, and the summary alone / busy; (3) the simulator's step times for the same shapes; (4) the four
figures with ``host_contention`` α = 0 and the validate default, with the live router and with every request
sent to the GPU it went to in the measured run (``AsMeasured``: what is left once routing is taken out);
(5) fetching decode steps of two or more tenants in the same call's single-GPU runs (``multiplex_host``,
``multiplex_host-s1``) measured against simulated outside their copies, and the fleet re-simulated with that gap
added to such steps (``PlusGap``: a diagnostic, not a model). Needs simpy.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from moesim.cost.base import DecodeRun, SeqWork
from moesim.executor.compare import summary
from moesim.policies import POLICIES
from moesim.serve.config import ServeConfig, make_requests
from moesim.serve.run import build_cost, simulate_config
from moesim.serve.validate import FIGURES, HOST_CONTENTION, fetch_prefix_of, measured_link_Bps
from moesim.specs import get_gpu, get_model

RUN = "reports/validation/realtime/h200x2b/fleet_host"
TABLE = "reports/validation/realtime/h200x2b/tables/decode_table.csv"


def setup(folder: Path, table: str):
    """The run's config, requests, and the validation's cost model (as ``moesim.serve.validate`` builds it)."""
    doc = json.loads((folder / "summary.json").read_text())
    cfg = ServeConfig(**{**doc["config"], "sim_cost": "profile_bucketed", "sim_table": table})
    model, gpu = get_model(cfg.model), get_gpu(cfg.gpu)
    opts = {"fetch_model": "pipeline", "fetch_prefix": fetch_prefix_of(doc),
            "prefill_prefix": fetch_prefix_of(doc, "prefill_prefix_graph_steps")}
    rate = measured_link_Bps(folder, table, "table", doc, model.expert_bytes)
    if rate > 0:
        opts["expert_link_Bps"] = round(rate, -6)
    cost, _ = build_cost(cfg, model, gpu, "graphs", opts)
    return cfg, model, gpu, cost, make_requests(cfg)


class AsMeasured:
    """A router sending each request to the GPU it went to in the measured run."""

    registry_name = "as_measured"

    def __init__(self, gpu_of: dict[int, int]) -> None:
        self.gpu_of = gpu_of

    def choose(self, request, candidates, fleet) -> int:
        return self.gpu_of[request.id]


def as_measured(cfg, model, gpu, cost, requests, meas: pd.DataFrame, alpha: float):
    """The fleet simulated with the measured run's routing (``AsMeasured``)."""
    from moesim.fleet import FleetSpec, GPUPlacement, Placement, run_fleet

    placement = Placement(tuple(GPUPlacement(g, ts) for g, ts in enumerate(cfg.fleet_placement())), "file")
    pol = POLICIES.build(cfg.policy, cfg.policy_params())
    router = AsMeasured({int(i): int(g) for i, g in zip(meas.request_id, meas.gpu, strict=True)})
    return run_fleet(model, FleetSpec.uniform(cfg.gpu, cfg.gpus), placement, requests, policy=cfg.policy,
                     policy_cfg=pol.cfg, cost="", cost_cfg=None, router=router, costs={gpu.name: cost},
                     host_contention=alpha)


def segment_gaps(folder: Path, table: str) -> pd.DataFrame:
    """Per fetching decode segment of a run: tenants, sequences, steps, measured and simulated seconds per step
    outside the copies (the simulated step: its shape, sequences spread over its tenants, context 260)."""
    cfg, model, gpu, cost, _ = setup(folder, table)
    pol = POLICIES.build(cfg.policy, cfg.policy_params())
    n_t = len(cfg.fleet_placement()[0]) if cfg.gpus > 1 else cfg.tenants
    res = pol.layout(model, gpu, n_t)[0].residency
    seg = pd.read_parquet(folder / "segments.parquet")
    out = []
    for _, s in seg[(seg.kind == "decode") & (seg.expert_fetches > 0)].iterrows():
        ts = [int(x) for x in str(s.tenants).split(",")]
        c = cost.step(tuple(SeqWork(ts[i % len(ts)], 1, 260) for i in range(s.n_seqs)), res)
        out.append((len(ts), int(s.n_seqs), int(s.steps), (s.end_s - s.start_s - s.fetch_s) / s.steps,
                    c.total_s - c.fetch_s))
    return pd.DataFrame(out, columns=["k", "n", "steps", "meas_s", "sim_s"])


class PlusGap:
    """A cost model adding ``gap_s`` seconds to every fetching decode step holding two or more tenants."""

    def __init__(self, cost, gap_s: float) -> None:
        self.cost, self.gap_s = cost, gap_s

    def __getattr__(self, name: str):
        return getattr(self.cost, name)

    def step(self, batch, residency):
        c = self.cost.step(batch, residency)
        if c.expert_fetches > 0 and all(w.new_tokens == 1 for w in batch) and len({w.tenant for w in batch}) > 1:
            c = dataclasses.replace(c, overhead_s=c.overhead_s + self.gap_s)
        return c

    def decode_run(self, tenants, context0, n_steps, residency):
        r = self.cost.decode_run(tenants, context0, n_steps, residency)
        if r.cost.expert_fetches > 0 and len(set(tenants)) > 1:
            r = DecodeRun(r.end_s + self.gap_s * np.arange(1, n_steps + 1),
                          dataclasses.replace(r.cost, overhead_s=r.cost.overhead_s + self.gap_s * n_steps))
        return r


def outstanding(req: pd.DataFrame, t: float, n_gpus: int) -> list[int]:
    """Tokens routed to each GPU before ``t`` and not finished at ``t`` (what ``least_work`` reads)."""
    live = req[(req.arrival_s < t) & (req.finish_s > t)]
    return [int((live[live.gpu == g].prompt_tokens + live[live.gpu == g].output_tokens).sum()) for g in range(n_gpus)]


def busy_fraction(seg: pd.DataFrame, row: pd.Series) -> float:
    """Fraction of ``row``'s span during which another instance had a segment running."""
    other = seg[seg.instance != row.instance]
    a, b = row.start_s, row.end_s
    o = sum(max(0.0, min(b, e) - max(a, s)) for s, e in zip(other.start_s, other.end_s, strict=True))
    return o / (b - a)


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else RUN)
    table = sys.argv[2] if len(sys.argv) > 2 else TABLE
    cfg, model, gpu, cost, requests = setup(folder, table)
    meas = pd.read_parquet(folder / "requests.parquet")
    seg = pd.read_parquet(folder / "segments.parquet")
    sims = {a: simulate_config(cfg, model, gpu, cost, requests, host_contention=a) for a in (0.0, HOST_CONTENTION)}
    n_gpus = cfg.gpus
    reps = {t for t in range(cfg.tenants) if sum(t in p for p in cfg.fleet_placement()) > 1}

    print(f"## Routing ({folder})\n")
    print("| request | tenant | arrival s | GPU meas. | GPU sim. α=0 | GPU sim. α=" + f"{HOST_CONTENTION:g}"
          + " | outstanding tokens meas. | sim. α=0 | turnaround meas. / sim. α=0 s |")
    print("|---:|---:|---:|---:|---:|---:|---|---|---|")
    s0 = sims[0.0].requests.set_index("request_id")
    s1 = sims[HOST_CONTENTION].requests.set_index("request_id")
    for _, r in meas.sort_values("arrival_s").iterrows():
        rid = int(r.request_id)
        om = outstanding(meas, r.arrival_s, n_gpus) if r.tenant in reps else "–"
        os_ = outstanding(sims[0.0].requests, r.arrival_s, n_gpus) if r.tenant in reps else "–"
        flag = " **≠**" if int(s0.loc[rid, "gpu"]) != int(r.gpu) else ""
        print(f"| {rid} | {int(r.tenant)} | {r.arrival_s:.3f} | {int(r.gpu)} | {int(s0.loc[rid, 'gpu'])}{flag} | "
              f"{int(s1.loc[rid, 'gpu'])} | {om} | {os_} | {r.finish_s - r.arrival_s:.3f} / "
              f"{s0.loc[rid, 'finish_s'] - r.arrival_s:.3f} |")

    print("\n## Measured segments: time per step outside the copies vs the other GPU busy\n")
    print("| GPU | kind | seqs | tenants (local) | steps | fetches/step | ms/step | outside copies ms/step | "
          "copy ms/fetch | other GPU busy |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for _, s in seg.iterrows():
        dur = s.end_s - s.start_s
        b = busy_fraction(seg, s)
        out = (dur - s.fetch_s) / s.steps * 1e3
        rows.append((s.kind, int(s.n_seqs), str(s.tenants).count(",") + 1, out, b))
        print(f"| {s.instance} | {s.kind} | {s.n_seqs} | {s.tenants} | {s.steps} | {s.expert_fetches / s.steps:.1f} | "
              f"{dur / s.steps * 1e3:.1f} | {out:.1f} | {s.fetch_s / s.expert_fetches * 1e3:.2f} | {b:.2f} |")
    df = pd.DataFrame(rows, columns=["kind", "n", "k", "out", "busy"])
    print("\n| one sequence | other GPU idle (busy ≤ 5%): n, mean outside ms | busy (≥ 95%): n, mean | ratio |")
    print("|---|---|---|---:|")
    for kind in ("prefill", "decode"):
        x = df[(df.kind == kind) & (df.n == 1)]
        a, b = x[x.busy <= 0.05].out, x[x.busy >= 0.95].out
        print(f"| {kind} | {len(a)}, {a.mean():.1f} | {len(b)}, {b.mean():.1f} | ×{b.mean() / a.mean():.2f} |")

    print("\n## The simulator's steps (this run's cost model, one GPU's layout)\n")
    pol = POLICIES.build(cfg.policy, cfg.policy_params())
    res = pol.layout(model, gpu, len(cfg.fleet_placement()[0]))[0].residency
    print("| step | total ms | copies ms | fetches | outside copies ms |")
    print("|---|---:|---:|---:|---:|")
    shapes = {"decode 1 seq": (SeqWork(0, 1, 260),), "decode 2 seqs, 1 tenant": (SeqWork(0, 1, 260),) * 2,
              "decode 2 seqs, 2 tenants": (SeqWork(0, 1, 260), SeqWork(1, 1, 260)),
              "decode 3 seqs, 2 tenants": (SeqWork(0, 1, 260), SeqWork(0, 1, 260), SeqWork(2, 1, 260)),
              "prefill 256": (SeqWork(0, 256, 0),)}
    for name, batch in shapes.items():
        c = cost.step(batch, res)
        print(f"| {name} | {c.total_s * 1e3:.1f} | {c.fetch_s * 1e3:.1f} | {c.expert_fetches:.2f} | "
              f"{(c.total_s - c.fetch_s) * 1e3:.1f} |")

    print("\n## Four figures\n")
    print("| routing | host_contention α | mean turnaround | mean TTFT | per-request median turnaround / TTFT | "
          "GPUs as measured |")
    print("|---|---:|---:|---:|---|---:|")
    runs = [("live (least_work)", a, sim) for a, sim in sims.items()]
    runs += [("as measured", a, as_measured(cfg, model, gpu, cost, requests, meas, a)) for a in sims]
    for how, a, sim in runs:
        e = summary(sim.requests, meas)
        same = int((sim.requests.sort_values("request_id").gpu.to_numpy()
                    == meas.sort_values("request_id").gpu.to_numpy()).sum())
        f = [float(e[k]) for k in FIGURES]
        print(f"| {how} | {a:g} | {f[0]:+.1f}% | {f[1]:+.1f}% | {f[2]:.1f}% / {f[3]:.1f}% | {same} of {len(meas)} |")

    print("\n## Fetching decode steps of several tenants: the same call's single-GPU runs\n")
    print("| run | tenants | segments | steps | outside copies meas. / sim. ms per step (step-weighted) |")
    print("|---|---:|---:|---:|---|")
    gaps = []
    for name in ("multiplex_host", "multiplex_host-s1", folder.name):
        g = segment_gaps(folder.parent / name, table)
        for k, x in g.groupby(g.k.clip(upper=2)):
            w = x.steps / x.steps.sum()
            m, s = float((x.meas_s * w).sum()), float((x.sim_s * w).sum())
            print(f"| {name} | {'1' if k == 1 else '≥ 2'} | {len(x)} | {int(x.steps.sum())} | {m * 1e3:.1f} / "
                  f"{s * 1e3:.1f} |")
            if k > 1 and name != folder.name:
                gaps.append(x.assign(gap=x.meas_s - x.sim_s))
    allg = pd.concat(gaps)
    gap = float((allg.gap * allg.steps).sum() / allg.steps.sum())
    print(f"\nGap of the single-GPU runs' steps of ≥ 2 tenants (measured − simulated, step-weighted): "
          f"{gap * 1e3:.1f} ms per step. The fleet re-simulated with it added to such steps (diagnostic):\n")
    print("| routing | host_contention α | mean turnaround | mean TTFT | per-request median turnaround / TTFT |")
    print("|---|---:|---:|---:|---|")
    pc = PlusGap(cost, gap)
    for a in sims:
        for how, sim in (("live (least_work)", simulate_config(cfg, model, gpu, pc, requests, host_contention=a)),
                         ("as measured", as_measured(cfg, model, gpu, pc, requests, meas, a))):
            e = summary(sim.requests, meas)
            f = [float(e[k]) for k in FIGURES]
            print(f"| {how} | {a:g} | {f[0]:+.1f}% | {f[1]:+.1f}% | {f[2]:.1f}% / {f[3]:.1f}% |")


if __name__ == "__main__":
    main()

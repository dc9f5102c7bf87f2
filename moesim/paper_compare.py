"""Per-rate tables of ``experiment=paper_a100``: the paper's metric definitions beside ours.

    python -m moesim.paper_compare summary=/tmp/paper_a100/summary.csv out=reports/paper_a100 seeds=100

writes ``per_rate.csv`` (the sweep's 5 repetitions per rate, reconfig and mig, both definitions),
``headline.csv`` (the reduction against MIG as the mean over λ of the per-rate reductions and as the paper's
own plot pools it: every served request of every rate, ``moesim.paper_protocol.pooled_reduction``),
``expected.csv`` (the same metrics averaged over ``seeds`` repetitions, run here without hydra and, as the
paper's code, serving only the requests dequeued within the 120 s window: the expectation the 5-repetition
means scatter around), ``protocol.csv`` (MIG as the code's two unsynchronised processes run it, with the
spread of a 5-run estimate: ``moesim.paper_protocol.study``) and prints them as markdown.

Definitions (moesim.metrics): the paper's code logs, over the requests dequeued within the 120 s window,
turnaround = finish − dequeue (``paper_mean_turnaround_s``), TTFT = swap + prefill (``paper_mean_ttft_s``),
wait = dequeue − arrival and throughput = served requests per minute; ours are turnaround = finish −
arrival and TTFT = first token − arrival over every request (the queue drained).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from moesim.errors import UserError

RATES = tuple(round(0.005 * i, 3) for i in range(1, 17))

#: moesim's mean service time per rate before this reproduction (reports/paper_a100/summary.csv at commit
#: f86a7c8: 20-token prompts, 25 output tokens, uniform routing, link share fixed per decode run)
PREVIOUS_SERVICE_S = {
    "reconfig": (9.36, 9.27, 9.69, 9.55, 9.59, 9.71, 9.63, 9.67, 9.71, 9.71, 9.70, 9.69, 9.63, 9.63, 9.64, 9.64),
    "mig": (30.35, 30.35, 33.65, 34.44, 37.13, 42.23, 47.94, 48.49, 51.67, 52.32, 53.28, 51.91, 51.62, 53.21,
            53.88, 54.65),
}


def implied_paper_service_s(policy: str) -> tuple[float, ...]:
    """The paper code's mean turnaround per rate as issue #12 describes it against ``PREVIOUS_SERVICE_S``.

    reconfig: previous ≈ 18% too long at every rate → previous / 1.18; mig: 21–30% too short at the three
    lowest rates (previous / (1 − 0.255), the middle) and close elsewhere (previous). Approximate: the
    paper's own per-rate curves are not in facts/paper.md.
    """
    prev = PREVIOUS_SERVICE_S[policy]
    if policy == "reconfig":
        return tuple(p / 1.18 for p in prev)
    return tuple(p / (1 - 0.255) if i < 3 else p for i, p in enumerate(prev))


COLUMNS = {
    "paper_mean_turnaround_s": "turnaround (paper: finish − dequeue)",
    "paper_mean_ttft_s": "TTFT (paper: swap + prefill)",
    "paper_mean_wait_s": "wait (paper)",
    "paper_throughput_rpm": "throughput (paper, req/min)",
    "mean_turnaround_s": "turnaround (ours: finish − arrival)",
    "mean_ttft_s": "TTFT (ours: first token − arrival)",
}


def per_rate(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean over repetitions per (rate, policy) of the ``COLUMNS`` metrics, reconfig and mig only.

    Repetitions without a served request count 0 toward throughput and are left out of the means.
    """
    need = {"policy", "rate", *COLUMNS}
    missing = need - set(summary.columns)
    if missing:
        raise UserError(f"summary table lacks {sorted(missing)}: not a paper_a100 sweep of this moesim")
    df = summary[summary["policy"].isin(["reconfig", "mig"])]
    out = df.groupby(["rate", "policy"])[list(COLUMNS)].mean().unstack("policy")
    out.columns = [f"{p}:{m}" for m, p in out.columns]
    for name in ("paper_mean_turnaround_s", "mean_turnaround_s"):
        out[f"reduction:{name}"] = 1.0 - out[f"reconfig:{name}"] / out[f"mig:{name}"]
    rates = [float(r) for r in out.index]
    for p in ("reconfig", "mig"):
        prev = dict(zip(RATES, PREVIOUS_SERVICE_S[p], strict=True))
        ref = dict(zip(RATES, implied_paper_service_s(p), strict=True))
        out[f"{p}:previous_service_s"] = [prev.get(round(r, 3), np.nan) for r in rates]
        out[f"{p}:implied_paper_turnaround_s"] = [ref.get(round(r, 3), np.nan) for r in rates]
    return out.reset_index()


def expected(seeds: int, rates: tuple[float, ...] = RATES, window: bool = True) -> pd.DataFrame:
    """The paper_a100 sweep's reconfig and mig jobs over ``seeds`` repetitions each, without hydra.

    ``window``: serve only what is dequeued within the 120 s, as the paper's code (``served_in_window``);
    else drain the queue as ``python -m moesim.simulate`` does.
    """
    from moesim.cost import COST_MODELS
    from moesim.cost.roofline import PAPER_A100
    from moesim.engine import simulate
    from moesim.metrics import summarize
    from moesim.paper import OUTPUT_TOKENS, PROMPT_TOKENS
    from moesim.policies import POLICIES
    from moesim.specs import get_gpu, get_model
    from moesim.workloads import WORKLOADS

    model, gpu = get_model("mixtral-8x7b"), get_gpu("a100-80gb")
    cost = COST_MODELS.build("roofline", PAPER_A100, model=model, gpu=gpu)
    rows = []
    for lam in rates:
        wl = WORKLOADS.build("poisson", {"rate": lam, "tenants": 2, "duration_s": 120.0,
                                         "prompt_tokens": PROMPT_TOKENS, "output_tokens": OUTPUT_TOKENS})
        for seed in range(seeds):
            reqs = wl.generate(seed)
            for pol in ("reconfig", "mig"):
                row = {"rate": lam, "policy": pol, "seed": seed}
                if reqs:
                    res = (served_in_window(model, gpu, pol, cost, reqs) if window else
                           simulate(model, gpu, POLICIES.build(pol, {"max_batch": 1}), cost, reqs, n_tenants=2))
                    row.update(summarize(res.requests, res.segments, horizon_s=120.0))
                else:
                    row.update({"paper_throughput_rpm": 0.0})
                rows.append(row)
    return per_rate(pd.DataFrame(rows).reindex(columns=["rate", "policy", "seed", *COLUMNS]))


def served_in_window(model, gpu, policy: str, cost, requests: list, horizon_s: float = 120.0, max_rounds: int = 20):
    """Simulate the paper's window: an instance dequeues no request after ``horizon_s`` (the rest is dropped).

    FIFO at batch 1 serves a prefix of each instance's arrivals; start from the prefixes the plain run
    (queue drained) starts in time, simulate only those and grow a prefix while its next request would still
    start in time, until nothing changes. Returns the last run (a ``SimResult`` over the served requests).
    """
    from moesim.engine import simulate
    from moesim.policies import POLICIES
    from moesim.workloads.request import Request

    def run(sub: list) -> object:
        reqs = [Request(i, r.tenant, r.arrival_s, r.prompt_tokens, r.output_tokens) for i, r in enumerate(sub)]
        return simulate(model, gpu, POLICIES.build(policy, {"max_batch": 1}), cost, reqs, n_tenants=2)

    order = sorted(requests, key=lambda r: (r.arrival_s, r.id))
    res = run(order)
    df = res.requests.sort_values("request_id")
    where = {id(r): int(i) for r, i in zip(order, df["instance"], strict=True)}  # routing is static
    served = [r for r, s in zip(order, df["start_s"], strict=True) if s < horizon_s]
    for _ in range(max_rounds):
        res = run(served)
        df = res.requests.sort_values("request_id")
        last_finish: dict[int, float] = {}
        for r, f in zip(served, df["finish_s"], strict=True):
            last_finish[where[id(r)]] = max(last_finish.get(where[id(r)], 0.0), float(f))
        have = {id(r) for r in served}
        grow = []
        for inst in set(where.values()):
            nxt = next((r for r in order if where[id(r)] == inst and id(r) not in have), None)
            if nxt is not None and max(nxt.arrival_s, last_finish.get(inst, 0.0)) < horizon_s:
                grow.append(nxt)
        if not grow:
            return res
        served = sorted(served + grow, key=lambda r: (r.arrival_s, r.id))
    return res


def headline(summary: pd.DataFrame) -> pd.DataFrame:
    """The reduction of the paper's turnaround against MIG, two ways (a one-row frame, fractions).

    ``mean_over_rates``: the mean over λ of ``1 − reconfig / mig`` (per-rate means over repetitions);
    ``pooled``: as the paper's TTFT_plotter.py pools it, ``1 − Σ n·t / Σ n`` of reconfig over that of mig,
    over every job (rate × repetition) that served a request (``n`` = ``paper_n_served``).
    """
    from moesim.paper_protocol import pooled_reduction

    if "paper_n_served" not in summary.columns:
        raise UserError("summary table lacks ['paper_n_served']: not a paper_a100 sweep of this moesim")

    def pairs(pol: str) -> list[tuple[float, int]]:
        d = summary[summary["policy"] == pol]
        return [(float(t), int(n)) for t, n in zip(d["paper_mean_turnaround_s"], d["paper_n_served"], strict=True)
                if n > 0]

    rc, mig = pairs("reconfig"), pairs("mig")
    if not rc or not mig:
        raise UserError("summary table has no served reconfig or mig request: not a paper_a100 sweep")
    table = per_rate(summary)

    def pool(v: list[tuple[float, int]]) -> float:
        return sum(t * n for t, n in v) / sum(n for _, n in v)

    return pd.DataFrame([{
        "mean_over_rates": float(table["reduction:paper_mean_turnaround_s"].mean()),
        "pooled": pooled_reduction(rc, mig),
        "reconfig_pooled_s": pool(rc), "mig_pooled_s": pool(mig),
        "reconfig_served": sum(n for _, n in rc), "mig_served": sum(n for _, n in mig),
    }])


def protocol_markdown(df: pd.DataFrame) -> str:
    """``moesim.paper_protocol.study``'s table as markdown (seconds, req/min, shares in %)."""
    cols = [("rate", "λ", "{:.3f}"), ("aligned", "mig, moesim's protocol", "{:.2f}"),
            ("protocol", "mig, the code's protocol", "{:.2f}"), ("p5", "p5", "{:.1f}"), ("p50", "p50", "{:.1f}"),
            ("p95", "p95", "{:.1f}"), ("within10", "within ±10 %", "{:.0%}"),
            ("all_alone", "no overlap at all", "{:.0%}"), ("served", "requests in 5 runs", "{:.1f}")]
    cols += [(c, c.replace("protocol_", "launched ") + " s apart", "{:.2f}") for c in df.columns
             if c.startswith("protocol_")]
    if "reference" in df.columns:
        cols += [("reference", "≈ paper (issue #12)", "{:.2f}"), ("below_reference", "share of estimates below",
                                                                 "{:.0%}")]
    cols += [("ttft", "mig TTFT", "{:.2f}"), ("wait", "mig wait", "{:.2f}"), ("throughput_rpm", "mig req/min",
                                                                              "{:.2f}")]
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(f.format(r[c]) for c, _, f in cols) + " |")
    return "\n".join(lines)


def markdown(table: pd.DataFrame) -> str:
    """The per-rate table as markdown (seconds, req/min, reduction in %)."""
    cols = [("rate", "λ"),
            ("reconfig:paper_mean_turnaround_s", "reconfig turnaround (paper def.)"),
            ("reconfig:implied_paper_turnaround_s", "≈ paper code (issue #12)"),
            ("reconfig:mean_turnaround_s", "reconfig turnaround incl. queue (ours)"),
            ("mig:paper_mean_turnaround_s", "mig turnaround (paper def.)"),
            ("mig:implied_paper_turnaround_s", "≈ paper code (issue #12)"),
            ("mig:mean_turnaround_s", "mig turnaround incl. queue (ours)"),
            ("reduction:paper_mean_turnaround_s", "reduction (paper def.)"),
            ("reduction:mean_turnaround_s", "reduction incl. queue"),
            ("reconfig:paper_mean_ttft_s", "reconfig TTFT (paper)"),
            ("mig:paper_mean_ttft_s", "mig TTFT (paper)"),
            ("reconfig:mean_ttft_s", "reconfig TTFT incl. queue"),
            ("mig:mean_ttft_s", "mig TTFT incl. queue"),
            ("reconfig:paper_mean_wait_s", "reconfig wait (paper)"),
            ("mig:paper_mean_wait_s", "mig wait (paper)"),
            ("reconfig:paper_throughput_rpm", "reconfig req/min (paper)"),
            ("mig:paper_throughput_rpm", "mig req/min (paper)")]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        cells = []
        for c, _ in cols:
            v = r[c]
            if c == "rate":
                cells.append(f"{v:.3f}")
            elif c.startswith("reduction"):
                cells.append(f"{100 * v:.1f} %")
            else:
                cells.append("—" if pd.isna(v) else f"{v:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    red = table["reduction:paper_mean_turnaround_s"]
    red_q = table["reduction:mean_turnaround_s"]
    lines.append("")
    lines.append(f"Mean reduction over λ: {100 * red.mean():.1f} % (paper's definition; the paper: 85 %), "
                 f"{100 * red_q.mean():.1f} % including queueing.")
    return "\n".join(lines)


@dataclass(frozen=True)
class CompareConfig:
    """Command line of ``python -m moesim.paper_compare``.

    Attributes:
        summary: a paper_a100 sweep's summary.csv.
        out: folder for per_rate.csv, headline.csv, expected.csv and protocol.csv.
        seeds: repetitions of the expectation run (0: skip it).
        window: the expectation run serves only requests dequeued within the 120 s window, as the paper's
            code (false: drains the queue, as the sweep).
        protocol_reps: repetitions of the 5-run MIG estimate under the code's two-process protocol
            (moesim.paper_protocol.study; 0: skip it).
    """

    summary: str = ""
    out: str = "."
    seeds: int = 100
    window: bool = True
    protocol_reps: int = 400


def _check_paper_sweep(summary: pd.DataFrame, name: str) -> None:
    """Refuse a summary.csv that is not of the paper's experiment (another sweep gave a table of NaN and
    a meaningless "pooled" reduction): reconfig and mig jobs at the paper's rates."""
    if "policy" not in summary or "rate" not in summary:
        return  # per_rate names the missing columns
    pols = set(summary["policy"].astype(str))
    rates = {round(float(r), 3) for r in summary.loc[summary["policy"].isin(["reconfig", "mig"]), "rate"]}
    if not {"reconfig", "mig"} <= pols or not rates or not rates <= {round(r, 3) for r in RATES}:
        raise UserError(
            f"summary={name}: not a paper_a100 sweep (policies {', '.join(sorted(pols)) or 'none'}; reconfig/mig "
            f"rates {', '.join(f'{r:g}' for r in sorted(rates)) or 'none'}); valid: reconfig and mig jobs at the "
            f"paper's rates {', '.join(f'{r:g}' for r in RATES)} (python -m moesim.simulate -m experiment=paper_a100)")
    ours = summary[summary["policy"].isin(["reconfig", "mig"])]
    for key, want in (("gpu", "a100-80gb"), ("model", "mixtral-8x7b")):  # the paper's setup, which its numbers are
        got = sorted(set(ours[key].dropna().astype(str))) if key in ours else []
        if got and got != [want]:
            raise UserError(f"summary={name}: its reconfig/mig jobs ran {key}={','.join(got)}; the paper's numbers are "
                            f"{want}'s, so the 'paper' columns would compare another setup; valid: a sweep of "
                            f"{key}={want} (python -m moesim.simulate -m experiment=paper_a100)")


def _repetitions(summary: pd.DataFrame) -> str:
    """``"5 repetitions per rate"`` from the sweep itself (the line said 5 whatever the sweep ran)."""
    n = summary[summary["policy"].isin(["reconfig", "mig"])].groupby(["policy", "rate"]).size()
    if n.empty:
        return "no repetition"
    lo, hi = int(n.min()), int(n.max())
    return f"{lo} repetition{'s' if hi != 1 else ''} per rate" if lo == hi else f"{lo}–{hi} repetitions per rate"


def main(argv: list[str] | None = None) -> int:
    from moesim.cli import parse_key_values

    try:
        cfg = parse_key_values(sys.argv[1:] if argv is None else argv, CompareConfig,
                               prog="python -m moesim.paper_compare")
        if not cfg.summary:
            raise UserError("summary= is missing; valid: the summary.csv of a `python -m moesim.simulate -m "
                            "experiment=paper_a100` sweep (a checkout ships reports/paper_a100/summary.csv)")
        path = Path(cfg.summary)
        if not path.is_file():
            raise UserError(f"summary={cfg.summary}: no such file")
        from moesim.outdir import check_writable

        check_writable(cfg.out, "out")  # before any work: an unwritable out= was a PermissionError traceback
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        try:
            summary = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise UserError(f"summary={cfg.summary}: not a CSV table ({str(e).splitlines()[0]})") from None
        _check_paper_sweep(summary, cfg.summary)
        table = per_rate(summary)
        table.to_csv(out / "per_rate.csv", index=False)
        head = headline(summary)
        head.to_csv(out / "headline.csv", index=False)
        h = head.iloc[0]
        print(f"## {path}: {_repetitions(summary)}\n\n{markdown(table)}\n")
        print(f"Pooled as the paper's plot pools it (every served request of every rate): "
              f"{100 * h['pooled']:.1f} % (reconfig {h['reconfig_pooled_s']:.2f} s over {int(h['reconfig_served'])} "
              f"requests, mig {h['mig_pooled_s']:.2f} s over {int(h['mig_served'])}).\n")
        if cfg.seeds > 0:
            exp = expected(cfg.seeds, window=cfg.window)
            exp.to_csv(out / "expected.csv", index=False)
            how = "served within the 120 s window" if cfg.window else "queue drained"
            print(f"## expectation: {cfg.seeds} repetitions per rate, {how}\n\n{markdown(exp)}\n")
        if cfg.protocol_reps > 0:
            from moesim.paper_protocol import mig_times, study

            proto = study(mig_times(), reps=cfg.protocol_reps, reference=implied_paper_service_s("mig"))
            proto.to_csv(out / "protocol.csv", index=False)
            mig_pooled = float((proto["served"] * proto["protocol"]).sum() / proto["served"].sum())
            print(f"## mig as the code's two processes run it: {cfg.protocol_reps} × 5 runs\n\n"
                  f"{protocol_markdown(proto)}\n\nPooled mig under the code's protocol (expectation): "
                  f"{mig_pooled:.2f} s; against the sweep's pooled reconfig: "
                  f"{100 * (1 - h['reconfig_pooled_s'] / mig_pooled):.1f} %.")
        written = ["per_rate.csv", "headline.csv", *(["expected.csv"] if cfg.seeds > 0 else []),
                   *(["protocol.csv"] if cfg.protocol_reps > 0 else [])]
        print(f"\nmoesim: outputs in {out}/ ({', '.join(written)})")  # out=. wrote into the cwd unannounced
    except UserError as e:
        print(f"moesim: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

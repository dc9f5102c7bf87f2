"""``python -m moesim.serve.validate DIR [sim_cost=auto]``: the simulated side of served runs, and the errors.

For every run folder under ``DIR`` (one with ``requests.parquet`` and ``summary.json`` written by
``python -m moesim.serve``), rebuild the trace from the recorded config, simulate it with the same policy and
``sim_cost`` (``auto``: the shipped profile for gpu × model in the runtime's execution mode), and write
``simulated_requests.parquet``, ``per_request_errors.parquet`` into the run folder and one row per run into
``DIR/validation.csv`` (``validation_eager.csv`` with ``execution=eager``: the eager-launch profile;
``validation_profile_mixed.csv`` with ``sim_cost=profile_mixed``; ``sim_cost=profile_bucketed table=CSV``: decode
steps from the runtime's measured bucket table, fetching decode steps as ``fetch_model=pipeline`` (default; the
resident layers before the first host layer eager or from graphs as the run's backend says: ``fetch_prefix_of``)
or ``fetch_model=host_bound`` (suffix ``_host_bound``), expert copies at the rate measured in the same call
(``link=table``, default: ``link_share.json`` beside the table), the profile's (``link=profile``) or the run's own
(``link=run``, a diagnostic, swaps too: suffix ``_link_run``), mig slices sharing the host link as the runtime's
green contexts do (``link_discipline=auto``: ``alternate``, one copy engine taking copies in turn; for runs before
``HostReader``, whose summary has no ``routing_read``, ``fifo``, layer bursts) or as named (``share``: 1/k each,
``fifo``, ``alternate``: suffix ``_<name>``); the per-run files get the same suffix), host-bound steps of
the GPUs of a fleet slowing each other (``host_contention=auto``, default: α = ``HOST_CONTENTION`` for runs on
several GPUs, which the runtime drives from one host process, 0 otherwise; a number: that α for every run, suffix
``_host<α>``; ``moesim.engine.host``) (run-level figures simulated vs measured, signed errors, per-request median/mean
absolute errors; ``replay_*`` columns: the same errors of the warm-up replay, measured step times on a
virtual clock, i.e. without host time or real arrivals). It also writes and prints the four-figure table
(``validation<suffix>.md``: per run measured / simulated mean turnaround and mean TTFT with signed errors
(sim − meas) / meas, the per-request median absolute errors of turnaround and TTFT, and whether all four are
within 5%) and the count of runs within 5%. Torch-free; needs simpy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from moesim.cost.profile_bucketed import FETCH_MODELS
from moesim.errors import UserError, did_you_mean, exit_on_user_error
from moesim.formats.profile import EXECUTION_CHOICES
from moesim.policies.base import LINK_DISCIPLINES


def fetch_prefix_of(doc: dict[str, Any], stat: str = "prefix_graph_steps") -> str:
    """How a served run ran the resident layers of its fetching decode steps (``stat``: ``prefix_graph_steps``) or
    prefills (``prefill_prefix_graph_steps``): ``graphs`` when its backend replayed them from piecewise CUDA graphs
    (the count > 0 in any instance's description), else ``eager``."""
    be = doc.get("backend", {})
    for d in (be if isinstance(be, list) else [be]):
        if isinstance(d, dict) and float(d.get(stat, 0) or 0) > 0:
            return "graphs"
    return "eager"


LINK_MODES = ("table", "profile", "run")

#: α of ``moesim.engine.host`` for served runs on several GPUs (dimensionless: a fetching step's time outside its
#: copies grows by α per other GPU of the process running such steps). Measured in the step timeline of
#: ``reports/validation/realtime/h200x2b/fleet_host`` (``fleet_host_analysis.py``): outside their copies,
#: one-sequence decode steps ×1.34 and 256-token prefills ×1.28 with the other GPU busy against idle.
HOST_CONTENTION = 0.3


def first_backend(doc: dict[str, Any]) -> dict[str, Any]:
    """A served run's backend description (``summary.json``'s ``backend``; the first instance's when there are
    several, one per instance); empty when there is none."""
    be = doc.get("backend", {})
    be = be[0] if isinstance(be, list) and be else be
    return be if isinstance(be, dict) else {}


def routing_read_of(doc: dict[str, Any]) -> str:
    """How the served run's fetching steps read each host layer's routing (``TorchBackend.describe``'s
    ``routing_read``: ``pinned`` since ``HostReader``; runs before it say nothing: ``tolist``)."""
    return str(first_backend(doc).get("routing_read", "tolist"))


def host_contention_of(setting: str, cfg: Any) -> float:
    """The α a run is simulated with: ``auto``: ``HOST_CONTENTION`` for a run on several GPUs (one host process
    drives them all), else 0 (a mig GPU's slices: their link share is modelled per step, ``HostLink``); a number
    (≥ 0): that α. A bad value is one ``UserError`` line."""
    if setting == "auto":
        return HOST_CONTENTION if int(getattr(cfg, "gpus", 1) or 1) > 1 else 0.0
    try:
        a = float(setting)
    except ValueError:
        a = -1.0
    if not a >= 0:
        raise UserError(f"host_contention={setting!r}: auto or a number ≥ 0 (dimensionless: the slowdown per other "
                        "instance of the host process running host-bound steps)")
    return a


def measured_link_Bps(folder: Path, table: str, link: str, doc: dict[str, Any], expert_bytes: float) -> float:
    """The pinned expert-copy rate (bytes per second) a validation simulates with (0: the profile's).

    ``table``: ``fetch_GBps`` of ``link_share.json`` beside the decode table (measured by the same device call),
    else the profile's; ``profile``: the profile's; ``run``: the run's own mean copy time per fetched expert over its
    fetching steps (``segments.parquet``) — a diagnostic that separates a drifting link from the step model, only
    for runs of one instance (several instances share the link: their copies are slower by design)."""
    if link == "profile":
        return 0.0
    if link == "run" and len(doc.get("instances", [])) == 1:
        seg = pd.read_parquet(folder / "segments.parquet")
        seg = seg[seg["expert_fetches"] > 0]
        n, s = float(seg["expert_fetches"].sum()), float(seg["fetch_s"].sum())
        if n > 0 and s > 0:
            return expert_bytes * n / s
    probe = Path(table).parent / "link_share.json" if table else None
    if probe is not None and probe.is_file():
        gbps = float(json.loads(probe.read_text()).get("fetch_GBps") or 0.0)
        return gbps * 1e9 if gbps > 0 else 0.0
    return 0.0


def simulate_run(folder: Path, sim_cost: str = "auto", execution: str = "auto", table: str = "",
                 fetch_model: str = "pipeline", link: str = "table",
                 options: dict[str, Any] | None = None, link_discipline: str = "auto",
                 host_contention: str = "auto") -> tuple[Any, dict[str, Any]]:
    """Simulate one served run's trace as ``validate_run`` does: (the ``SimResult``, its validation row).

    ``options``: further cost options (``profile_bucketed``'s keys), over the ones the run's backend implies.
    ``link_discipline``: how a mig run's slices share the host link in the simulation (``auto``: ``alternate``, the
    runtime's slices being green contexts of one process with one copy engine, or ``fifo`` for runs before
    ``HostReader`` (``routing_read_of``); ``share``: 1/k each, as real MIG
    partitions). ``host_contention``: ``auto`` or α (``host_contention_of``).
    """
    from moesim.executor.compare import summary
    from moesim.serve.config import ServeConfig, make_requests
    from moesim.serve.run import build_cost, simulate_config
    from moesim.specs import get_gpu, get_model

    doc = json.loads((folder / "summary.json").read_text())
    cfg = ServeConfig(**{**doc["config"], "sim_cost": sim_cost, "sim_table": table})
    model, gpu = get_model(cfg.model), get_gpu(cfg.gpu)
    requests = make_requests(cfg)
    measured = pd.read_parquet(folder / "requests.parquet")
    if execution == "auto":
        execution = "eager" if first_backend(doc).get("execution") == "eager" else "graphs"
    opts = None
    if sim_cost == "profile_bucketed":
        opts = {"fetch_model": fetch_model, "fetch_prefix": fetch_prefix_of(doc),
                "prefill_prefix": fetch_prefix_of(doc, "prefill_prefix_graph_steps")}
        rate = measured_link_Bps(folder, table, link, doc, model.expert_bytes)
        if rate > 0:
            opts["expert_link_Bps"] = round(rate, -6)
        swap = measured_swap_Bps(link, doc)
        if swap > 0:
            opts["swap_link_Bps"] = round(swap, -6)
        opts.update(options or {})
    cost, desc = build_cost(cfg, model, gpu, execution, opts)
    if link != "table" and sim_cost == "profile_bucketed":
        desc += f", link={link}" + (" (each single-instance run at its own measured copy rate)" if link == "run" else "")
    overrides = {"link_discipline": link_discipline} if link_discipline != "auto" and cfg.policy == "mig" else None
    if overrides:
        desc += f", link_discipline={link_discipline}"
    elif cfg.policy == "mig" and routing_read_of(doc) != "pinned":
        # the runtime before HostReader: a slice's pageable routing read held the other slice's copies back, and
        # its copies went in layer bursts (``fifo``); since, one copy engine taking copies in turn (``alternate``)
        overrides = {"link_discipline": "fifo"}
    alpha = host_contention_of(host_contention, cfg)
    if alpha > 0:
        desc += f", host_contention={alpha:g} (fleets)" if host_contention == "auto" else f", host_contention={alpha:g}"
    sim = simulate_config(cfg, model, gpu, cost, requests, overrides, host_contention=alpha)
    row: dict[str, Any] = {"run": folder.name, "policy": cfg.policy, "sim_cost": desc,
                           "sim_swap_count": sim.swap_count, "measured_swap_count": doc.get("swap_count"),
                           **summary(sim.requests, measured)}
    return sim, row


def measured_swap_Bps(link: str, doc: dict[str, Any]) -> float:
    """The pinned non-expert-set swap rate (bytes per second) a validation simulates with (0: the profile's): with
    ``link=run``, the run's own swap copies (its backend's ``swap_bytes`` / ``swap_copy_s``), for runs of one
    instance that swapped; else 0."""
    be = doc.get("backend")
    if link != "run" or len(doc.get("instances", [])) != 1 or not isinstance(be, dict):
        return 0.0
    nbytes, s = float(be.get("swap_bytes") or 0.0), float(be.get("swap_copy_s") or 0.0)
    return nbytes / s if nbytes > 0 and s > 0 else 0.0


def validate_run(folder: Path, sim_cost: str = "auto", execution: str = "auto", suffix: str = "",
                 table: str = "", fetch_model: str = "pipeline", link: str = "table",
                 link_discipline: str = "auto", host_contention: str = "auto") -> dict[str, Any]:
    """Simulate one served run's trace and score it; writes the simulated table and the per-request errors.

    ``execution``: which shipped profile ``sim_cost=auto|profile`` uses (``graphs`` or ``eager``); ``auto``: the
    runtime's execution mode. ``suffix`` is added to the written files' names. ``link_discipline``,
    ``host_contention``: as ``simulate_run``.
    """
    from moesim.executor.compare import per_request_errors, summary
    from moesim.io import write_parquet

    sim, row = simulate_run(folder, sim_cost, execution, table, fetch_model, link,
                            link_discipline=link_discipline, host_contention=host_contention)
    doc = json.loads((folder / "summary.json").read_text())
    measured = pd.read_parquet(folder / "requests.parquet")
    write_parquet(folder / f"simulated_requests{suffix}.parquet", sim.requests)
    write_parquet(folder / f"per_request_errors{suffix}.parquet", per_request_errors(sim.requests, measured))
    replay = folder / "replay_requests.parquet"
    if replay.exists():
        rs = summary(sim.requests, pd.read_parquet(replay))
        for k in ("mean_turnaround_s_error_pct", "mean_ttft_s_error_pct", "turnaround_ape_median_pct",
                  "ttft_ape_median_pct"):
            row[f"replay_{k}"] = rs[k]
    hidden = doc.get("hidden", {})
    row.update({f"measured_{k}": v for k, v in hidden.items()})
    return row


#: Run order of the table: policies, then workloads (``<policy>_<workload>`` folders; others after, by name).
ORDER = ("naive", "swap", "reconfig", "reconfig_fast", "multiplex", "mig", "dedicated", "fleet")
WORKLOADS = ("light", "saturated", "host")
#: The target: every figure of a run within this many percent.
TARGET_PCT = 5.0
FIGURES = ("mean_turnaround_s_error_pct", "mean_ttft_s_error_pct", "turnaround_ape_median_pct",
           "ttft_ape_median_pct")


def _order(run: str) -> tuple[int, int, str]:
    pol, _, wl = run.rpartition("_")
    if wl not in WORKLOADS:
        pol, wl = run, ""
    return (ORDER.index(pol) if pol in ORDER else len(ORDER), WORKLOADS.index(wl) if wl in WORKLOADS else 9, run)


def within_target(row: Any) -> bool:
    """All four figures of a validation row within ``TARGET_PCT`` (absolute)."""
    return all(abs(float(row[k])) <= TARGET_PCT for k in FIGURES)


def markdown_table(table: pd.DataFrame) -> str:
    """The four-figure markdown table of validation rows (``validate_run``'s), and the count within 5%."""
    lines = ["| run | mean turnaround meas. / sim. | error | mean TTFT meas. / sim. | error | per-request median "
             "abs. error turnaround / TTFT | within 5% |", "|---|---|---:|---|---:|---|---|"]
    n_ok = 0
    for _, r in sorted(table.iterrows(), key=lambda kv: _order(str(kv[1]["run"]))):
        ok = within_target(r)
        n_ok += ok
        e = [float(r[k]) for k in FIGURES]
        lines.append(f"| {r['run']} | {r['mean_turnaround_s_measured']:.3f} / {r['mean_turnaround_s_simulated']:.3f} s"
                     f" | {e[0]:+.1f}% | {r['mean_ttft_s_measured']:.3f} / {r['mean_ttft_s_simulated']:.3f} s"
                     f" | {e[1]:+.1f}% | {e[2]:.1f}% / {e[3]:.1f}% | {'yes' if ok else 'no'} |")
    cost = str(table["sim_cost"].iloc[0]) if len(table) else ""
    lines.append(f"\n{n_ok} of {len(table)} runs within {TARGET_PCT:g}% on all four figures (sim_cost: {cost}).")
    return "\n".join(lines)


def _is_served_run(folder: Path) -> bool:
    """Whether ``folder/summary.json`` was written by ``python -m moesim.serve`` (it records the config)."""
    try:
        doc = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("config"), dict) and "policy" in doc["config"]


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Validate every run folder under the given directory."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print("usage: python -m moesim.serve.validate DIR [key=value ...]\n\n" + __doc__)
        return
    if not args or "=" in args[0]:  # no folder: the whole docstring, exit 0, as if something had run
        raise UserError("give the folder of served runs first: python -m moesim.serve.validate DIR [key=value ...] "
                        "(DIR: the out= of python -m moesim.serve, or a folder of them; --help lists the keys)")
    root = Path(args[0])
    opts = {"sim_cost": "auto", "execution": "auto", "table": "", "fetch_model": "pipeline", "link": "table",
            "link_discipline": "auto", "host_contention": "auto"}
    for a in args[1:]:
        key, _, value = a.partition("=")
        if key not in opts:
            raise UserError(f"argument {a!r}{did_you_mean(key, opts)}: keys: sim_cost=auto|profile|profile_mixed|profile_bucketed|roofline|"
                            "constant, execution=auto|graphs|eager, table=<decode_table.csv> (profile_bucketed), "
                            "fetch_model=pipeline|host_bound, link=table|profile|run (profile_bucketed), "
                            "link_discipline=auto|share|fifo|alternate (mig), host_contention=auto|<α ≥ 0>")
        opts[key] = value
    if opts["fetch_model"] not in FETCH_MODELS:
        raise UserError(f"fetch_model={opts['fetch_model']!r}: valid: {', '.join(FETCH_MODELS)}")
    if opts["execution"] not in EXECUTION_CHOICES:
        raise UserError(f"execution={opts['execution']!r}: valid: {', '.join(EXECUTION_CHOICES)}")
    suffix = "".join(f"_{opts[k]}" for k in ("sim_cost", "execution") if opts[k] != "auto")
    if opts["link"] not in LINK_MODES:
        raise UserError(f"link={opts['link']!r}: valid: {', '.join(LINK_MODES)}")
    if opts["link_discipline"] not in ("auto", *LINK_DISCIPLINES):
        raise UserError(f"link_discipline={opts['link_discipline']!r}: valid: auto, {', '.join(LINK_DISCIPLINES)}")
    if opts["link_discipline"] != "auto":
        suffix += f"_{opts['link_discipline']}"
    for key, default in (("fetch_model", "pipeline"), ("link", "table")):
        if opts[key] != default:
            suffix += f"_{key.split('_')[0]}_{opts[key]}" if key == "link" else f"_{opts[key]}"
    if opts["host_contention"] != "auto":
        suffix += f"_host{host_contention_of(opts['host_contention'], None):g}"
    folders = sorted(p.parent for p in root.glob("*/summary.json")) or (
        [root] if (root / "summary.json").exists() else [])
    if not folders:
        raise UserError(f"{root}: no run folder (with summary.json) found")
    served = [f for f in folders if _is_served_run(f)]  # a simulate sweep's job folders: KeyError 'config'
    if not served:
        raise UserError(f"{root}: no served run in it (its summary.json files are not python -m moesim.serve's, "
                        "which hold the run's config); give the out= folder of a served run, or a folder of them")
    folders = served
    rows = [validate_run(f, opts["sim_cost"], opts["execution"], suffix, opts["table"], opts["fetch_model"],
                         opts["link"], opts["link_discipline"], opts["host_contention"]) for f in folders]
    table = pd.DataFrame(rows)
    table.to_csv(root / f"validation{suffix}.csv", index=False)
    md = markdown_table(table)
    (root / f"validation{suffix}.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()

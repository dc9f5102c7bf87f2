"""The files a search writes into its output directory.

* ``search.csv``: one row per trial (rewritten after every round, so an interrupted search keeps its trials);
* ``needed.csv``: the GPUs each (GPU type, strategy, policy, batch limit) needs at each load (empty: none up
  to ``search.max_gpus``);
* ``best_placement.yaml``: the chosen fleet as a plain placement file;
* ``search.json``: the configuration, the price table used, the answer and the timings;
* ``report.html``: see ``moesim.search.report``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from moesim.io import write_csv, write_json, write_text
from moesim.search.driver import Answer, SearchResult
from moesim.search.prices import PriceTable

SEARCH_CSV = "search.csv"
NEEDED_CSV = "needed.csv"
PLACEMENT = "best_placement.yaml"
SEARCH_JSON = "search.json"
REPORT_HTML = "report.html"


def write_trials(out: Path, trials: pd.DataFrame) -> Path:
    """search.csv (atomically)."""
    return write_csv(out / SEARCH_CSV, trials)


def placement_yaml(answer: Answer, model: str, command: str) -> str:
    """The chosen fleet as a moesim.fleet placement file (``placement=file placement.path=...`` reads it):
    each GPU's variants (tenant ids) with the policy and batch limit it runs; the header says how to re-run it."""
    import yaml

    gpus = [{"gpu": int(p["gpu"]), "tenants": [int(t) for t in p["tenants"]], "policy": answer.arm.policy,
             "policy_params": {"max_batch": answer.arm.max_batch}} for p in answer.placement]
    doc = {"strategy": answer.arm.strategy, "gpus": gpus}
    a = answer.arm
    head = (f"# The cheapest fleet found by: {command}\n"
            f"# {answer.count} x {a.gpu} ({model}), placement {a.strategy}, policy {a.policy}, max_batch "
            f"{a.max_batch}: {answer.usd_per_hour:.2f}/hour. Re-run it:\n"
            f"#   python -m moesim.simulate hydra.mode=RUN hydra.run.dir=D model={model} gpu={a.gpu} "
            f"fleet.gpus={answer.count} placement=file placement.path=THIS_FILE policy={a.policy} "
            f"policy.max_batch={a.max_batch} (plus the workload keys of the search)\n")
    return head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=110)


def write_all(out: Path, result: SearchResult, prices: PriceTable, *, command: str, wall_s: float,
              backend: str, workers: int) -> dict[str, Path]:
    """Every output file; their paths by name."""
    paths = {"csv": write_trials(out, result.trials),
             "needed": write_csv(out / NEEDED_CSV, result.needed)}
    ans = result.answer
    if ans is not None:
        paths["placement"] = write_text(out / PLACEMENT, placement_yaml(ans, result.config["model"], command))
    summary: dict[str, Any] = {
        "command": command,
        "config": result.config,
        "prices": {"path": prices.path, "source": prices.source, "currency": prices.currency,
                   "per_gpu_hour": prices.prices},
        "answer": None if ans is None else {**dataclasses.asdict(ans), "label": ans.arm.label()},
        "trials": len(result.trials),
        "distinct_trials": int(result.trials.drop_duplicates(
            ["phase", "load", "gpu", "count", "strategy", "policy", "max_batch"]).shape[0])
        if len(result.trials) else 0,
        "rounds": result.rounds,
        "wall_s": wall_s,
        "backend": backend,
        "workers": workers,
    }
    paths["json"] = write_json(out / SEARCH_JSON, summary)
    return paths

"""The command line of ``python -m moesim.search``: ``search.*`` keys and the workload/model/SLO keys.

``search.<key>=<value>`` sets a field of ``SearchConfig`` (lists comma-separated). Every other ``key=value``
is a job override of ``python -m moesim.simulate`` (``model=``, ``workload=``, ``workload.<field>=``,
``cost=``, ``slo_ttft_s=``, ``slo_tpot_s=``), composed and validated by the same hydra config, so a wrong
key or value fails in one line before any trial runs.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from moesim.cli import convert
from moesim.errors import UserError, did_you_mean
from moesim.search.config import SearchConfig

PROG = "python -m moesim.search"
# job keys the search itself varies or owns: pointing to the search key instead
_OWNED = {"gpu": "search.gpus", "policy": "search.policies", "policy.max_batch": "search.max_batch",
          "seed": "search.seeds"}


@dataclass(frozen=True)
class Command:
    """A parsed command line: the search config and the trial keys the search does not vary."""

    search: SearchConfig
    base: dict[str, Any]
    overrides: list[str]


def _parse_search_value(key: str, text: str) -> Any:
    hints = typing.get_type_hints(SearchConfig)
    kind = hints[key]
    if typing.get_origin(kind) is tuple:
        (inner, *_) = typing.get_args(kind)
        parts = [p.strip() for p in text.split(",") if p.strip()]
        return tuple(convert(f"search.{key}", p, inner) for p in parts)
    return convert(f"search.{key}", text, kind)


def parse(argv: list[str]) -> Command:
    """``argv`` → a validated ``Command`` (UserError in one line)."""
    keys = [f.name for f in dataclasses.fields(SearchConfig)]
    values: dict[str, Any] = {}
    job: list[str] = []
    for arg in argv:
        key, sep, text = arg.partition("=")
        if not sep or not key:
            raise UserError(f"argument {arg!r}: expected key=value (see {PROG} --help)")
        if key.startswith("search."):
            name = key.removeprefix("search.")
            if name not in keys:
                valid = ["search." + k for k in keys]
                raise UserError(f"unknown key {key!r}{did_you_mean(key, valid)}; valid: {', '.join(valid)}")
            values[name] = _parse_search_value(name, text)
            continue
        bare = key.lstrip("+~")
        if bare in _OWNED or bare.startswith("hydra"):
            what = _OWNED.get(bare)
            raise UserError(f"{arg}: the search sets {bare} itself" + (f"; use {what}=..." if what else ""))
        if bare.startswith("policy."):
            raise UserError(f"{arg}: policy knobs other than max_batch (search.max_batch) are not searched; "
                            "set them in a single run of python -m moesim.simulate")
        job.append(arg)
    search = SearchConfig(**values)
    return Command(search=search, base=compose_base(job), overrides=job)


def compose_base(overrides: list[str]) -> dict[str, Any]:
    """Compose the simulate config with ``overrides`` (one job) and keep what a trial needs."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from moesim.config import CONF_DIR, CONFIG_NAME, _JobChecker, job_spec, register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base=None, job_name="search"):
        cfg = _JobChecker(CONFIG_NAME).job(list(overrides))
        spec = job_spec(cfg)
    cost_name = str(cfg.cost.get("name"))
    return {
        "model": spec.model.name,
        "workload": dataclasses.asdict(spec.workload),
        "cost": {"name": "best"} if cost_name == "best" else dataclasses.asdict(spec.cost),
        "slo_ttft_s": spec.slo_ttft_s,
        "slo_tpot_s": spec.slo_tpot_s,
    }


def help_text() -> str:
    """``--help``: usage, then every ``search.*`` key with its type, default, valid values and meaning
    (generated from ``SearchConfig`` by moesim.cli, as for the other tools)."""
    from moesim.cli import key_lines
    from moesim.search.backends import BACKENDS
    from moesim.search.fleet_eval import routers

    lines = key_lines(SearchConfig, prefix="search.", choices={"backend": BACKENDS, "router": routers()})
    return (
        f"usage: {PROG} [search.KEY=VALUE ...] [model=M] [workload=W] [workload.FIELD=V ...] [cost=C]\n"
        "                             [slo_ttft_s=S] [slo_tpot_s=S]\n\n"
        "The cheapest fleet (GPU type x count x placement strategy x policy x batch limit) whose simulated SLO "
        "attainment\nmeets a target on your workload, priced from a $/GPU-hour table (user guide: docs/search.md)."
        "\n\nWorkload, model, cost and SLO keys are those of python -m moesim.simulate (see its --help).\n"
        "Outputs in search.out: search.csv (every trial), needed.csv, best_placement.yaml, search.json, "
        "report.html.\n\nsearch keys:\n" + "\n".join(lines) + "\n\nexample:\n"
        f"  {PROG} workload.tenants=32 workload.rate=0.5 workload.popularity=zipf search.gpus=h200,a100-80gb "
        "search.out=out/s1\n"
    )

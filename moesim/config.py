"""Hydra structured configs, built from the component registries, and the validation of a command line.

Group ``X`` option ``Y`` is the config dataclass that registry ``X`` holds for ``Y`` (``policy=mig`` is
``MIGConfig``), so adding a component touches one file. The registries' dataclasses are frozen, which
OmegaConf would turn into read-only nodes; the ConfigStore therefore holds a mutable mirror of each (same
fields, types and defaults) and ``job_spec`` builds the real frozen dataclass from it, which runs its
``__post_init__`` validation.

``check_command_line`` composes every job of a command line before hydra starts, so that an unknown option,
a wrong type, an unknown key or a bad value fails in one line and no job runs.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from omegaconf import MISSING, DictConfig, OmegaConf

from moesim.errors import UserError
from moesim.registry import Registry
from moesim.resources import conf_dir
from moesim.slo import SLO_TPOT_S, SLO_TTFT_S, slo_classes
from moesim.specs import GPU_SPECS, MODEL_SPECS, GPUSpec, ModelSpec, get_gpu, get_model

CONF_DIR = conf_dir()
CONFIG_NAME = "config"

# The order in which the default cost model is chosen: the first one registered whose default config
# can be built (a calibrated profile when one ships, else the roofline model).
BEST_COST_ORDER = ("profile", "roofline", "constant")


@dataclass
class ModelConfig:
    """``model=<name>``: one of ``moesim.specs.MODEL_SPECS``, or ``model=path/to/config.json``.

    Attributes:
        name: shipped model name or config.json path.
        dtype: routed experts' weight format (``auto``: as the config says; bf16, fp8, mxfp4, int4).
    """

    name: str = MISSING
    dtype: str = "auto"


@dataclass
class GPUConfig:
    """``gpu=<name>``: one of ``moesim.specs.GPU_SPECS``, or ``gpu=path/to/gpu.yaml``."""

    name: str = MISSING


@dataclass
class SweepConfig:
    """What the default comparison sweep spans; hydra sweep syntax (comma-separated values).

    The primary config feeds these to ``hydra.sweeper.params``; a command-line sweep of the same key
    (``-m policy=reconfig,mig``) replaces them.

    Attributes:
        policies: policies compared.
        rates: per-tenant arrival rates (requests/s).
        seeds: workload seeds (repetitions).
        resume: continue a sweep in a non-empty ``hydra.sweep.dir``: finished jobs whose resolved config
            (hash) matches the job of the same number are kept and skipped, the others run.
        overwrite: delete a previous sweep's jobs and files in ``hydra.sweep.dir`` first.
    """

    policies: str = "reconfig,mig,naive,swap,dedicated"
    rates: str = "0.05,0.1"
    seeds: str = "0,1,2"
    resume: bool = False
    overwrite: bool = False


@dataclass
class ReportConfig:
    """What the sweep report shows.

    Attributes:
        cdf_rate: per-tenant rate (requests/s) of the turnaround CDF and the timeline; null: the swept
            rate nearest the middle of the range.
        timeline_window_s: length of the timeline window (seconds of simulated time).
        slo_target: share of requests that must meet the SLO for a rate to count as sustained.
        baselines: policies every other policy is compared against in the headline table.
    """

    cdf_rate: Optional[float] = None  # noqa: UP045 (OmegaConf needs typing.Optional)
    timeline_window_s: float = 30.0
    slo_target: float = 0.9
    baselines: list[str] = field(default_factory=lambda: ["mig", "reconfig"])


@dataclass
class SimulateConfig:
    """The job config of ``python -m moesim.simulate`` (SLO defaults: ``moesim.slo``, defined there once).

    Attributes:
        seed: workload seed.
        slo_ttft_s: TTFT target of the SLO (seconds).
        slo_tpot_s: time-per-output-token target of the SLO (seconds).
        slo_classes: tenants with their own targets: name → {ttft_s, tpot_s, tenants} (moesim.slo).
        progress: progress bars: true: the engine's in every job and the sweep's; null: the engine's in single
            runs, the sweep's in sweeps; false: none.
    """

    model: ModelConfig = MISSING
    gpu: GPUConfig = MISSING
    policy: Any = MISSING
    workload: Any = MISSING
    cost: Any = MISSING
    fleet: Any = MISSING
    placement: Any = MISSING
    router: Any = MISSING
    seed: int = 0
    slo_ttft_s: float = SLO_TTFT_S
    slo_tpot_s: float = SLO_TPOT_S
    slo_classes: dict[str, Any] = field(default_factory=dict)
    progress: Optional[bool] = None  # noqa: UP045
    sweep: SweepConfig = field(default_factory=SweepConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


def registries() -> dict[str, Registry[Any]]:
    """Config group → registry for the groups built from registries."""
    from moesim.cost import COST_MODELS
    from moesim.fleet import FLEETS, PLACEMENTS, ROUTERS
    from moesim.policies import POLICIES
    from moesim.workloads import WORKLOADS

    return {"policy": POLICIES, "workload": WORKLOADS, "cost": COST_MODELS, "fleet": FLEETS,
            "placement": PLACEMENTS, "router": ROUTERS}


# ---- mirrors of the registries' frozen dataclasses ----------------------------------------------------

_SCALARS = (int, float, str, bool)


def _omegaconf_type(tp: Any) -> Any:
    """The closest type OmegaConf validates; ``Any`` where it has none."""
    origin = typing.get_origin(tp)
    if tp in _SCALARS or (isinstance(tp, type) and issubclass(tp, enum.Enum)):
        return tp
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            inner = _omegaconf_type(args[0])
            return Any if inner is Any else Optional[inner]  # noqa: UP045
        return Any
    if origin in (list, tuple, typing.Sequence):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if len(set(args)) == 1 and args[0] in _SCALARS:
            return list[args[0]]
        return list[Any]
    if origin is dict:
        k, v = typing.get_args(tp)
        if k is str and v in _SCALARS:
            return dict[str, v]
        return dict[str, Any]
    return Any


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return MISSING
    if isinstance(value, (tuple, frozenset, set)):
        return list(value)
    return value


def mirror(cfg_cls: type) -> type:
    """A mutable dataclass with ``cfg_cls``'s fields, types OmegaConf can check, and its defaults."""
    hints = typing.get_type_hints(cfg_cls)
    fields = []
    for f in dataclasses.fields(cfg_cls):
        if not f.init:
            continue
        default = _default(f)
        if isinstance(default, (list, dict)):
            fields.append((f.name, _omegaconf_type(hints[f.name]), field(default_factory=lambda d=default: d)))
        else:
            fields.append((f.name, _omegaconf_type(hints[f.name]), field(default=default)))
    ns = {"__doc__": cfg_cls.__doc__, "__module__": __name__}
    return dataclasses.make_dataclass(f"{cfg_cls.__name__}Node", fields, namespace=ns)


def _to_params(node: DictConfig | dict[str, Any], cfg_cls: type) -> dict[str, Any]:
    """A composed node as keyword arguments of ``cfg_cls`` (lists back to tuples where it wants them)."""
    params = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    hints = typing.get_type_hints(cfg_cls)
    for k, v in list(params.items()):
        origin = typing.get_origin(hints.get(k))
        if isinstance(v, list) and origin in (tuple, frozenset):
            params[k] = origin(v)
    return params


@dataclass
class BestCostConfig:
    """``cost=best``: the most faithful cost model shipped for the job's GPU × model.

    A calibrated ``profile`` when one ships for that pair (``calibration/profiles/<gpu>__<model>.parquet``),
    else ``roofline`` with the measured efficiencies of another model's profile on that GPU (marked
    derived; ``moesim.cost.derive``), else the datasheet ``roofline``. To set parameters choose the model: ``cost=roofline``.
    """

    name: str = "best"


_best_cache: dict[tuple[str, str], Any] = {}


def best_cost(model: ModelSpec, gpu: GPUSpec) -> Any:
    """The config of the first cost model in ``BEST_COST_ORDER`` that builds for ``model`` × ``gpu``."""
    from moesim.cost import COST_MODELS

    key = (model.name, gpu.name)
    if key not in _best_cache:
        for name in BEST_COST_ORDER:
            if name not in COST_MODELS.names():
                continue
            cfg = COST_MODELS.config(name)
            if name == "roofline":  # a measured profile of another model on this GPU lends its efficiencies
                from moesim.cost.derive import derived_roofline_config

                cfg = derived_roofline_config(model, gpu) or cfg
            try:
                COST_MODELS.build(name, cfg, model=model, gpu=gpu)
            except UserError:
                continue
            _best_cache[key] = cfg
            break
        else:
            raise UserError(f"cost=best: no cost model builds for model={model.name} gpu={gpu.name}; "
                            f"valid: {', '.join(COST_MODELS.names())}")
    return _best_cache[key]


def register_configs() -> None:
    """Fill hydra's ConfigStore: the job schema, model/gpu options, and one option per registry entry.

    ``cost=best`` picks the best shipped cost model per job (see ``BestCostConfig``).
    """
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="simulate_schema", node=SimulateConfig)
    for name in MODEL_SPECS:
        cs.store(group="model", name=name, node=ModelConfig(name=name))
    for name in GPU_SPECS:
        cs.store(group="gpu", name=name, node=GPUConfig(name=name))
    # model=path / gpu=path become model=file model.name=<absolute path> (see rewrite_file_overrides)
    cs.store(group="model", name="file", node=ModelConfig())
    cs.store(group="gpu", name="file", node=GPUConfig())
    for group, reg in registries().items():
        for name in reg.names():
            cs.store(group=group, name=name, node=mirror(reg.get(name)[1]))
    cs.store(group="cost", name="best", node=BestCostConfig)


# ---- a composed config → the job it describes ---------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    """One simulation job, validated.

    Attributes:
        model, gpu: specs.
        policy, cost, workload: the registries' frozen config dataclasses.
        seed: workload seed.
        slo_ttft_s, slo_tpot_s: SLO targets (seconds).
        fleet, placement, router: the fleet's GPUs, the placement strategy and the live router (frozen
            configs of moesim.fleet's registries; None: one GPU of ``gpu`` holding every tenant).
    """

    model: ModelSpec
    gpu: GPUSpec
    policy: Any
    cost: Any
    workload: Any
    seed: int
    slo_ttft_s: float
    slo_tpot_s: float
    fleet: Any = None
    placement: Any = None
    router: Any = None
    slo_classes: tuple[Any, ...] = ()

    @property
    def rate(self) -> float:
        """Per-tenant arrival rate of the workload (requests/s)."""
        return float(getattr(self.workload, "rate", math.nan))

    def describe(self) -> dict[str, Any]:
        """Flat identification of the job for summary.json / summary.csv."""
        return {
            "policy": self.policy.name,
            "model": self.model.name,
            "gpu": self.gpu.name,
            "workload": self.workload.name,
            "rate": self.rate,
            "tenants": int(getattr(self.workload, "tenants", 0)),
            "seed": self.seed,
            "cost": self.cost.name,
            "slo_ttft_s": self.slo_ttft_s,
            "slo_tpot_s": self.slo_tpot_s,
        }

    def params(self) -> dict[str, Any]:
        """Every parameter of the policy, cost model and workload."""
        return {
            "policy": dataclasses.asdict(self.policy),
            "cost": dataclasses.asdict(self.cost),
            "workload": dataclasses.asdict(self.workload),
            **{k: dataclasses.asdict(v) for k, v in (("fleet", self.fleet), ("placement", self.placement),
                                                       ("router", self.router)) if v is not None},
        }

    def config_hash(self) -> str:
        """A hash of the job's full resolved config (what a resumed sweep matches finished jobs by)."""
        import hashlib
        import json

        blob = json.dumps({**self.describe(), "params": self.params()}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _positive(name: str, value: float, unit: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise UserError(f"{name}={value}: must be a finite number > 0 ({unit})")


def _check_context(workload: Any, model: ModelSpec) -> None:
    """Fixed token counts longer than the model's context would have every request rejected: refuse now."""
    limit = model.max_context_tokens
    prompt, output = getattr(workload, "prompt_tokens", None), getattr(workload, "output_tokens", None)
    if not limit or prompt is None or output is None or getattr(workload, "tokens_from", ""):
        return
    if prompt + output > limit:
        raise UserError(
            f"workload.prompt_tokens={prompt} + workload.output_tokens={output} = {prompt + output} tokens, "
            f"more than model={model.name}'s context of {limit} tokens; valid: a sum ≤ {limit}"
        )


def _check_known_keys(cfg: DictConfig) -> None:
    """Refuse keys the schema does not have (``+polcy=mig`` adds one; hydra would silently keep it)."""
    import difflib

    valid = [f.name for f in dataclasses.fields(SimulateConfig)]
    for key in cfg:
        key = str(key)
        if key == "hydra" or key in valid:
            continue
        near = difflib.get_close_matches(key, valid, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise UserError(f"unknown key {key!r}{hint}; valid keys: {', '.join(valid)}")
    for group, keys in (("model", ("name", "dtype")), ("gpu", ("name",))):
        node = cfg.get(group)
        if isinstance(node, DictConfig):
            extra = [str(k) for k in node if k not in keys]
            if extra:
                raise UserError(f"unknown key {group}.{extra[0]!r}; {group} has only "
                                f"{' and '.join(keys)} ({group}=<name or file>)")


def job_spec(cfg: DictConfig) -> JobSpec:
    """Validate a composed job config and build its frozen component configs (UserError on bad values)."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        return _job_spec(cfg)
    except OmegaConfBaseException as exc:
        raise UserError(_value_error_line(exc)) from None


def _value_error_line(exc: BaseException) -> str:
    """A missing value (``~policy``) or an unresolvable ``${...}`` as one line naming the key."""
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    key = str(getattr(exc, "full_key", "") or "")
    if isinstance(exc, MissingMandatoryValue):
        group = key.split(".")[0]
        regs = registries()
        names = (regs[group].names() + (["best"] if group == "cost" else [])) if group in regs else (
            list(MODEL_SPECS) if group == "model" else list(GPU_SPECS) if group == "gpu" else [])
        valid = f"; valid: {', '.join(sorted(names))}" if names else ""
        return f"{key}: no value (was it removed with ~{group}?); choose one, e.g. {group}=<name>{valid}"
    if isinstance(exc, InterpolationResolutionError):
        return f"{key}: cannot resolve its ${{...}} reference: {_first_line(getattr(exc, 'msg', '') or exc)}"
    return f"{key}: {_first_line(getattr(exc, 'msg', '') or exc)}"


def _job_spec(cfg: DictConfig) -> JobSpec:
    _check_known_keys(cfg)
    regs = registries()
    built: dict[str, Any] = {}
    model = get_model(cfg.model.name, str(cfg.model.get("dtype", "auto")))
    gpu = get_gpu(cfg.gpu.name)
    for group, reg in regs.items():
        node = cfg[group]
        name = node.get("name")
        if group == "cost" and name == "best":
            built[group] = best_cost(model, gpu)
            continue
        _, cfg_cls = reg.get(name)
        built[group] = reg.config(name, _to_params(node, cfg_cls))
    if cfg.seed < 0:
        raise UserError(f"seed={cfg.seed}: must be ≥ 0")
    _positive("slo_ttft_s", cfg.slo_ttft_s, "seconds")
    _positive("slo_tpot_s", cfg.slo_tpot_s, "seconds")
    _check_context(built["workload"], model)
    rate = getattr(built["workload"], "rate", None)
    if rate is not None and not (math.isfinite(rate) and rate >= 0):
        raise UserError(f"workload.rate={rate}: must be ≥ 0 requests/s per tenant")
    return JobSpec(
        model=model,
        gpu=gpu,
        policy=built["policy"],
        cost=built["cost"],
        workload=built["workload"],
        seed=int(cfg.seed),
        slo_ttft_s=float(cfg.slo_ttft_s),
        slo_tpot_s=float(cfg.slo_tpot_s),
        fleet=built["fleet"],
        placement=built["placement"],
        router=built["router"],
        slo_classes=slo_classes(OmegaConf.to_container(cfg.slo_classes, resolve=True)
                                if cfg.get("slo_classes") else None,
                                getattr(built["workload"], "tenants", None)),
    )


# ---- the command line: every job composed and validated before hydra starts ---------------------------


def sweep_jobs(params: dict[str, str] | None, overrides: list[str]) -> list[list[str]]:
    """The override list of every job of a sweep, as hydra's basic sweeper expands it (public API only).

    ``params`` are ``hydra.sweeper.params``; command-line ``overrides`` of the same key replace them. Each
    key keeps its first position; discrete sweeps (``a,b``, ``choice``, ``range``) expand, in order, into the
    cartesian product; other sweep types are refused in one line.
    """
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [f"{k}={v}" for k, v in (params or {}).items()] + list(overrides)
    per_key: dict[str, list[str]] = {}
    for o in OverridesParser.create().parse_overrides(args):
        key = o.get_key_element()
        if not o.is_sweep_override():
            per_key[key] = [f"{key}={o.get_value_element_as_str()}"]
        elif o.is_discrete_sweep():
            try:
                values = list(o.sweep_string_iterator())
            except Exception as exc:  # a sweep nested in a sweep (a,choice(b)): an omegaconf traceback
                raise UserError(f"{o.input_line}: cannot expand this sweep ({_first_line(str(exc))}); write it as "
                                f"{key}=a,b,c or {key}='choice(a,b,c)'") from None
            dup = next((v for i, v in enumerate(values) if v in values[:i]), None)
            if dup is not None:  # seed=1,1 ran every job twice and counted each twice in every mean over seeds
                raise UserError(f"{key}={','.join(values)}: {dup} is listed twice; list each value once (a sweep "
                                "would run the same jobs twice and count them twice in every mean)")
            per_key[key] = [f"{key}={v}" for v in values]
        else:
            raise UserError(f"{o.input_line}: only discrete sweeps (a,b or choice/range) can be expanded")
    return [list(job) for job in itertools.product(*per_key.values())]


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")


def _keys_of(cfg: DictConfig, parent: str) -> str:
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if isinstance(node, DictConfig):
        return f"; valid keys{' of ' + parent if parent else ''}: {', '.join(map(str, node.keys()))}"
    return ""


def _omegaconf_line(exc: BaseException, override: str, cfg: DictConfig | None) -> str:
    """An OmegaConf error raised by ``override`` as one line."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(exc, (ConfigAttributeError, ConfigKeyError)):
        key = str(getattr(exc, "full_key", "") or override.split("=", 1)[0].lstrip("+~"))
        parent, _, leaf = key.rpartition(".")
        hint = ""
        node = OmegaConf.select(cfg, parent) if cfg is not None and parent else cfg
        if isinstance(node, DictConfig):  # a typo (polcy=mig) gets the nearest key, as +polcy=mig does
            import difflib

            near = difflib.get_close_matches(leaf, [str(k) for k in node], n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
        return f"{override}: unknown key {leaf!r}{hint}{_keys_of(cfg, parent) if cfg is not None else ''}"
    line = _first_line(getattr(exc, "msg", "") or exc)
    for kind, valid in (("Integer", "a whole number, e.g. 512"), ("Float", "a number, e.g. 0.5"),
                        ("Boolean", "true or false")):
        if f"could not be converted to {kind}" in line:  # OmegaConf names the type; say what is valid
            line = f"{line}; valid: {valid}"
    if "is not a valid bool" in line:  # progress=maybe: OmegaConf's own words for a bool
        line = f"{line}; valid: true or false"
    if "is not a ListConfig, list or tuple" in line:  # report.baselines=mig: a list is written in brackets
        key, _, value = override.partition("=")
        line = f"{line.rstrip('.')}; valid: a list in brackets, e.g. {key}=[{value}]"
    return f"{override}: {line}"


def _compose_error_line(exc: BaseException, overrides: list[str], compose: Any) -> str:
    """A hydra composition error as one line naming the override and what would be valid."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, option = str(exc.missing_cfg_file).rpartition("/")
        if group and exc.options:
            files = {"model": " (or a config.json path)", "gpu": " (or a GPU .yaml path)"}.get(group, "")
            names = sorted(o for o in exc.options if not (files and o == "file"))
            from moesim.errors import did_you_mean

            return f"unknown {group} {option!r}{did_you_mean(option, names)}; valid: {', '.join(names)}{files}"
        if group == "hydra/sweeper" and option == "moesim":
            return ("hydra/sweeper=moesim not found: it is the plugin in hydra_plugins/moesim_sweeper; "
                    "reinstall with pip install -e .")
        return f"unknown {group or 'config'} {option!r}; there are no {group or 'such'} configs"
    msg = _first_line(str(exc))
    cause = exc.__cause__
    if isinstance(cause, OmegaConfBaseException):
        key = str(getattr(cause, "full_key", "") or "")
        # the override of that key, or of a key below it (workload.columns.x=... when workload has no columns)
        bad = next((o for o in overrides if key and (o.lstrip("+~").split("=", 1)[0] == key
                                                     or o.lstrip("+~").split("=", 1)[0].startswith(key + "."))),
                   None)
        cfg = None
        if bad is not None:  # compose without the bad override to list the keys that exist there
            try:
                cfg = compose([o for o in overrides if o != bad])
            except Exception:
                cfg = None
        return _omegaconf_line(cause, bad or msg.removeprefix("Error merging override "), cfg)
    return msg


def _check_seed(job: list[str]) -> None:
    for o in job:
        if o.startswith("seed="):
            value = o.split("=", 1)[1]
            if not value.lstrip("-").isdigit() or int(value) < 0:
                raise UserError(f"{o}: the seed must be an integer ≥ 0")


class _JobChecker:
    """Composes jobs the way hydra does, cheaply: one composition per distinct choice of config-group
    options (and other structural overrides), then each job's value overrides applied to a copy."""

    def __init__(self, config_name: str) -> None:
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.name = config_name
        self.parser = OverridesParser.create()
        self.groups = set(GlobalHydra.instance().config_loader().list_groups(""))
        self._cache: dict[tuple[str, ...], DictConfig] = {}

    def compose(self, overrides: list[str], hydra_cfg: bool = False) -> DictConfig:
        """hydra's compose; a failure as a UserError of one line."""
        from hydra import compose
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        try:
            return compose(self.name, overrides=overrides, return_hydra_config=hydra_cfg)
        except (HydraException, OmegaConfBaseException) as exc:
            raise UserError(_compose_error_line(
                exc, overrides, lambda ov: compose(self.name, overrides=ov))) from None

    def _structural(self, o: Any) -> bool:
        key = o.key_or_group
        return (o.is_add() or o.is_delete() or o.is_force_add() or o.package is not None
                or (key.split("/")[0] in self.groups and "." not in key) or key.startswith("hydra"))

    def job(self, overrides: list[str]) -> DictConfig:
        """The composed config of one job (UserError on a bad override)."""
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        try:
            parsed = self.parser.parse_overrides(overrides)
        except HydraException as exc:  # the search's job overrides: a traceback
            raise UserError(_parse_error_line(exc, list(overrides))) from None
        structural = tuple(o.input_line for o in parsed if self._structural(o))
        if structural not in self._cache:
            self._cache[structural] = self.compose(list(structural))
        cfg = self._cache[structural].copy()
        for o in parsed:
            if self._structural(o):
                continue
            try:
                OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
            except OmegaConfBaseException as exc:
                raise UserError(_omegaconf_line(exc, o.input_line, cfg)) from None
        return cfg


def rewrite_file_overrides(argv: list[str]) -> list[str]:
    """``model=path/to/config.json`` → ``model=file model.name=/abs/path`` (likewise ``gpu=x.yaml``).

    Hydra reads ``model=X`` as a config-group option; a file is not one, so the option ``file`` carries its
    path. A value is a file when it ends in .json/.yaml/.yml or contains a path separator.
    """
    from moesim.specs.models import is_path

    out: list[str] = []
    for a in argv:
        key, sep, val = a.partition("=")
        if sep and key in ("model", "gpu", "+model", "+gpu") and is_path(val) and "," not in val:
            out += [f"{key.lstrip('+')}=file", f"{key.lstrip('+')}.name={Path(val).expanduser().resolve()}"]
        else:
            out.append(a)
    return out


@dataclass(frozen=True)
class CommandLine:
    """What a validated ``moesim.simulate`` command line will do.

    Attributes:
        jobs: each job's overrides, in hydra's order (job ``i`` runs in subdir ``i``).
        hashes: each job's ``JobSpec.config_hash``.
        multirun: a sweep (else one job).
        out_dir: the resolved ``hydra.sweep.dir`` (sweep) or ``hydra.run.dir``; empty if not resolvable.
        resume, overwrite: ``sweep.resume`` / ``sweep.overwrite``.
        subdir: the unresolved ``hydra.sweep.subdir``.
    """

    jobs: list[list[str]]
    hashes: list[str]
    multirun: bool
    out_dir: str
    resume: bool = False
    overwrite: bool = False
    subdir: str = "${hydra.job.num}"
    cost_lines: tuple[str, ...] = ()


def check_command_line(argv: list[str]) -> int:
    """Compose and validate every job ``argv`` describes; the number of jobs (UserError on a bad one).

    Help, ``--cfg`` and other inspection flags are left to hydra (0 is returned).
    """
    plan = plan_command_line(argv)
    return 0 if plan is None else len(plan.jobs)


def _check_hydra_settings(primary: DictConfig, multirun: bool) -> str:
    """Refuse launcher/output settings hydra would take silently; the resolved output dir."""
    launcher = primary.hydra.get("launcher")
    if launcher is not None and "joblib" in str(launcher.get("_target_", "")):
        n = launcher.get("n_jobs")
        if not isinstance(n, int) or isinstance(n, bool) or n == 0:
            raise UserError(f"hydra.launcher.n_jobs={n}: must be a number of processes ≥ 1, or negative "
                            "(-1: all cores, -2: all but one)")
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    raw = OmegaConf.select(primary, key, throw_on_resolution_failure=False)
    try:
        value = OmegaConf.select(primary, key)
    except Exception:  # e.g. a ${hydra.job...} only hydra can resolve
        value = raw
    if value is None or not str(value).strip():
        raise UserError(f"{key}={'' if value is None else value}: empty; give an output directory "
                        f"(e.g. {key}=outputs/run1)")
    return str(value)


def _parse_error_line(exc: BaseException, task: list[str]) -> str:
    """An override hydra's grammar refuses, named with the quoting that reads it: non-ASCII text (a path), and
    characters such as ``~ ( ) [ ] { } = # ' & ;`` are valid only quoted there (``workload.path=~/t.csv`` was
    "LexerNoViableAltException: workload.path=~/t.csv", ``workload.path=a(1).csv`` "mismatched input '.'
    expecting <EOF>", naming no argument)."""
    for o in task:
        key, sep, value = o.partition("=")
        if sep and not value.startswith(("'", '"')) and any(ord(c) > 127 for c in value):
            return (f"{o}: hydra's override syntax takes non-ASCII characters only in quotes; write "
                    f"{key}='{value}' (in a shell: \"{key}='{value}'\")")
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()

    def problem(line: str) -> str:
        try:
            parser.parse_override(line)
        except Exception as e:
            return _first_line(str(e)) or type(e).__name__
        return ""

    def readable(line: str) -> bool:
        return not problem(line)

    for o in task:
        key, sep, value = o.partition("=")
        if not sep or readable(o):
            continue
        if value.startswith(("'", '"', "[", "{")):  # a quote, list or mapping left open: hydra's words, named
            return f"{o}: {problem(o)}"
        if value.startswith("~"):  # neither the shell (not at a word's start) nor moesim expands it
            full = os.path.expanduser(value)
            if full != value and readable(f"{key}={full}"):
                return f"{o}: ~ is not expanded here; write the full path: {key}={full}"
        q = '"' if "'" in value else "'"
        quoted = f"{key}={q}{value}{q}"
        shell = '"' + quoted.replace('"', '\\"') + '"' if q == '"' else f'"{quoted}"'
        return (f"{o}: hydra's override syntax cannot read this value unquoted (characters such as ~ ( ) [ ] {{ }} "
                f"= # ' & ; need quotes); write {quoted} (in a shell: {shell})")
    return _first_line(str(exc))


def plan_command_line(argv: list[str]) -> CommandLine | None:
    """Compose and validate every job ``argv`` describes (UserError on a bad one); None for help flags."""
    from hydra import initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.errors import HydraException

    parser = get_args_parser()

    flags = sorted(o for a in parser._actions for o in a.option_strings)

    def _error(message: str) -> None:
        hint = ""
        if "unrecognized" in message:
            from moesim.errors import did_you_mean

            words = message.split(":", 1)[-1].split()
            unknown = [w for w in words if w.startswith("-") and w.split("=")[0] not in flags]
            # a misspelt flag (--multi-run) is not a misplaced one (policy=mig -m)
            hint = (f"{did_you_mean(unknown[0].split('=')[0], flags)}; valid flags: "
                    f"{', '.join(f for f in flags if f.startswith('--'))} (and their short forms)"
                    if unknown else "; flags such as -m/--multirun go before the overrides")
        raise UserError(f"{message}{hint}")

    parser.error = _error  # type: ignore[method-assign]  # one line instead of argparse's usage text
    args = parser.parse_args(argv)
    if (args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
            or args.experimental_rerun or args.config_path or args.config_dir):
        return None
    task = list(args.overrides)
    with initialize_config_dir(str(CONF_DIR), version_base=None, job_name="simulate"):
        checker = _JobChecker(args.config_name or CONFIG_NAME)
        try:
            parsed = checker.parser.parse_overrides(task)
            _check_sweep_lists(parsed)
            fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
            swept = [o.input_line for o in parsed if o.is_sweep_override()]
            try:  # as hydra does for a multirun: the primary config is composed without the sweeps
                primary = checker.compose(fixed, hydra_cfg=True)
                _check_list_sweeps(parsed, primary)
            except UserError as exc:
                if not swept:
                    raise
                # the hint only where the swept values are what the override needs (progress=maybe is wrong
                # whatever is swept, and was told to "sweep that key as well")
                firsts = [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}"
                          for o in parsed if o.is_sweep_override()]
                try:
                    checker.compose(fixed + firsts, hydra_cfg=True)
                except Exception:
                    raise exc from None
                raise UserError(f"{exc} (in a sweep, the config without the swept values must take every "
                                "other override; sweep that key as well, e.g. key=choice(value))") from None
            from moesim.report.options import options_from_node

            report_opts = options_from_node(primary.get("report"))  # the report's options, before any job runs
            multirun = args.multirun or str(primary.hydra.mode) == "RunMode.MULTIRUN"
            if multirun:
                params = OmegaConf.to_container(primary.hydra.sweeper.params, resolve=True)
                jobs = sweep_jobs(params, task)  # type: ignore[arg-type]
                _note_one_seed(parsed)
            else:
                if swept:
                    raise UserError(f"{swept[0]}: a sweep in a single run (hydra.mode=RUN); drop "
                                    "hydra.mode=RUN or put -m first to run one job per value")
                jobs = [task]
        except HydraException as exc:  # an override hydra cannot parse
            raise UserError(_parse_error_line(exc, task)) from None
        hashes: list[str] = []
        costs: dict[tuple[str, ...], str] = {}
        workloads: set[str] = set()
        rates: dict[str, float] = {}  # workload → the per-tenant rate its jobs record
        for job in jobs:
            _check_seed(job)
            try:
                cfg = checker.job(job)
                spec = job_spec(cfg)
                hashes.append(spec.config_hash())
                wkey = repr(spec.workload) + spec.model.name  # (the model: a trace longer than its context)
                if wkey not in workloads:  # a bad trace file: one line, not a failed job each
                    workloads.add(wkey)
                    rates[wkey] = _check_workload(spec)
                if repr((spec.fleet, spec.placement, spec.policy)) not in workloads:  # fleet/placement files
                    workloads.add(repr((spec.fleet, spec.placement, spec.policy)))
                    _check_fleet_files(spec)
                    _check_plan(spec)
                    _check_dedicated_fleet(spec)
                for gpu in _fleet_gpus(spec):  # fleet.gpu= or a fleet file: the GPUs that will run
                    key = (spec.model.name, gpu.name, repr(spec.cost), str(cfg.cost.get("name")))
                    if key not in costs:
                        costs[key] = _cost_line(spec, fallback=key[3] == "best", gpu=gpu)
            except UserError as exc:
                shown = " ".join(o for o in job if not o.startswith(("hydra.", "hydra/")))
                where = f" (job: {shown})" if len(jobs) > 1 else ""
                raise UserError(f"{exc}{where}") from None
        first: dict[str, list[str]] = {}
        for job, h in zip(jobs, hashes, strict=True):  # 0.1,0.10 or a value equal to the default, swept twice
            if h in first:
                shown = [" ".join(o for o in j if not o.startswith(("hydra.", "hydra/"))) for j in (first[h], job)]
                raise UserError(f"two jobs of the sweep are the same configuration ({shown[0]} and {shown[1]}); "
                                "list each value once (it would run twice and count twice in every mean)")
            first[h] = job
        if multirun:
            _check_report_rates(report_opts, sorted(set(rates.values())))
        out_dir = _check_hydra_settings(primary, multirun)
        sweep = primary.get("sweep") or {}
        return CommandLine(jobs=jobs, hashes=hashes, multirun=bool(multirun), out_dir=out_dir,
                           resume=bool(sweep.get("resume", False)), overwrite=bool(sweep.get("overwrite", False)),
                           subdir=str(OmegaConf.to_container(primary.hydra.sweep, resolve=False)["subdir"]),
                           cost_lines=tuple(dict.fromkeys(costs.values())))


#: the default comparison's lists and the keys they sweep (conf/config.yaml's hydra.sweeper.params)
SWEEP_LISTS = {"sweep.policies": "policy", "sweep.rates": "workload.rate", "sweep.seeds": "seed"}


def _check_sweep_lists(parsed: list[Any]) -> None:
    """``sweep.policies=mig,multiplex`` unquoted is a hydra sweep of the key ``sweep.policies`` itself: every
    value ran the whole default comparison (14 jobs, the same 7 twice, for two policies asked)."""
    for o in parsed:
        key = o.get_key_element()
        if key in SWEEP_LISTS and o.is_sweep_override():
            try:
                values = ",".join(o.sweep_string_iterator())
            except Exception:
                values = o.input_line.split("=", 1)[-1]
            raise UserError(f"{o.input_line}: hydra reads a comma list here as a sweep of {key} itself (each value "
                            f"would run the whole default comparison); write {SWEEP_LISTS[key]}={values} (it replaces "
                            f"the swept key), or quote the list as one value: '{key}=\"{values}\"'")


class SweepSeedsWarning(UserWarning):
    """``sweep.seeds=3``: one repetition (seed 3), where three were probably meant."""


def _note_one_seed(parsed: list[Any]) -> None:
    """``sweep.seeds=N`` names the seeds, not their count: ``sweep.seeds=3`` ran one repetition (seed 3) and
    the report's min-max bars over seeds collapsed, with nothing said."""
    import warnings

    for o in parsed:
        if o.get_key_element() != "sweep.seeds" or o.is_sweep_override():
            continue
        value = str(o.get_value_element_as_str()).strip().strip("'\"")
        if value.isdigit() and int(value) >= 2:
            n = int(value)
            warnings.warn(f"sweep.seeds={n} runs seed {n} alone (one repetition): the key lists seeds, not their "
                          f"count; {n} repetitions are sweep.seeds={','.join(map(str, range(n)))}",
                          SweepSeedsWarning, stacklevel=2)


def _check_list_sweeps(parsed: list[Any], primary: DictConfig) -> None:
    """``workload.weights=4,1`` (the help calls it a comma list): hydra reads the comma as a sweep of the key,
    "a sweep in a single run" in a run and "int is not a ListConfig" per job in a multirun. A key that holds a
    list takes its values in brackets."""
    from omegaconf import ListConfig

    for o in parsed:
        if not o.is_sweep_override() or o.is_hydra_override():
            continue
        key = o.get_key_element()
        try:
            if any(isinstance(v, list | tuple) for v in o.sweep_iterator()):  # a sweep of lists: [1,2],[2,1]
                continue
        except Exception:
            pass
        if isinstance(OmegaConf.select(primary, key, default=None), ListConfig):
            try:
                values = ",".join(o.sweep_string_iterator())
            except Exception:
                values = o.input_line.split("=", 1)[-1]
            raise UserError(f"{o.input_line}: {key} holds a list, and hydra reads a,b unquoted as a sweep; write "
                            f"{key}=[{values}] (to sweep lists: {key}=[..],[..] with -m)")


def _check_report_rates(opts: Any, rates: list[float]) -> None:
    """``report.cdf_rate`` and ``report.compare_rates`` must name rates the sweep runs: checked here, before any
    job (a wrong one was reported after the whole sweep had run, and the report fell back to the default)."""
    if not rates:
        return
    valid = ", ".join(f"{r:g}" for r in rates)
    for name, want in (("cdf_rate", () if opts.cdf_rate is None else (opts.cdf_rate,)),
                       ("compare_rates", opts.compare_rates)):
        missing = [w for w in want if not any(math.isclose(w, r, rel_tol=1e-6) for r in rates)]
        if missing:
            raise UserError(f"report.{name}={','.join(f'{w:g}' for w in missing)}: not a rate this sweep runs; "
                            f"valid: {valid} (requests/s per tenant, the swept workload.rate)")


def _check_workload(spec: JobSpec) -> float:
    """Build the job's workload (reads and validates a trace file, checks its scaling and cut), so a bad
    file or a cut that keeps nothing stops the command before hydra creates any folder; a sweep's jobs
    would otherwise each fail with the same message (126 failed jobs and an empty report). Returns the
    per-tenant rate the job records (requests/s)."""
    from moesim.workloads import WORKLOADS

    wl = WORKLOADS.build(spec.workload.name, spec.workload)
    trace, limit = getattr(wl, "trace", None), spec.model.max_context_tokens
    if trace is not None and limit and len(trace.prompt_tokens):
        # a trace none of whose requests fits the model's context: every job failed with "every one of the N
        # requests is rejected … use a larger GPU", which no GPU fixes (36 failed jobs in a sweep)
        n = len(getattr(wl, "_arrival_s", trace.prompt_tokens))
        ctx = trace.prompt_tokens[:n].astype("int64") + trace.output_tokens[:n]
        if int(ctx.min()) > limit:
            raise UserError(f"trace file '{trace.source}': every one of its {n:,} replayed requests is longer than "
                            f"model={spec.model.name}'s context of {limit:,} tokens (prompt + output; the shortest "
                            f"is {int(ctx.min()):,}); valid: requests of at most {limit:,} tokens, or a model with a "
                            "longer context")
    return float(wl.rate_per_tenant)


def _check_fleet_files(spec: JobSpec) -> None:
    """Read a fleet file and a placement file and check them against each other (GPU indices, each GPU's
    policy), so a bad file stops the command before hydra creates any folder, like a bad trace file."""
    fleet_file = spec.fleet is not None and spec.fleet.name == "file"
    placement_file = spec.placement is not None and spec.placement.name == "file"
    similarity = str(getattr(spec.placement, "similarity", "") or "") if spec.placement is not None else ""
    if similarity:  # pack's similarity matrix: a bad one left a run folder holding only simulate.log
        from moesim.fleet.strategies.pack import load_similarity

        load_similarity(similarity, int(spec.workload.tenants))
    if not (fleet_file or placement_file):
        return
    from moesim.fleet import FLEETS
    from moesim.fleet.placement import load_placement
    from moesim.fleet.run import gpu_policy

    fleet_cfg = spec.fleet if spec.fleet is not None else FLEETS.config("uniform")
    fleet = FLEETS.build(fleet_cfg.name, fleet_cfg).spec(spec.gpu)
    if placement_file:
        if not spec.placement.path:  # said only after the run folder (its simulate.log) was made
            raise UserError("placement=file needs placement.path=<a placement YAML/JSON file>")
        placement = load_placement(spec.placement.path)
        placement.check(fleet.n_gpus)
        for p in placement.gpus:
            pol = gpu_policy(placement, p, spec.policy.name, spec.policy)
            path = str(getattr(pol.cfg, "plan", "") or "")
            if path:  # each GPU's plan against the tenants listed for it
                from moesim.consolidation.plan import load_plan
                from moesim.policies.reconfig import check_plan_tenants

                try:
                    check_plan_tenants(load_plan(path), path, len(p.tenants), f" (GPU {p.gpu})")
                except UserError as e:
                    raise UserError(f"placement file {placement.source}: {e}") from None


def _check_dedicated_fleet(spec: JobSpec) -> None:
    """``policy=dedicated`` is already a GPU per tenant: a fleet whose GPUs each hold every tenant (the default
    placement=everywhere) simulated N × tenants whole GPUs while summary.json said N. (Other placements are
    checked once placed: ``moesim.fleet.run.dedicated_fleet_error``.)"""
    if spec.policy.name != "dedicated" or spec.fleet is None or int(spec.workload.tenants) < 2:
        return
    strategy = spec.placement.name if spec.placement is not None else "everywhere"
    if strategy != "everywhere":
        return
    from moesim.fleet import FLEETS

    n = FLEETS.build(spec.fleet.name, spec.fleet).spec(spec.gpu).n_gpus
    if n > 1:
        from moesim.fleet.run import dedicated_fleet_message

        raise UserError(dedicated_fleet_message(n, 0, int(spec.workload.tenants)))


def _check_plan(spec: JobSpec) -> None:
    """A consolidation plan (``policy.plan=F``) against the tenants it serves, before any folder: its variant i
    is tenant i, so a 4-variant plan with 2 tenants is refused (it was taken silently), and a job-level plan on
    a fleet whose GPUs hold different tenants is pointed at per-GPU plans in a placement file."""
    path = str(getattr(spec.policy, "plan", "") or "")
    if not path:
        return
    from moesim.consolidation.plan import load_plan
    from moesim.fleet import FLEETS
    from moesim.policies.reconfig import check_plan_tenants

    plan = load_plan(path)
    if plan.model != spec.model.name:  # as the policy's layout says it, but before hydra makes a folder
        raise UserError(f"{path}: plan is for model {plan.model!r}, the simulation uses {spec.model.name!r}")
    fleet_cfg = spec.fleet if spec.fleet is not None else FLEETS.config("uniform")
    n_gpus = FLEETS.build(fleet_cfg.name, fleet_cfg).spec(spec.gpu).n_gpus
    strategy = spec.placement.name if spec.placement is not None else "everywhere"
    if strategy == "file" and getattr(spec.placement, "path", ""):
        return  # each GPU's plan was checked against its own tenants (_check_fleet_files)
    if n_gpus > 1 and strategy != "everywhere":
        raise UserError(f"policy.plan={path} with placement={strategy} on {n_gpus} GPUs: a plan's variant i is "
                        "the i-th tenant of the GPU it runs on, and these GPUs hold different tenants; give each "
                        "GPU its own plan in a placement file (placement=file placement.path=F, an entry's "
                        "policy_params: {plan: P}) or use placement=everywhere")
    check_plan_tenants(plan, path, int(spec.workload.tenants))


def _fleet_gpus(spec: JobSpec) -> list[Any]:
    """The distinct GPU specs of the job's fleet (the job's ``gpu`` unless ``fleet.gpu`` or a fleet file
    names others), in fleet order."""
    if spec.fleet is None or (spec.fleet.name == "uniform" and not getattr(spec.fleet, "gpu", "")):
        return [spec.gpu]
    from moesim.fleet import FLEETS

    gpus = FLEETS.build(spec.fleet.name, spec.fleet).spec(spec.gpu).gpus()
    return list({g.spec.name: g.spec for g in gpus}.values())


def _cost_line(spec: JobSpec, *, fallback: bool, gpu: Any = None) -> str:
    from moesim.cost import COST_MODELS
    from moesim.job import cost_line

    gpu = spec.gpu if gpu is None else gpu
    cost = COST_MODELS.build(spec.cost.name, spec.cost, model=spec.model, gpu=gpu)
    return cost_line(cost, spec.model.name, gpu.name, fallback=fallback)


# ---- --help, generated from the dataclasses ----------------------------------------------------------


def _default_options() -> dict[str, str]:
    """Group → default option, from the primary config's defaults list."""
    out: dict[str, str] = {}
    for entry in OmegaConf.load(CONF_DIR / f"{CONFIG_NAME}.yaml").get("defaults", []):
        if isinstance(entry, DictConfig):
            for k, v in entry.items():
                if not str(k).startswith("override") and v is not None:
                    out[str(k)] = str(v)
    return out


def _composed_for_help(argv: list[str]) -> dict[str, Any]:
    """The primary config with the command line's plain overrides (values shown as defaults); {} if it
    does not compose."""
    from hydra import compose, initialize_config_dir

    overrides = [a for a in argv if "=" in a and not a.startswith("-") and "," not in a]
    try:
        with initialize_config_dir(str(CONF_DIR), version_base=None, job_name="simulate"):
            cfg = compose(CONFIG_NAME, overrides=overrides)
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]
    except Exception:
        return {}


def simulate_help(argv: list[str]) -> str:
    """``python -m moesim.simulate --help``: every key with units, defaults and valid values, generated from
    ``SimulateConfig`` and the dataclass of each chosen option (``policy=mig --help`` shows mig's keys)."""
    from moesim.cli import key_lines

    chosen = _default_options()
    for a in argv:
        k, sep, v = a.partition("=")
        if sep and k in ("model", "gpu", "policy", "workload", "cost", "fleet", "placement", "router") \
                and "," not in v:
            chosen[k] = v
    composed = _composed_for_help(argv)
    regs = registries()
    def presets(group: str) -> list[str]:  # option files under conf/ (cost=paper_a100, experiment=paper_a100)
        d = Path(CONF_DIR) / group
        return sorted(f.stem for f in d.glob("*.yaml")) if d.is_dir() else []

    options = {"model": sorted(MODEL_SPECS), "gpu": sorted(GPU_SPECS),
               **{g: sorted({*r.names(), *presets(g)}) + (["best"] if g == "cost" else [])
                  for g, r in regs.items()}}
    if presets("experiment"):
        options["experiment"] = presets("experiment")
        chosen.setdefault("experiment", "none")
    out = ["usage: python -m moesim.simulate [-m] [key=value ...]   (hydra overrides)", "",
           "Simulate serving several fine-tuned MoE LLMs on one GPU or a fleet under sharing policies.",
           "Without arguments: the default policy comparison sweep (sweep.*) and its report.html. One job:",
           "  python -m moesim.simulate hydra.mode=RUN hydra.run.dir=D policy=mig workload.rate=0.05 seed=1",
           "A sweep:  python -m moesim.simulate -m hydra.sweep.dir=D policy=reconfig,mig workload.rate=0.02,0.05",
           "", "choices (group=option):"]
    for g, names in options.items():
        out.append(f"  {g}={chosen.get(g, '?')}  (one of: {', '.join(names)})")
    out += ["", "keys:"]
    out += key_lines(SimulateConfig, skip=("model", "gpu", "policy", "workload", "cost", "sweep", "report",
                                           "fleet", "placement", "router"), values=composed)
    for g in ("policy", "workload", "cost", "fleet", "placement", "router"):
        name = chosen.get(g, "")
        if name == "best":
            out += ["", f"keys of cost=best: none (it picks {' > '.join(BEST_COST_ORDER)}; choose cost=profile "
                        "or cost=roofline to set parameters)"]
            continue
        if name in regs[g].names():
            lines = key_lines(regs[g].get(name)[1], prefix=f"{g}.", skip=("name",), values=composed.get(g),
                              brackets=True)
            # placement=everywhere has no keys: its heading stood over nothing
            out += ["", f"keys of {g}={name}{'' if lines else ': none'} (another option: {g}=<name> --help)"
                        + (":" if lines else "")]
            out += lines
    out += ["", "sweep (the default comparison; -m key=a,b replaces a swept key):"]
    out += key_lines(SweepConfig, prefix="sweep.", values=composed.get("sweep"))
    out += ["", "report:"]
    out += key_lines(ReportConfig, prefix="report.", values=composed.get("report"), brackets=True)
    out += ["", "hydra (output folders and the launcher):",
            "  hydra.mode=MULTIRUN  (RUN: one job)",
            "  hydra.run.dir=outputs/<date>/<time>  (one job's output folder)",
            "  hydra.sweep.dir=multirun/<date>/<time>  (a sweep's folder; job i in subfolder i)",
            "  hydra.launcher.n_jobs=-1  (parallel jobs; -1: all cores)",
            "  --hydra-help lists hydra's own flags; docs/cli.md and docs/report.md are the user guide."]
    return "\n".join(out)

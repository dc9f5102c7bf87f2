"""The runtime's configuration, its ``key=value`` command line and its trace. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moesim.cli import parse_key_values
from moesim.errors import UserError
from moesim.formats.profile import EXECUTION_CHOICES
from moesim.specs import GPU_SPECS, MODEL_SPECS
from moesim.workloads.capped import capped_requests
from moesim.workloads.request import Request

WORKLOADS = ("azure_conv", "poisson", "trace")
DEFAULT_RATE = 0.25  # requests/s per tenant of the synthetic workloads when rate= is not given
#: the simulator's spellings of the trace options (``workload.path=F``, ``workload.columns.prompt_tokens=x``),
#: accepted as they are, so a command line or an error's hint copied from ``moesim.simulate`` works here
TRACE_ALIASES = {"workload.path": "trace", "workload.format": "trace_format", "workload.time_unit": "time_unit"}
SIM_COSTS = ("auto", "profile", "profile_mixed", "profile_bucketed", "roofline", "constant")
CLOCKS = ("wall", "virtual")
BACKENDS = ("torch", "cost")
SERVED_POLICIES = ("reconfig", "reconfig_fast", "multiplex", "naive", "swap", "mig", "dedicated")
MOE_KERNELS = ("auto", "grouped", "triton")
FETCH_GRAPHS = ("auto", "on", "off")  # = moesim.serve.backend.FETCH_GRAPHS (this module is torch-free)


@dataclass(frozen=True)
class ServeConfig:
    """One served run: a trace, a policy deciding live, a backend executing, a clock.

    Attributes:
        model, gpu: registry names (the GPU's spec sizes the policy's layout and the simulated cost).
        policy: the policy deciding: reconfig, reconfig_fast, multiplex, naive, swap (one instance), mig
            (one instance per slice, run concurrently: a host thread and, on CUDA, a green context each) or
            dedicated (one whole GPU per tenant: ``gpus`` = ``tenants``, GPU g serving tenant g).
        max_batch: the policy's batch limit (sequences; 0: the policy's default).
        budget_bytes: weight budget of the instance (bytes; 0: the policy's default). A smaller budget leaves
            experts on the host (fetched per use).
        plan: a consolidation plan JSON (``python -m moesim.consolidate``) for the policy's layout; empty: the
            policy's own budget rule.
        workload: ``azure_conv`` (the shipped conversation trace rescaled to ``rate``), ``poisson`` (Poisson
            arrivals at ``rate``, token pairs drawn from the conversation trace) or ``trace`` (the file ``trace``,
            read as the simulator's ``workload=trace`` reads it; set by ``trace=`` alone).
        trace: a trace file (.csv, .jsonl, .parquet; docs/workloads.md) to serve; empty: none. A tenant column's
            names become tenants 0, 1, … and are kept in requests.parquet (``tenant_name``).
        trace_format: the file's public format (azure2023, azure2024, mooncake, burstgpt); empty: moesim's
            columns and their aliases. Also spelt ``workload.format=``.
        columns: field:column pairs mapping the file's columns (``prompt_tokens:input_length``; fields
            arrival_s, timestamp, prompt_tokens, output_tokens, tenant; ``-`` ignores a field). Also spelt
            ``columns.prompt_tokens=input_length`` or ``workload.columns.prompt_tokens=input_length``.
        time_unit: unit of a numeric timestamp column: auto, s, ms, us or ns.
        tenants: tenants (requests spread uniformly at random over them, unless the trace names its tenants).
        rate: mean arrival rate per tenant (requests/s); default 0.25, with a trace its own times (0 or left
            out; a given rate rescales the trace to it).
        max_requests: the trace's first this many requests.
        max_prompt: a request's prompt is capped at this many tokens.
        max_output: a request's output is capped at this many tokens.
        seed: workload and weight seed.
        backend: ``torch`` (execute every step on ``device``) or ``cost`` (answer each step with ``sim_cost``'s
            time; with ``clock=wall`` the runtime sleeps it, with ``clock=virtual`` it is the simulator).
        clock: ``wall`` (real time: arrivals released by a host thread at their times, time measured) or
            ``virtual`` (time advanced by each step's cost or measured time; no idle waits).
        device: ``cuda`` or ``cpu`` (torch backend).
        execution: ``auto`` (CUDA graphs on CUDA, eager on CPU), ``graphs`` or ``eager`` (torch backend).
        warmup: before the timed run, replay the trace once on the virtual clock with the torch backend
            (captures the CUDA graphs the run will meet; written as ``replay_requests.parquet``: measured step
            times on a virtual clock, the old executor's method).
        compare: also simulate the trace with ``sim_cost`` (needs simpy) and write the validation.
        sim_cost: cost model of the simulated side (and of ``backend=cost``): ``profile`` (the shipped profile of
            gpu × model), ``profile_mixed`` (graph profile, eager profile for steps fetching host experts),
            ``profile_bucketed`` (``profile_mixed`` with decode steps from ``sim_table``, measured on the runtime's
            engine), ``roofline``, ``constant``, or ``auto`` (profile when shipped, else roofline).
        sim_table: ``decode_table.csv`` for ``sim_cost=profile_bucketed``.
        kv_bucket: CUDA-graph shapes round the longest context up to this (tokens).
        gpus: GPUs of the fleet (> 1: ``placement`` says which variants each holds, ``router`` routes live; on
            CUDA GPU g is device g; the policy must lay out one instance per GPU).
        placement: per GPU its variants, ``;`` between GPUs (``0,1,2;1,2,3``); empty with ``gpus=1``.
        router: the fleet router for variants with replicas (``moesim.fleet.routers``).
        host_pool: distinct pinned host copies of host-resident experts at most, reused in turn (0: one per copy;
            random weights: the link moves the same bytes; bounds host memory).
        moe_kernel: the experts' kernel of the torch backend: ``grouped`` (``torch._grouped_mm``), ``triton``
            (``moesim.kernels``: the fused MoE kernel, plus the fused router and RoPE/KV-write kernels in
            prefill steps; docs/kernels.md has the H200 figures) or ``auto`` (default: ``triton`` on CUDA where
            Triton is installed, else ``grouped``; ``resolve_moe_kernel``).
        fetch_graphs: decode steps and prefills (from context 0) that fetch host-resident experts, piecewise: the
            layers before the first layer holding a host slot replay a prefix CUDA graph per batch/context bucket
            (decode) or token bucket (prefill), captured ahead; the rest runs eagerly with the fetches. ``auto``: with CUDA graphs (device=cuda, execution graphs); ``on``:
            also without graphs (the prefix eager, same code; the CPU path); ``off``: the whole step eagerly.
        timeline: also write ``timeline.parquet`` (torch backend): every step's host span, each host layer's
            routing read and each host expert's copy on the run's clock (``TorchBackend.timeline``), to see where
            a fetching step's time goes and what waited behind what on the host link.
        out: output folder (requests.parquet, segments.parquet, summary.json, ...).
    """

    model: str = "mixtral-8x7b"
    gpu: str = "h200"
    policy: str = "multiplex"
    max_batch: int = 0
    budget_bytes: float = 0.0
    plan: str = ""
    workload: str = "azure_conv"
    trace: str = ""
    trace_format: str = ""
    columns: tuple[str, ...] = ()
    time_unit: str = "auto"
    tenants: int = 4
    rate: float | None = None
    max_requests: int = 32
    max_prompt: int = 1024
    max_output: int = 64
    seed: int = 0
    backend: str = "torch"
    clock: str = "wall"
    device: str = "cuda"
    execution: str = "auto"
    warmup: bool = True
    compare: bool = True
    sim_cost: str = "auto"
    sim_table: str = ""
    kv_bucket: int = 256
    gpus: int = 1
    placement: str = ""
    router: str = "least_work"
    host_pool: int = 0
    moe_kernel: str = "auto"
    fetch_graphs: str = "auto"
    timeline: bool = False
    out: str = "serve_out"

    def __post_init__(self) -> None:
        if self.model not in MODEL_SPECS:
            raise UserError(f"model={self.model!r}: valid: {', '.join(sorted(MODEL_SPECS))}")
        if self.gpu not in GPU_SPECS:
            raise UserError(f"gpu={self.gpu!r}: valid: {', '.join(sorted(GPU_SPECS))}")
        if self.model in MODEL_SPECS:
            from moesim.executor.config import check_decoder_only

            check_decoder_only(self.model)
        if self.policy not in SERVED_POLICIES:
            raise UserError(f"policy={self.policy!r}: the runtime serves {', '.join(SERVED_POLICIES)}")
        if self.policy == "mig":  # in this tool's keys (the layout's own message names the simulator's)
            from moesim.specs.mig import mig_layouts

            spec = GPU_SPECS[self.gpu]
            most = max((len(lay.instances) for lay in mig_layouts(spec)), default=0) if spec.mig_profiles else 0
            if most and self.tenants > most:
                raise UserError(f"policy=mig with tenants={self.tenants}: {self.gpu} has at most {most} MIG "
                                f"instances (one per tenant); use tenants ≤ {most}")
        if self.policy == "dedicated" and self.gpus != self.tenants:
            raise UserError(f"policy=dedicated with tenants={self.tenants}, gpus={self.gpus}: dedicated gives each "
                            "tenant a whole GPU of its own; set gpus=<tenants> (GPU g serves tenant g)")
        for name, value, valid in (("workload", self.workload, WORKLOADS), ("sim_cost", self.sim_cost, SIM_COSTS),
                                   ("clock", self.clock, CLOCKS), ("backend", self.backend, BACKENDS),
                                   ("device", self.device, ("cuda", "cpu")),
                                   ("execution", self.execution, EXECUTION_CHOICES),
                                   ("moe_kernel", self.moe_kernel, MOE_KERNELS),
                                   ("fetch_graphs", self.fetch_graphs, FETCH_GRAPHS)):
            if value not in valid:
                raise UserError(f"{name}={value!r}: valid: {', '.join(valid)}")
        for name in ("tenants", "max_requests", "max_prompt", "max_output", "kv_bucket"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}={getattr(self, name)}: must be ≥ 1")
        if self.max_batch < 0 or self.budget_bytes < 0:
            raise UserError(f"max_batch={self.max_batch}, budget_bytes={self.budget_bytes}: must be ≥ 0")
        if self.rate is not None and (self.rate < 0 or (self.rate == 0 and not self.trace)):
            raise UserError(f"rate={self.rate}: must be > 0 (requests/s per tenant"
                            + ("; 0 or left out: the trace's own times)" if self.trace else ")"))
        self._check_trace()
        if self.rate is None:  # a trace keeps its own times; the synthetic workloads their default rate
            object.__setattr__(self, "rate", 0.0 if self.workload == "trace" else DEFAULT_RATE)
        if self.gpus < 1 or self.host_pool < 0:
            raise UserError(f"gpus={self.gpus}, host_pool={self.host_pool}: gpus ≥ 1, host_pool ≥ 0")
        if self.is_fleet:
            from moesim.fleet.routers import ROUTERS
            from moesim.serve.fleet import parse_placement

            if self.policy == "mig":
                raise UserError("policy=mig with gpus > 1: a fleet GPU runs a single-instance policy")
            if self.router not in ROUTERS.names():
                from moesim.errors import did_you_mean

                routers = sorted(ROUTERS.names())
                raise UserError(f"router={self.router!r}{did_you_mean(self.router, routers)}: valid: "
                                f"{', '.join(routers)}")
            parse_placement(self.placement, self.gpus, self.tenants)
        elif self.placement:
            raise UserError(f"placement={self.placement!r} needs gpus > 1 (and a policy other than dedicated)")
        if self.plan:  # its variant i is tenant i (of each GPU, in a fleet): another count is one line now
            from moesim.consolidation.plan import load_plan
            from moesim.policies.reconfig import check_plan_tenants

            plan = load_plan(self.plan)
            for n in sorted({len(ts) for ts in self.fleet_placement()} if self.is_fleet else {self.tenants}):
                check_plan_tenants(plan, self.plan, n, " (a GPU of the placement)" if self.is_fleet else "",
                                   key="plan")

    def _check_trace(self) -> None:
        """``trace=F`` means ``workload=trace``; the trace's options are checked as the simulator checks them."""
        object.__setattr__(self, "columns", tuple(self.columns))  # a summary.json's config holds a list
        if self.trace and self.workload == "azure_conv":  # the default: trace= alone chooses the trace
            object.__setattr__(self, "workload", "trace")
        if self.workload == "trace" and not self.trace:
            raise UserError("workload=trace needs trace=FILE (a .csv, .jsonl or .parquet trace; docs/workloads.md)")
        if self.workload != "trace":
            given = [f"{k}={getattr(self, k)!r}" for k, d in (("trace", ""), ("trace_format", ""),
                                                                ("columns", ()), ("time_unit", "auto"))
                     if getattr(self, k) and getattr(self, k) != d]
            if given:
                raise UserError(f"{given[0]} applies to a trace file; workload={self.workload!r} does not read one "
                                "(give trace=FILE and leave workload= out)")
            return
        self.trace_config()

    def column_map(self) -> dict[str, str]:
        """``columns`` as the loader's field → column mapping (a malformed pair is one line)."""
        from moesim.workloads.loader import FIELDS

        out: dict[str, str] = {}
        for pair in self.columns:
            fld, sep, col = (t.strip() for t in pair.partition(":"))
            if not sep or not col or fld not in FIELDS:
                raise UserError(f"columns={pair!r}: expected field:column with a field among {', '.join(FIELDS)} "
                                "(e.g. columns=prompt_tokens:input_length,output_tokens:output_length)")
            if fld in out and out[fld] != col:  # the last one silently won
                raise UserError(f"columns: {fld} is mapped twice ({out[fld]!r} and {col!r}); map each field once")
            out[fld] = col
        return out

    def trace_config(self) -> object:
        """The simulator's ``TraceConfig`` of this run's trace (validated; the file is read when built)."""
        from moesim.workloads.trace import TraceConfig

        rate = self.rate if self.rate is not None else 0.0
        try:
            return TraceConfig(path=self.trace, format=self.trace_format, columns=self.column_map(),
                               time_unit=self.time_unit, tenants=self.tenants, rate=rate,
                               max_requests=self.max_requests)
        except UserError as e:
            raise UserError(serve_spelling(str(e))) from None

    @property
    def is_fleet(self) -> bool:
        """Several GPUs with a placement and live routing (``dedicated``'s GPUs are its own layout)."""
        return self.gpus > 1 and self.policy != "dedicated"
    def fleet_placement(self) -> list[tuple[int, ...]]:
        """Per GPU its variants (``gpus`` > 1)."""
        from moesim.serve.fleet import parse_placement

        return parse_placement(self.placement, self.gpus, self.tenants)

    def policy_params(self) -> dict[str, object]:
        """Overrides of the policy's config."""
        p: dict[str, object] = {}
        if self.max_batch:
            p["max_batch"] = self.max_batch
        if self.budget_bytes:
            p["budget_bytes"] = self.budget_bytes
        if self.plan:
            p["plan"] = self.plan
        if self.policy == "mig":
            # the runtime's slices are green contexts of one process: SMs split, HBM and the host copy queue shared
            p["emulated"] = True
        return p


def resolve_moe_kernel(kernel: str, device: str) -> str:
    """The experts' kernel a backend runs: ``auto`` is ``triton`` on CUDA where Triton is installed (the fused MoE
    kernel, the runtime's fastest engine: a one-sequence decode step 12.1 ms against 17.6 ms grouped on the H200;
    validated like the grouped one, ``reports/validation/realtime/h200_triton*``), else ``grouped``."""
    if kernel != "auto":
        return kernel
    if device != "cuda":
        return "grouped"
    import importlib.util

    return "triton" if importlib.util.find_spec("triton") is not None else "grouped"


SUMMARY = ("Serve a trace in real time (wall clock, arrivals released at their times) with a policy deciding live, "
           "every step executed (torch) or answered by a cost model; writes requests.parquet, segments.parquet, "
           "summary.json and, with compare=true, the simulated side and the errors.")


def serve_spelling(message: str) -> str:
    """A workload message in this tool's keys (``workload.max_requests=`` is ``max_requests=`` here); only the
    keys are respelt, never a file name (``data/workload.csv`` stays)."""
    import re

    for sim, ours in (("workload=trace: format=", "trace_format="), ("workload=trace: time_unit=", "time_unit="),
                      ("workload=trace: columns.", "columns="), ("workload=trace: ", "trace: ")):
        message = message.replace(sim, ours)
    return re.sub(r"(?<![\w/.\\-])workload\.(columns\.\w+|time_unit|format|tenants|max_requests|rate|time_scale|"
                     r"duration_s)\b",
                     lambda m: {"format": "trace_format"}.get(m.group(1), m.group(1)), message)


def _trace_words(argv: list[str]) -> list[str]:
    """The simulator's trace spellings → this tool's keys: ``workload.path=F`` → ``trace=F``,
    ``[workload.]columns.prompt_tokens=x`` → one ``columns=prompt_tokens:x,...`` word."""
    out, pairs = [], []
    for a in argv:
        key, sep, value = a.partition("=")
        key = key.lstrip("+")
        if sep and key in TRACE_ALIASES:
            out.append(f"{TRACE_ALIASES[key]}={value}")
        elif sep and key.startswith(("columns.", "workload.columns.")):
            pairs.append(f"{key.rsplit('.', 1)[1]}:{value}")
        elif sep and key == "columns":  # several columns= words add up (the last one replaced the others)
            pairs += [v for v in value.split(",") if v.strip()]
        elif sep and key == "workload.name":
            out.append(f"workload={value}")
        else:
            out.append(a)
    return out + ([f"columns={','.join(pairs)}"] if pairs else [])


def parse_args(argv: list[str]) -> ServeConfig:
    """``["device=cpu", "model=tiny"]`` → config; an unknown key or a bad value is one clear line."""
    return parse_key_values(
        _trace_words(list(argv)), ServeConfig, prog="python -m moesim.serve", summary=SUMMARY,
        choices={"model": sorted(MODEL_SPECS), "gpu": sorted(GPU_SPECS), "policy": SERVED_POLICIES,
                 "workload": WORKLOADS, "time_unit": ("auto", "s", "ms", "us", "ns"), "sim_cost": SIM_COSTS,
                 "clock": CLOCKS, "backend": BACKENDS, "device": ("cuda", "cpu"), "execution": EXECUTION_CHOICES,
                 "moe_kernel": MOE_KERNELS, "fetch_graphs": FETCH_GRAPHS},
        examples=("python -m moesim.serve device=cpu model=tiny policy=multiplex rate=4 max_requests=16 out=/tmp/s",
                  "python -m moesim.serve device=cpu model=tiny trace=my.csv columns=prompt_tokens:input_length "
                  "time_unit=ms out=/tmp/s   # your own trace, as the simulator reads it",
                  "python -m moesim.serve backend=cost clock=virtual model=tiny out=/tmp/s   # = the simulator"))


def make_requests(cfg: ServeConfig) -> list[Request]:
    """The trace: ``max_requests`` requests, uniform over tenants, token counts capped (the executor's); with
    ``trace=F`` the file's first ``max_requests`` requests, token counts capped the same way."""
    if cfg.workload != "trace":
        return capped_requests(cfg)
    import dataclasses

    reqs = trace_workload(cfg).generate(cfg.seed)
    return [dataclasses.replace(r, prompt_tokens=min(r.prompt_tokens, cfg.max_prompt),
                                output_tokens=min(r.output_tokens, cfg.max_output)) for r in reqs]


def trace_workload(cfg: ServeConfig) -> Any:
    """The simulator's ``trace`` workload of ``cfg.trace`` (the file read, checked and sorted by its loader);
    a problem with the file is one line in this tool's keys."""
    from moesim.workloads import WORKLOADS

    try:
        return WORKLOADS.build("trace", cfg.trace_config())
    except UserError as e:
        raise UserError(serve_spelling(str(e))) from None

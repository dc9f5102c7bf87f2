"""The runtime's configuration, its ``key=value`` command line and its trace. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from moesim.cli import parse_key_values
from moesim.errors import UserError
from moesim.formats.profile import EXECUTION_CHOICES
from moesim.specs import GPU_SPECS, MODEL_SPECS
from moesim.workloads.capped import capped_requests
from moesim.workloads.request import Request

WORKLOADS = ("azure_conv", "poisson")
SIM_COSTS = ("auto", "profile", "profile_mixed", "profile_bucketed", "roofline", "constant")
CLOCKS = ("wall", "virtual")
BACKENDS = ("torch", "cost")
SERVED_POLICIES = ("reconfig", "reconfig_fast", "multiplex", "naive", "swap", "mig", "dedicated")
MOE_KERNELS = ("grouped", "triton")
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
        workload: ``azure_conv`` (the shipped conversation trace rescaled to ``rate``) or ``poisson`` (Poisson
            arrivals at ``rate``, token pairs drawn from the conversation trace).
        tenants: tenants (requests spread uniformly at random over them).
        rate: mean arrival rate per tenant (requests/s).
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
        moe_kernel: the experts' kernel of the torch backend: ``grouped`` (``torch._grouped_mm``) or ``triton``
            (``moesim.kernels``: the fused MoE kernel, plus the fused router and RoPE/KV-write kernels in
            prefill steps; docs/kernels.md has the H200 figures).
        fetch_graphs: decode steps and prefills (from context 0) that fetch host-resident experts, piecewise: the
            layers before the first layer holding a host slot replay a prefix CUDA graph per batch/context bucket
            (decode) or token bucket (prefill), captured ahead; the rest runs eagerly with the fetches. ``auto``: with CUDA graphs (device=cuda, execution graphs); ``on``:
            also without graphs (the prefix eager, same code; the CPU path); ``off``: the whole step eagerly.
        out: output folder (requests.parquet, segments.parquet, summary.json, ...).
    """

    model: str = "mixtral-8x7b"
    gpu: str = "h200"
    policy: str = "multiplex"
    max_batch: int = 0
    budget_bytes: float = 0.0
    plan: str = ""
    workload: str = "azure_conv"
    tenants: int = 4
    rate: float = 0.25
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
    moe_kernel: str = "grouped"
    fetch_graphs: str = "auto"
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
        if self.rate <= 0:
            raise UserError(f"rate={self.rate}: must be > 0 (requests/s per tenant)")
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
        return p


SUMMARY = ("Serve a trace in real time (wall clock, arrivals released at their times) with a policy deciding live, "
           "every step executed (torch) or answered by a cost model; writes requests.parquet, segments.parquet, "
           "summary.json and, with compare=true, the simulated side and the errors.")


def parse_args(argv: list[str]) -> ServeConfig:
    """``["device=cpu", "model=tiny"]`` → config; an unknown key or a bad value is one clear line."""
    return parse_key_values(
        argv, ServeConfig, prog="python -m moesim.serve", summary=SUMMARY,
        choices={"model": sorted(MODEL_SPECS), "gpu": sorted(GPU_SPECS), "policy": SERVED_POLICIES,
                 "workload": WORKLOADS, "sim_cost": SIM_COSTS, "clock": CLOCKS, "backend": BACKENDS,
                 "device": ("cuda", "cpu"), "execution": EXECUTION_CHOICES, "moe_kernel": MOE_KERNELS,
                 "fetch_graphs": FETCH_GRAPHS},
        examples=("python -m moesim.serve device=cpu model=tiny policy=multiplex rate=4 max_requests=16 out=/tmp/s",
                  "python -m moesim.serve backend=cost clock=virtual model=tiny out=/tmp/s   # = the simulator"))


def make_requests(cfg: ServeConfig) -> list[Request]:
    """The trace: ``max_requests`` requests, uniform over tenants, token counts capped (the executor's)."""
    return capped_requests(cfg)

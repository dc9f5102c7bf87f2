"""The executor's configuration and its ``key=value`` command line (the GPU machine has no hydra). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from moesim.cli import parse_key_values
from moesim.errors import UserError
from moesim.formats.profile import EXECUTION_CHOICES
from moesim.specs import GPU_SPECS, MODEL_SPECS

WORKLOADS = ("azure_conv", "poisson")
SIM_COSTS = ("auto", "profile", "roofline", "constant")



def check_decoder_only(name: str) -> None:
    """Refuse an encoder-decoder model (switch-base-8): the executor and the runtime execute a decoder stack
    only, while the layout covers every MoE layer's positions, encoder's included, so a run ended in
    "residency group 0: tenants [0, 1] get more than 48 positions"."""
    spec = MODEL_SPECS[name]
    if spec.n_decoder_moe_layers != spec.n_moe_layers:
        valid = sorted(n for n, m in MODEL_SPECS.items() if m.n_decoder_moe_layers == m.n_moe_layers)
        raise UserError(f"model={name}: an encoder-decoder model ({spec.n_moe_layers - spec.n_decoder_moe_layers} "
                        "encoder MoE layers), which the executor and the runtime do not run (they execute a decoder "
                        f"stack); valid: {', '.join(valid)}")

@dataclass(frozen=True)
class ExecutorConfig:
    """One validation run: a trace, policies, a simulated and an executed run of each.

    Attributes:
        model, gpu: registry names (the GPU's spec sizes the policies' layouts and the simulated cost).
        policies: comma list of ``name:max_batch`` (``name`` alone keeps the policy's default batch).
        workload: ``azure_conv`` (the shipped conversation trace, rescaled to ``rate``) or ``poisson``
            (Poisson arrivals at ``rate``, (prompt, output) pairs drawn from the conversation trace).
        tenants: tenants (requests spread uniformly at random over them).
        rate: mean arrival rate per tenant (requests/s).
        max_requests: the trace's first this many requests.
        max_prompt, max_output: token counts are capped at these (tokens).
        seed: workload and weight seed.
        device: ``cuda`` or ``cpu``.
        execution: ``auto`` (graphs on CUDA, eager on CPU), ``graphs`` or ``eager``.
        sim_cost: cost model of the simulated run: ``profile`` (shipped profile of gpu × model for the
            executor's execution mode), ``roofline``, ``constant``, or ``auto`` (profile when shipped, else
            roofline).
        budget_s: wall seconds for all executed runs; a policy still running then is recorded as ``budget``.
        budget_bytes: weight budget per instance passed to every policy (bytes; 0: the policy's default).
        kv_bucket: CUDA-graph shapes round the longest context up to this (tokens).
        out: output folder (relative paths: under the current directory; never the committed reports/).
    """

    model: str = "mixtral-8x7b"
    gpu: str = "h200"
    policies: str = "reconfig:1,reconfig_fast:16,multiplex:16"
    workload: str = "azure_conv"
    tenants: int = 4
    rate: float = 0.125
    max_requests: int = 48
    max_prompt: int = 1024
    max_output: int = 64
    seed: int = 0
    device: str = "cuda"
    execution: str = "auto"
    sim_cost: str = "auto"
    budget_s: float = 0.0
    budget_bytes: float = 0.0
    kv_bucket: int = 256
    out: str = "executor_out"

    def __post_init__(self) -> None:
        if self.model not in MODEL_SPECS:
            raise UserError(f"model={self.model!r}: valid: {', '.join(sorted(MODEL_SPECS))}")
        check_decoder_only(self.model)
        if self.gpu not in GPU_SPECS:
            raise UserError(f"gpu={self.gpu!r}: valid: {', '.join(sorted(GPU_SPECS))}")
        if self.workload not in WORKLOADS:
            raise UserError(f"workload={self.workload!r}: valid: {', '.join(WORKLOADS)}")
        if self.sim_cost not in SIM_COSTS:
            raise UserError(f"sim_cost={self.sim_cost!r}: valid: {', '.join(SIM_COSTS)}")
        if self.device not in ("cuda", "cpu"):
            raise UserError(f"device={self.device!r}: valid: cuda, cpu")
        if self.execution not in EXECUTION_CHOICES:
            raise UserError(f"execution={self.execution!r}: valid: {', '.join(EXECUTION_CHOICES)}")
        for name in ("tenants", "max_requests", "max_prompt", "max_output", "kv_bucket"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}={getattr(self, name)}: must be ≥ 1")
        if self.rate <= 0:
            raise UserError(f"rate={self.rate}: must be > 0 (requests/s per tenant)")
        if self.budget_s < 0 or self.budget_bytes < 0:
            raise UserError(f"budget_s={self.budget_s}, budget_bytes={self.budget_bytes}: must be ≥ 0")
        self.policy_list()

    def policy_list(self) -> list[tuple[str, int | None]]:
        """``policies`` as (name, max_batch or None)."""
        from moesim.policies import POLICIES

        out: list[tuple[str, int | None]] = []
        for part in filter(None, (p.strip() for p in self.policies.split(","))):
            name, _, batch = part.partition(":")
            if name not in POLICIES.names():
                raise UserError(f"policies={self.policies!r}: unknown policy {name!r}; valid: "
                                f"{', '.join(sorted(POLICIES.names()))}")
            if batch and (not batch.isdigit() or int(batch) < 1):
                raise UserError(f"policies={self.policies!r}: {part!r}: max_batch must be a positive integer")
            out.append((name, int(batch) if batch else None))
        if not out:
            raise UserError("policies=: give at least one, e.g. reconfig:1,multiplex:16")
        return out


SUMMARY = ("Simulate and execute the same trace with real (tiny or full-size) MoE weights and write the "
           "validation (simulated vs measured per request) into out.")


def parse_args(argv: list[str]) -> ExecutorConfig:
    """``["device=cpu", "model=tiny"]`` → config; an unknown key or a bad value is one clear line."""
    return parse_key_values(argv, ExecutorConfig, prog="python -m moesim.executor", summary=SUMMARY,
                            choices={"model": sorted(MODEL_SPECS), "gpu": sorted(GPU_SPECS), "workload": WORKLOADS,
                                     "device": ("cuda", "cpu"), "execution": EXECUTION_CHOICES,
                                     "sim_cost": SIM_COSTS},
                            examples=("python -m moesim.executor device=cpu model=tiny max_requests=12 out=/tmp/val",))

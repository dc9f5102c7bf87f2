"""Consolidation plans: which expert copy each (variant, layer, expert) uses, and where it lives.

Torch-free (numpy + json): the simulator loads plans without weights.

A *copy* is one expert's weights held once: on the GPU or on the host. Variants that share a copy at a
position run their tokens through the same weights. ``assign[v][l][e]`` is the id of the copy that variant
``v``'s expert ``e`` of MoE layer ``l`` resolves to; with permutation-aware matching a copy's ``expert``
(its slot in the consolidated layer) may differ from the variant's own expert index, which is why the
mapping is per variant and per expert.

Memory accounting (bytes):
  * ``gpu_expert_bytes``    = bytes of the copies with ``on_gpu``;
  * ``gpu_nonexpert_bytes`` = ``nonexpert_sets_reserved × nonexpert_bytes`` (the paper reserves the loaded
    variant's non-expert set plus room for the next one);
  * ``gpu_total_bytes``     = the two above, never more than ``budget_bytes``;
  * ``host_expert_bytes``   = bytes of the copies on the host;
  * ``all_weights_bytes``   = every variant's non-expert set plus every copy (GPU and host): what the whole
    consolidated family holds anywhere, compared with ``n_variants × (nonexpert + all experts)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moesim.errors import UserError

if TYPE_CHECKING:  # imported where used: loading a plan needs neither the cost models nor their deps
    from moesim.cost.base import ExpertGroup

SCHEMA = "moesim.plan/1"

#: Plan-building methods; ``plan_from_distance_model`` and the weight-based CLI accept these names.
METHODS = ("paper", "medoid", "cluster", "cluster-mean")


@dataclass(frozen=True, slots=True)
class ExpertCopy:
    """One expert copy.

    Attributes:
        id: index in ``Plan.copies``.
        layer: MoE layer index.
        expert: slot in the consolidated layer (equals the variants' own index unless matching permuted).
        source_variant: variant whose weights the copy is (the representative when ``mean_of`` is set).
        source_expert: that variant's expert index.
        on_gpu: resident on the GPU (True) or on the host, fetched per use (False).
        bytes: size of the copy (bytes).
        mean_of: when non-empty, the copy is the element-wise mean of these variants' experts that resolve
            to it (each variant's expert found through ``assign``); empty: a plain copy of the source.
    """

    id: int
    layer: int
    expert: int
    source_variant: int
    source_expert: int
    on_gpu: bool
    bytes: int
    mean_of: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "layer": self.layer,
            "expert": self.expert,
            "source_variant": self.source_variant,
            "source_expert": self.source_expert,
            "on_gpu": self.on_gpu,
            "bytes": self.bytes,
        }
        if self.mean_of:
            d["mean_of"] = list(self.mean_of)
        return d


@dataclass(frozen=True)
class Plan:
    """A consolidation plan for ``len(variants)`` variants of one MoE architecture.

    Attributes:
        model: architecture name (a ModelSpec name or a checkpoint's description).
        method: how the plan was built (one of ``METHODS``, optionally with ``+perm``).
        variants: variant names, in index order.
        budget_bytes: GPU memory budget the plan was built for (bytes).
        n_layers: MoE layers; n_experts: experts per MoE layer.
        expert_bytes: bytes of one expert copy; nonexpert_bytes: bytes of one variant's non-expert set.
        nonexpert_sets_reserved: non-expert sets kept on the GPU (the loaded one and the next).
        copies: every expert copy.
        assign: ``assign[v][l][e]`` → copy id.
        meta: free-form provenance (distances used, seed...); not part of equality.
    """

    model: str
    method: str
    variants: tuple[str, ...]
    budget_bytes: int
    n_layers: int
    n_experts: int
    expert_bytes: int
    nonexpert_bytes: int
    nonexpert_sets_reserved: int
    copies: tuple[ExpertCopy, ...]
    assign: tuple[tuple[tuple[int, ...], ...], ...]
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        self._validate()

    # ---- derived ------------------------------------------------------------------------------
    @property
    def n_variants(self) -> int:
        return len(self.variants)

    @property
    def n_positions(self) -> int:
        """(layer, expert) positions per variant."""
        return self.n_layers * self.n_experts

    @property
    def gpu_expert_bytes(self) -> int:
        return sum(c.bytes for c in self.copies if c.on_gpu)

    @property
    def gpu_nonexpert_bytes(self) -> int:
        return self.nonexpert_sets_reserved * self.nonexpert_bytes

    @property
    def gpu_total_bytes(self) -> int:
        return self.gpu_expert_bytes + self.gpu_nonexpert_bytes

    @property
    def host_expert_bytes(self) -> int:
        return sum(c.bytes for c in self.copies if not c.on_gpu)

    @property
    def all_weights_bytes(self) -> int:
        """Every variant's non-expert set plus every copy, GPU and host (bytes)."""
        return self.n_variants * self.nonexpert_bytes + sum(c.bytes for c in self.copies)

    @property
    def separate_models_bytes(self) -> int:
        """Bytes of ``n_variants`` whole, unconsolidated models."""
        return self.n_variants * (self.nonexpert_bytes + self.n_positions * self.expert_bytes)

    @property
    def memory_fraction(self) -> float:
        """``all_weights_bytes`` over ``separate_models_bytes``."""
        return self.all_weights_bytes / self.separate_models_bytes

    def users(self) -> tuple[frozenset[int], ...]:
        """For each copy id, the variants that resolve at least one position to it."""
        users: list[set[int]] = [set() for _ in self.copies]
        for v, layers in enumerate(self.assign):
            for row in layers:
                for cid in row:
                    users[cid].add(v)
        return tuple(frozenset(u) for u in users)

    def shared_positions(self) -> int:
        """Copies used by more than one variant."""
        return sum(1 for u in self.users() if len(u) > 1)

    def resolve(self, variant: int, layer: int, expert: int) -> ExpertCopy:
        """The copy that ``variant``'s ``expert`` of MoE layer ``layer`` runs on."""
        return self.copies[self.assign[variant][layer][expert]]

    def expert_groups(self) -> tuple[ExpertGroup, ...]:
        """Copies grouped by (variants using them, on_gpu), ``positions`` = number of copies.

        Each variant's positions map to distinct copies, so a group's count is also the number of that
        tenant's positions it covers; this is how the simulator's ``reconfig`` policy builds residency.
        Groups are ordered by (not on_gpu, sorted tenants) so equal plans give equal tuples.
        """
        from moesim.cost.base import ExpertGroup

        counts: dict[tuple[frozenset[int], bool], int] = {}
        for c, u in zip(self.copies, self.users(), strict=True):
            counts[(u, c.on_gpu)] = counts.get((u, c.on_gpu), 0) + 1
        keys = sorted(counts, key=lambda k: (not k[1], sorted(k[0])))
        return tuple(ExpertGroup(tenants=k[0], positions=counts[k], on_gpu=k[1]) for k in keys)

    def memory(self) -> dict[str, int]:
        """The memory section written to JSON (bytes)."""
        return {
            "gpu_expert_bytes": self.gpu_expert_bytes,
            "gpu_nonexpert_bytes": self.gpu_nonexpert_bytes,
            "gpu_total_bytes": self.gpu_total_bytes,
            "host_expert_bytes": self.host_expert_bytes,
            "all_weights_bytes": self.all_weights_bytes,
        }

    def summary(self) -> str:
        """One human line: method, copies on GPU/host, shared positions, memory."""
        on = sum(1 for c in self.copies if c.on_gpu)
        return (
            f"{self.method}: {self.n_variants} variants, {self.n_positions} positions, "
            f"{len(self.copies)} copies ({on} on GPU, {len(self.copies) - on} on host), "
            f"{self.shared_positions()} shared; GPU {self.gpu_total_bytes / 1e9:.3f} GB of "
            f"{self.budget_bytes / 1e9:.3f} GB budget; all weights {self.memory_fraction:.1%} of separate models"
        )

    # ---- validation ---------------------------------------------------------------------------
    def _validate(self) -> None:
        where = f"plan ({self.method})"
        if self.n_variants < 1:
            raise UserError(f"{where}: needs at least one variant")
        if self.nonexpert_sets_reserved < 0:
            raise UserError(f"{where}: nonexpert_sets_reserved must be >= 0")
        if len(self.assign) != self.n_variants:
            raise UserError(f"{where}: assign has {len(self.assign)} variants, expected {self.n_variants}")
        for i, c in enumerate(self.copies):
            if c.id != i:
                raise UserError(
                    f"{where}: copy at index {i} has id {c.id}; ids must be 0..{len(self.copies) - 1}"
                )
            if not (0 <= c.layer < self.n_layers and 0 <= c.expert < self.n_experts):
                raise UserError(f"{where}: copy {i} at layer {c.layer} expert {c.expert} is out of range")
            if not (0 <= c.source_variant < self.n_variants and 0 <= c.source_expert < self.n_experts):
                raise UserError(f"{where}: copy {i} has an out-of-range source")
            if c.bytes != self.expert_bytes:
                raise UserError(
                    f"{where}: copy {i} has {c.bytes} bytes, expected expert_bytes={self.expert_bytes}"
                )
        used = [False] * len(self.copies)
        for v, layers in enumerate(self.assign):
            if len(layers) != self.n_layers:
                raise UserError(f"{where}: assign[{v}] has {len(layers)} layers, expected {self.n_layers}")
            for li, row in enumerate(layers):
                if len(row) != self.n_experts:
                    raise UserError(
                        f"{where}: assign[{v}][{li}] has {len(row)} experts, expected {self.n_experts}"
                    )
                if len(set(row)) != len(row):
                    raise UserError(f"{where}: assign[{v}][{li}] maps two experts to one copy")
                for cid in row:
                    if not 0 <= cid < len(self.copies):
                        raise UserError(f"{where}: assign[{v}][{li}] names unknown copy {cid}")
                    if self.copies[cid].layer != li:
                        raise UserError(
                            f"{where}: assign[{v}][{li}] uses copy {cid} of layer {self.copies[cid].layer}"
                        )
                    used[cid] = True
        if not all(used):
            raise UserError(f"{where}: copy {used.index(False)} is used by no variant")
        users = self.users()
        for c in self.copies:
            if self.assign[c.source_variant][c.layer][c.source_expert] != c.id:
                raise UserError(
                    f"{where}: copy {c.id}'s source (variant {c.source_variant}, expert {c.source_expert}) "
                    "does not resolve to it"
                )
            if c.mean_of and not set(c.mean_of) <= users[c.id]:
                raise UserError(f"{where}: copy {c.id} averages variants {c.mean_of} that do not all use it")
        if self.gpu_total_bytes > self.budget_bytes:
            raise UserError(
                f"{where}: GPU bytes {self.gpu_total_bytes} exceed budget_bytes {self.budget_bytes}"
            )

    # ---- JSON ---------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "model": self.model,
            "method": self.method,
            "variants": list(self.variants),
            "budget_bytes": self.budget_bytes,
            "n_layers": self.n_layers,
            "n_experts": self.n_experts,
            "expert_bytes": self.expert_bytes,
            "nonexpert_bytes": self.nonexpert_bytes,
            "nonexpert_sets_reserved": self.nonexpert_sets_reserved,
            "memory": self.memory(),
            "copies": [c.to_json() for c in self.copies],
            "assign": [[list(row) for row in layers] for layers in self.assign],
            "meta": dict(self.meta),
        }

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON (one copy per line, compact assign rows); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def from_json(cls, d: Mapping[str, Any], source: str = "plan") -> Plan:
        """Build a plan from its JSON object; a bad schema raises one UserError line naming ``source``."""
        if not isinstance(d, Mapping) or d.get("schema") != SCHEMA:
            got = d.get("schema") if isinstance(d, Mapping) else type(d).__name__
            raise UserError(f"{source}: schema is {got!r}, expected {SCHEMA!r}")
        try:
            copies = tuple(
                ExpertCopy(
                    id=int(c["id"]),
                    layer=int(c["layer"]),
                    expert=int(c["expert"]),
                    source_variant=int(c["source_variant"]),
                    source_expert=int(c["source_expert"]),
                    on_gpu=bool(c["on_gpu"]),
                    bytes=int(c["bytes"]),
                    mean_of=tuple(int(x) for x in c.get("mean_of", ())),
                )
                for c in d["copies"]
            )
            plan = cls(
                model=str(d["model"]),
                method=str(d["method"]),
                variants=tuple(str(v) for v in d["variants"]),
                budget_bytes=int(d["budget_bytes"]),
                n_layers=int(d["n_layers"]),
                n_experts=int(d["n_experts"]),
                expert_bytes=int(d["expert_bytes"]),
                nonexpert_bytes=int(d["nonexpert_bytes"]),
                nonexpert_sets_reserved=int(d["nonexpert_sets_reserved"]),
                copies=copies,
                assign=tuple(tuple(tuple(int(x) for x in row) for row in layers) for layers in d["assign"]),
                meta=dict(d.get("meta", {})),
            )
        except UserError as exc:
            raise UserError(f"{source}: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(
                f"{source}: bad plan field ({type(exc).__name__}: {exc}); see docs/consolidation.md"
            ) from None
        mem = d.get("memory")
        if isinstance(mem, Mapping):
            for k, v in plan.memory().items():
                if k in mem and int(mem[k]) != v:
                    raise UserError(f"{source}: memory.{k} is {mem[k]} but the copies give {v}")
        return plan


def load_plan(path: str | Path) -> Plan:
    """Read a plan JSON file; a missing file or a bad schema raises one UserError line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"plan file {str(p)!r} not found")
    try:
        d = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"plan file {str(p)!r} is not JSON ({exc})") from None
    return Plan.from_json(d, source=f"plan file {str(p)!r}")


def plan_from_distance_model(
    model: Any,
    n_variants: int,
    budget_bytes: int,
    method: str = "paper",
    seed: int = 0,
    nonexpert_sets_reserved: int = 2,
) -> Plan:
    """A plan for ``n_variants`` variants of ``model`` (a ``moesim.specs.ModelSpec``) without weights.

    Pairwise expert distances come from ``moesim.consolidation.distance_model.synthetic_distances``
    (documented there: distances grow with depth, as the paper found layers 18–31 of two Mixtral variants
    least similar, with a per-position random factor drawn from ``seed``); the plan is then built exactly as
    from real weights by ``moesim.consolidation.builders.build_plan``.
    """
    from moesim.consolidation.builders import build_plan
    from moesim.consolidation.distance_model import synthetic_distances

    if n_variants < 2:
        raise UserError(f"n_variants must be >= 2, got {n_variants}")
    pair = synthetic_distances(model.n_moe_layers, model.n_experts, n_variants, seed=seed)
    return build_plan(
        pair,
        method=method,
        budget_bytes=budget_bytes,
        expert_bytes=model.expert_bytes,
        nonexpert_bytes=model.nonexpert_bytes,
        nonexpert_sets_reserved=nonexpert_sets_reserved,
        model=model.name,
        variants=tuple(f"variant{v}" for v in range(n_variants)),
        meta={"distances": "synthetic", "seed": seed},
    )

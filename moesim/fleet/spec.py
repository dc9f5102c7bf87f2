"""What a fleet is made of: groups of GPUs of one type, grouped into nodes.

A fleet file (YAML or JSON) a user can write by hand::

    groups:
      - gpu: h200              # a GPU spec name (moesim.specs.GPU_SPECS) or a user GPU file
        count: 4
        gpus_per_node: 2       # GPUs 0-1 form node 0, GPUs 2-3 node 1
        node_host_GBps: 50     # host-memory bandwidth the node's GPUs share (GB/s); 0: no cap
      - gpu: a100-80gb
        count: 2

GPUs are numbered across groups in file order (group 0's first, then group 1's); nodes too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moesim.errors import UserError
from moesim.specs import GPUSpec, get_gpu


@dataclass(frozen=True)
class GPUGroup:
    """``count`` GPUs of one type.

    Attributes:
        gpu: GPU spec name, a GPU file path, or a ``GPUSpec`` (a user's GPU file already loaded: used as
            it is, even when its ``name`` is a shipped one).
        count: GPUs in the group (≥ 1).
        gpus_per_node: GPUs per node (≥ 1); the group's GPUs fill nodes in order.
        node_host_GBps: host-memory bandwidth shared by one node's GPUs (GB/s); 0: uncapped.
    """

    gpu: str | GPUSpec
    count: int = 1
    gpus_per_node: int = 8
    node_host_GBps: float = 0.0

    def __post_init__(self) -> None:
        get_gpu(self.gpu)  # unknown names refused in one line
        where = self.label
        for name, v in (("count", self.count), ("gpus_per_node", self.gpus_per_node)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UserError(f"fleet group {where}: {name}={v!r} is invalid; valid: an integer ≥ 1")
        if not (isinstance(self.node_host_GBps, (int, float)) and math.isfinite(self.node_host_GBps)
                and self.node_host_GBps >= 0):
            raise UserError(f"fleet group {where}: node_host_GBps={self.node_host_GBps!r} is invalid; "
                            "valid: a finite number ≥ 0 (GB/s; 0 = no cap)")

    @property
    def label(self) -> str:
        """The GPU's name (for messages and the file form)."""
        return self.gpu.name if isinstance(self.gpu, GPUSpec) else self.gpu


@dataclass(frozen=True)
class FleetGPU:
    """One GPU of a fleet: its index, spec, node and the node's host-bandwidth cap (bytes/s, 0: none)."""

    index: int
    spec: GPUSpec
    node: int
    node_cap_Bps: float

    @property
    def name(self) -> str:
        """``gpu<index>``."""
        return f"gpu{self.index}"


@dataclass(frozen=True)
class FleetSpec:
    """A fleet: GPU groups in order."""

    groups: tuple[GPUGroup, ...]

    def __post_init__(self) -> None:
        if not self.groups:
            raise UserError("fleet: no GPU groups; give at least one (gpu: <name>, count: <n>)")

    @classmethod
    def uniform(cls, gpu: str, count: int = 1, gpus_per_node: int = 8, node_host_GBps: float = 0.0) -> FleetSpec:
        """``count`` GPUs of one type (``count=1``: today's single-GPU run)."""
        return cls((GPUGroup(gpu, count, gpus_per_node, node_host_GBps),))

    @property
    def n_gpus(self) -> int:
        """GPUs in the fleet."""
        return sum(g.count for g in self.groups)

    def gpus(self) -> list[FleetGPU]:
        """Every GPU, numbered across groups in order, with its node."""
        out, node = [], 0
        for grp in self.groups:
            spec = get_gpu(grp.gpu)
            for i in range(grp.count):
                out.append(FleetGPU(len(out), spec, node + i // grp.gpus_per_node, grp.node_host_GBps * 1e9))
            node += -(-grp.count // grp.gpus_per_node)
        return out

    def node_caps_Bps(self) -> dict[int, float]:
        """Node → its host-bandwidth cap (bytes/s), for capped nodes only."""
        return {g.node: g.node_cap_Bps for g in self.gpus() if g.node_cap_Bps > 0}

    def to_dict(self) -> dict[str, Any]:
        """The file form."""
        return {"groups": [{"gpu": g.label, "count": g.count, "gpus_per_node": g.gpus_per_node,
                                "node_host_GBps": g.node_host_GBps} for g in self.groups]}

    @classmethod
    def from_dict(cls, data: Any, where: str = "fleet") -> FleetSpec:
        """Parse the file form (UserError naming ``where`` on a bad field)."""
        if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
            raise UserError(f"{where}: expected a mapping with a list 'groups' of {{gpu, count, ...}}")
        from moesim.errors import did_you_mean

        groups = []
        fields = ["gpu", "count", "gpus_per_node", "node_host_GBps"]
        for i, g in enumerate(data["groups"]):
            bad = sorted(set(g) - set(fields)) if isinstance(g, dict) else []
            if bad:
                raise UserError(f"{where}: groups[{i}]: unknown field {bad[0]!r}{did_you_mean(str(bad[0]), fields)}; "
                                f"valid: {', '.join(fields)}")
            if not isinstance(g, dict) or "gpu" not in g:
                raise UserError(f"{where}: groups[{i}] needs a 'gpu' name")
            try:
                groups.append(GPUGroup(**g))
            except UserError as e:  # the file and the group entry, then what is wrong in it
                own = f"fleet group {g['gpu']}: "
                raise UserError(f"{where}: groups[{i}]: {str(e).removeprefix(own)}") from None
        if not groups:  # "fleet: no GPU groups" named no file
            raise UserError(f"{where}: no GPU groups; give at least one (gpu: <name>, count: <n>)")
        return cls(tuple(groups))


def load_fleet(path: str | Path) -> FleetSpec:
    """A fleet file (YAML or JSON)."""
    from moesim.fleet.placement import read_mapping

    return FleetSpec.from_dict(read_mapping(path, "fleet file"), f"fleet file {path}")

"""``fleet=<name>``: how a job names its fleet (registered by name like policies).

``fleet=uniform`` (default): ``fleet.gpus`` GPUs of ``fleet.gpu`` (empty: the job's ``gpu``), so the default
(one GPU) is today's single-GPU run. ``fleet=file fleet.path=my_fleet.yaml``: GPU groups from a file
(moesim.fleet.spec).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moesim.errors import UserError
from moesim.fleet.spec import FleetSpec, GPUGroup, load_fleet
from moesim.registry import Registry
from moesim.specs import GPUSpec


class FleetSource:
    """Turns its config into a ``FleetSpec`` given the job's GPU (a name, or the job's ``GPUSpec``)."""

    registry_name = ""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def spec(self, job_gpu: str | GPUSpec) -> FleetSpec:  # pragma: no cover - abstract
        raise NotImplementedError


FLEETS: Registry[FleetSource] = Registry("fleet")


@dataclass(frozen=True)
class UniformFleetConfig:
    """Attributes:
    gpus: number of GPUs (≥ 1).
    gpu: GPU spec name; empty: the job's ``gpu``.
    gpus_per_node: GPUs per node.
    node_host_GBps: host-memory bandwidth one node's GPUs share (GB/s); 0: no cap.
    """

    name: str = "uniform"
    gpus: int = 1
    gpu: str = ""
    gpus_per_node: int = 8
    node_host_GBps: float = 0.0

    def __post_init__(self) -> None:
        import math

        if not isinstance(self.gpus, int) or self.gpus < 1:
            raise UserError(f"fleet.gpus={self.gpus!r}: must be an integer ≥ 1")
        # the keys the user typed (these read "fleet group h200: gpus_per_node=0 is invalid")
        if not isinstance(self.gpus_per_node, int) or self.gpus_per_node < 1:
            raise UserError(f"fleet.gpus_per_node={self.gpus_per_node!r}: must be an integer ≥ 1")
        if not (isinstance(self.node_host_GBps, (int, float)) and math.isfinite(self.node_host_GBps)
                and self.node_host_GBps >= 0):
            raise UserError(f"fleet.node_host_GBps={self.node_host_GBps!r}: must be a finite number ≥ 0 (GB/s; "
                            "0 = no cap)")
        if self.gpu:
            from moesim.specs import get_gpu

            try:
                get_gpu(self.gpu)
            except UserError as e:
                raise UserError(f"fleet.gpu={self.gpu}: {e}") from None


@FLEETS.register("uniform", UniformFleetConfig)
class UniformFleet(FleetSource):
    """``gpus`` GPUs of one type."""

    def spec(self, job_gpu: str | GPUSpec) -> FleetSpec:
        """The fleet."""
        c = self.cfg
        return FleetSpec((GPUGroup(c.gpu or job_gpu, c.gpus, c.gpus_per_node, c.node_host_GBps),))


@dataclass(frozen=True)
class FileFleetConfig:
    """Attributes:
    path: a fleet YAML/JSON file (see moesim.fleet.spec).
    """

    name: str = "file"
    path: str = ""


@FLEETS.register("file", FileFleetConfig)
class FileFleet(FleetSource):
    """GPU groups from a file."""

    def spec(self, job_gpu: str | GPUSpec) -> FleetSpec:
        """The fleet in the file."""
        if not self.cfg.path:
            raise UserError("fleet=file needs fleet.path=<a fleet YAML/JSON file>")
        return load_fleet(self.cfg.path)

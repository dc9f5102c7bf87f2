"""Which variants run on which GPU, under which policy: a plain file a user can write by hand.

Placement file (YAML or JSON)::

    strategy: pack                 # provenance only
    gpus:
      - gpu: 0                     # index into the fleet's GPUs
        tenants: [0, 3, 5]         # global tenant (variant) ids; local ids 0,1,2 for the policy, in this order
      - gpu: 1
        tenants: [1, 2]
        policy: mig                # optional: this GPU's policy instead of the job's
        policy_params: {layout: "3g+3g"}
      - gpu: 2
        tenants: [0]               # a replica of tenant 0: the router shares its load with GPU 0

MIG instances and consolidation groups are the policy's layout of the GPU's tenants: ``policy: mig`` puts
the i-th listed tenant on MIG instance i; ``policy_params: {plan: my_plan.json}`` consolidates with a plan
whose variant i is the i-th listed tenant. A GPU not listed holds nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moesim.errors import UserError, first_line


@dataclass(frozen=True)
class GPUPlacement:
    """The variants on one GPU.

    Attributes:
        gpu: the GPU's index in the fleet.
        tenants: global tenant ids, in the order the policy numbers them (local 0..n−1).
        policy: policy name for this GPU; empty: the job's policy.
        policy_params: parameters of that policy (empty: the job's policy parameters, or defaults).
    """

    gpu: int
    tenants: tuple[int, ...]
    policy: str = ""
    policy_params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    """A placement: which GPU holds which variants.

    Attributes:
        gpus: one entry per GPU that holds something, ascending GPU index.
        strategy: the strategy that produced it (provenance; ``"file"`` for a hand-written one).
    """

    gpus: tuple[GPUPlacement, ...]
    strategy: str = ""
    #: the file it was read from (named in its errors; not part of the placement)
    source: str = field(default="", compare=False, repr=False)

    @property
    def _where(self) -> str:
        return f"placement file {self.source}" if self.source else "placement"

    def __post_init__(self) -> None:
        seen = set()
        w = self._where
        for p in self.gpus:
            if p.gpu in seen:
                raise UserError(f"{w}: GPU {p.gpu} listed twice")
            seen.add(p.gpu)
            if len(set(p.tenants)) != len(p.tenants):
                raise UserError(f"{w}: GPU {p.gpu} lists a tenant twice: {list(p.tenants)}")
            if any((not isinstance(t, int)) or isinstance(t, bool) or t < 0 for t in p.tenants):
                raise UserError(f"{w}: GPU {p.gpu}: tenants must be integers ≥ 0, got {list(p.tenants)}")

    def replicas(self) -> dict[int, tuple[int, ...]]:
        """Tenant → GPUs holding it (ascending)."""
        out: dict[int, list[int]] = {}
        for p in sorted(self.gpus, key=lambda p: p.gpu):
            for t in p.tenants:
                out.setdefault(t, []).append(p.gpu)
        return {t: tuple(g) for t, g in sorted(out.items())}

    def check(self, n_gpus: int, n_tenants: int | None = None) -> None:
        """Refuse GPU indices outside the fleet (and, given ``n_tenants``, tenants outside 0..n−1)."""
        w = self._where
        for p in self.gpus:
            if not 0 <= p.gpu < n_gpus:
                raise UserError(f"{w}: gpu={p.gpu} is not in the fleet; valid: 0..{n_gpus - 1} (the fleet's "
                                f"{n_gpus} GPU{'s' if n_gpus != 1 else ''}: fleet.gpus= or fleet.path= sets them)")
            if n_tenants is not None:
                bad = [t for t in p.tenants if t >= n_tenants]
                if bad:
                    raise UserError(f"{w}: GPU {p.gpu} lists tenants {bad}; the workload has tenants "
                                    f"0..{n_tenants - 1}")

    def to_dict(self) -> dict[str, Any]:
        """The file form."""
        gpus = []
        for p in self.gpus:
            d: dict[str, Any] = {"gpu": p.gpu, "tenants": list(p.tenants)}
            if p.policy:
                d["policy"] = p.policy
            if p.policy_params:
                d["policy_params"] = dict(p.policy_params)
            gpus.append(d)
        return {"strategy": self.strategy, "gpus": gpus}

    @classmethod
    def from_dict(cls, data: Any, where: str = "placement", source: str = "") -> Placement:
        """Parse the file form (UserError naming ``where`` and the field on bad input); ``source``: the file."""
        from moesim.errors import did_you_mean

        bad = sorted(set(data) - {"strategy", "gpus"}) if isinstance(data, dict) else []
        if bad:
            raise UserError(f"{where}: unknown field {bad[0]!r}{did_you_mean(str(bad[0]), ['strategy', 'gpus'])}; "
                            "valid: strategy, gpus")
        if not isinstance(data, dict) or not isinstance(data.get("gpus"), list):
            raise UserError(f"{where}: expected a mapping with a list 'gpus' of {{gpu, tenants}} entries")
        out = []
        fields = ["gpu", "tenants", "policy", "policy_params"]
        for i, e in enumerate(data["gpus"]):
            bad = sorted(set(e) - set(fields)) if isinstance(e, dict) else []
            if bad:  # before the "needs" check: a misspelt 'tennants' is named as such
                raise UserError(f"{where}: gpus[{i}]: unknown field {bad[0]!r}{did_you_mean(str(bad[0]), fields)}; "
                                f"valid: {', '.join(fields)}")
            if not isinstance(e, dict) or "gpu" not in e or "tenants" not in e:
                raise UserError(f"{where}: gpus[{i}] needs 'gpu' (an index) and 'tenants' (a list)")
            if not isinstance(e["gpu"], int) or not isinstance(e["tenants"], list):
                raise UserError(f"{where}: gpus[{i}]: gpu must be an integer and tenants a list of integers")
            params = e.get("policy_params") or {}
            if not isinstance(params, dict):
                raise UserError(f"{where}: gpus[{i}].policy_params must be a mapping")
            out.append(GPUPlacement(e["gpu"], tuple(e["tenants"]), str(e.get("policy") or ""), params))
        return cls(tuple(sorted(out, key=lambda p: p.gpu)), str(data.get("strategy") or ""), source)


def read_mapping(path: str | Path, what: str = "file") -> Any:
    """A YAML or JSON file's content (UserError naming the ``what`` file when missing or unreadable)."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} {str(p)!r}: is a folder; give the YAML or JSON file itself")
    if not p.is_file():
        raise UserError(f"{what} {str(p)!r}: no such file")
    text = p.read_text()
    try:
        if p.suffix == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception as exc:  # a parse error, in one line
        raise UserError(f"{what} {str(p)!r}: cannot parse ({first_line(exc)})") from None


def load_placement(path: str | Path) -> Placement:
    """A placement file (YAML, or JSON by its .json suffix)."""
    return Placement.from_dict(read_mapping(path, "placement file"), f"placement file {path}", str(path))


def save_placement(placement: Placement, path: str | Path) -> Path:
    """Write ``placement`` as YAML (or JSON for a .json path), atomically."""
    from moesim.io import atomic_path

    p = Path(path)
    data = placement.to_dict()
    with atomic_path(p) as tmp:
        if p.suffix == ".json":
            tmp.write_text(json.dumps(data, indent=1) + "\n")
        else:
            import yaml

            tmp.write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=None))
    return p

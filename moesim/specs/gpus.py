"""GPU specifications, loaded from YAML files: datasheet facts, host-link bandwidths and MIG profiles.

The shipped GPUs are ``moesim/specs/data/gpus/*.yaml`` (one file each, marked ``status: measured`` or
``derived``; the field ``derived`` says which figures are not datasheet or measured ones). ``gpu=<name>``
picks a shipped one, ``gpu=path/to/gpu.yaml`` any other (docs/models.md, "Add your GPU"). A missing or
impossible value is refused in one line naming the file and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moesim.errors import UserError, unknown_name

MIB = 1024**2
GB = 1e9


@dataclass(frozen=True, slots=True)
class MIGProfile:
    """One MIG GPU-instance profile.

    Attributes:
        name: e.g. ``"3g.40gb"``.
        compute_slices: the ``g`` of the name (out of 7).
        sms: streaming multiprocessors of the instance.
        memory_bytes: memory of the instance (bytes).
        memory_slices: memory slices (out of 8); the instance's share of HBM bandwidth and L2.
        max_instances: how many such instances a GPU holds at most.
        starts: memory-slot indices (0–7) where an instance of this profile may start.
        span: memory slots the instance occupies from its start.
    """

    name: str
    compute_slices: int
    sms: int
    memory_bytes: int
    memory_slices: int
    max_instances: int
    starts: tuple[int, ...]
    span: int

    @property
    def short(self) -> str:
        """``"3g"`` for ``"3g.40gb"``."""
        return self.name.split(".")[0]

    @property
    def memory_fraction(self) -> float:
        """Share of the GPU's memory bandwidth and L2 (memory slices / 8)."""
        return self.memory_slices / 8


@dataclass(frozen=True, slots=True)
class GPUSpec:
    """A GPU: compute, memory, host link and MIG profiles.

    Attributes:
        name: registry name.
        sms: streaming multiprocessors.
        memory_bytes: device memory (bytes).
        hbm_Bps: HBM bandwidth (bytes/s, datasheet).
        bf16_flops: dense bf16 tensor-core peak (FLOP/s, datasheet).
        l2_bytes: L2 cache (bytes).
        h2d_pinned_Bps: host→device bandwidth from pinned memory (bytes/s).
        h2d_pageable_Bps: host→device bandwidth from pageable memory (bytes/s).
        pcie: host link, for display.
        mig_sms: SMs available to MIG instances in total (A100: 98 of 108).
        mig_profiles: MIG profiles, smallest first.
        derived: which figures are derived rather than datasheet or measured ("" when none).
        fp8_flops: dense fp8 tensor-core peak (FLOP/s; 0 where the GPU has none).
        status: ``measured`` (characterised on the machine itself) or ``derived`` (datasheet and borrowed
            figures only).
        aliases: other names ``gpu=`` accepts.
        source: where the figures come from (the YAML file's ``source``) and the file itself.
    """

    name: str
    sms: int
    memory_bytes: int
    hbm_Bps: float
    bf16_flops: float
    l2_bytes: int
    h2d_pinned_Bps: float
    h2d_pageable_Bps: float
    pcie: str
    mig_sms: int
    mig_profiles: tuple[MIGProfile, ...]
    derived: str = ""
    fp8_flops: float = 0.0
    status: str = "derived"
    aliases: tuple[str, ...] = ()
    source: str = ""

    def profile(self, name: str) -> MIGProfile:
        """A MIG profile by full name (``"3g.40gb"``) or short name (``"3g"``: the smallest such)."""
        for p in self.mig_profiles:
            if p.name == name:
                return p
        for p in self.mig_profiles:
            if p.short == name:
                return p
        raise unknown_name(f"MIG profile of {self.name}", name, [p.name for p in self.mig_profiles])


DATA_DIR = Path(__file__).resolve().parent / "data" / "gpus"
STATUSES = ("measured", "derived")


class _Reader:
    """Typed access to one GPU file's fields; a missing or impossible value is one UserError line."""

    def __init__(self, d: Any, where: str) -> None:
        if not isinstance(d, dict):
            raise UserError(f"{where}: not a YAML mapping of GPU fields")
        self.d, self.where = d, where

    def get(self, key: str, kind: str = "positive", default: Any = None) -> Any:
        if key not in self.d or self.d[key] is None:
            if default is not None:
                return default
            raise UserError(f"{self.where}: field {key!r} missing ({_FIELD_HELP.get(key, kind)})")
        v = self.d[key]
        if kind == "mapping":
            if not isinstance(v, dict):
                raise UserError(f"{self.where}: field {key!r} must be a mapping ({_FIELD_HELP.get(key, '')})")
            return v
        if kind == "str":
            if not isinstance(v, str) or not v:
                raise UserError(f"{self.where}: field {key!r}={v!r} must be a non-empty string")
            return v
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and v not in (
            float("inf"), float("-inf"))
        if kind == "int":
            ok = ok and isinstance(v, int)
        if not ok or (v <= 0 if kind in ("positive", "int") else v < 0):
            need = "an integer > 0" if kind == "int" else ("a number ≥ 0" if kind == "nonneg" else "a number > 0")
            raise UserError(f"{self.where}: field {key!r}={v!r} is impossible: must be {need}")
        return v


_FIELD_HELP = {
    "name": "the name gpu= uses",
    "status": "measured or derived",
    "sms": "streaming multiprocessors, an integer",
    "memory_mib": "device memory in MiB",
    "hbm_GBps": "memory bandwidth in GB/s",
    "bf16_tflops": "dense bf16 tensor-core peak in TFLOP/s",
    "l2_mib": "L2 cache in MiB",
    "host_link": "a mapping: kind (pcie or nvlink-c2c), gen, width, h2d_pinned_GBps, h2d_pageable_GBps",
    "h2d_pinned_GBps": "host→device GB/s from pinned memory",
    "h2d_pageable_GBps": "host→device GB/s from pageable memory",
}


def _mig(d: Any, where: str, gpu_mib: int, gpu_sms: int) -> tuple[int, tuple[MIGProfile, ...]]:
    if d is None:
        return 0, ()
    r = _Reader(d, f"{where}: mig")
    mig_sms = r.get("sms", "int")
    if mig_sms > gpu_sms:
        raise UserError(f"{where}: field 'mig.sms'={mig_sms} is impossible: more than the GPU's {gpu_sms} SMs")
    rows = d.get("profiles")
    if not isinstance(rows, list) or not rows:
        raise UserError(f"{where}: field 'mig.profiles' missing (a list of profiles; drop 'mig' for no MIG)")
    out = []
    for k, row in enumerate(rows):
        pr = _Reader(row, f"{where}: mig.profiles[{k}]")
        name = pr.get("name", "str")
        g, sms, mib = pr.get("slices", "int"), pr.get("sms", "int"), pr.get("memory_mib", "int")
        ms, mx, span = pr.get("memory_slices", "int"), pr.get("max_instances", "int"), pr.get("span", "int")
        starts = row.get("starts")
        bad = None
        if g > 7:
            bad = f"slices={g}: at most 7"
        elif sms > mig_sms:
            bad = f"sms={sms}: more than mig.sms={mig_sms}"
        elif mib > gpu_mib:
            bad = f"memory_mib={mib}: more than the GPU's {gpu_mib}"
        elif not 1 <= ms <= 8 or not 1 <= span <= 8:
            bad = f"memory_slices={ms}, span={span}: each must be 1–8"
        elif mx > 7:
            bad = f"max_instances={mx}: at most 7"
        elif (not isinstance(starts, list) or not starts
              or any(not isinstance(s, int) or s < 0 or s + span > 8 for s in starts)):
            bad = f"starts={starts!r}: a list of memory-slot indices s with 0 ≤ s and s + span ≤ 8"
        if bad:
            raise UserError(f"{where}: mig profile {name!r}: {bad}")
        out.append(MIGProfile(name, g, sms, mib * MIB, ms, mx, tuple(starts), span))
    return mig_sms, tuple(sorted(out, key=lambda p: (p.compute_slices, p.memory_bytes)))


GPU_FIELDS = ("name", "aliases", "status", "source", "derived", "sms", "memory_mib", "hbm_GBps", "bf16_tflops",
              "fp8_tflops", "l2_mib", "host_link", "mig")
LINK_FIELDS = ("kind", "gen", "width", "h2d_pinned_GBps", "h2d_pageable_GBps")
PROFILE_FIELDS = ("name", "slices", "sms", "memory_mib", "memory_slices", "max_instances", "starts", "span")


def _unknown_fields(d: Any, valid: tuple[str, ...], where: str) -> None:
    """Refuse a field the file format does not have, with its nearest valid name: a misspelt optional field
    (``fp8_tflop``) was ignored, and its default (0) used without a word."""
    if not isinstance(d, dict):
        return
    bad = sorted(str(k) for k in d if k not in valid)
    if bad:
        from moesim.errors import did_you_mean

        raise UserError(f"{where}: unknown field {bad[0]!r}{did_you_mean(bad[0], list(valid))}; valid: "
                        f"{', '.join(valid)}")


def gpu_from_dict(d: Any, where: str) -> GPUSpec:
    """A GPUSpec from a parsed GPU file (``where`` names it in errors)."""
    _unknown_fields(d, GPU_FIELDS, where)
    if isinstance(d, dict):
        _unknown_fields(d.get("host_link"), LINK_FIELDS, f"{where}: host_link")
        _unknown_fields(d.get("mig"), ("sms", "profiles"), f"{where}: mig")
        for k, row in enumerate((d.get("mig") or {}).get("profiles") or [] if isinstance(d.get("mig"), dict)
                                else []):
            _unknown_fields(row, PROFILE_FIELDS, f"{where}: mig.profiles[{k}]")
    r = _Reader(d, where)
    name = r.get("name", "str")
    status = r.get("status", "str")
    if status not in STATUSES:
        raise UserError(f"{where}: field 'status'={status!r}: valid: measured, derived")
    sms, mib = r.get("sms", "int"), r.get("memory_mib", "int")
    link = _Reader(r.get("host_link", "mapping"), f"{where}: host_link")
    kind = link.get("kind", "str")
    if kind not in ("pcie", "nvlink-c2c"):
        raise UserError(f"{where}: field 'host_link.kind'={kind!r}: valid: pcie, nvlink-c2c")
    if kind == "pcie":
        gen, width = link.get("gen", "int"), link.get("width", "int")
        if gen > 7 or width not in (1, 2, 4, 8, 16):
            raise UserError(f"{where}: host_link gen={gen} width={width} is impossible (PCIe Gen1–7, x1–x16)")
        text = f"PCIe Gen{gen} x{width}"
    else:
        text = "NVLink-C2C"
    pinned, pageable = link.get("h2d_pinned_GBps"), link.get("h2d_pageable_GBps")
    mig_sms, profiles = _mig(d.get("mig"), where, mib, sms)
    aliases = d.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise UserError(f"{where}: field 'aliases' must be a list of names")
    return GPUSpec(
        name=name, sms=sms, memory_bytes=mib * MIB, hbm_Bps=r.get("hbm_GBps") * GB,
        bf16_flops=r.get("bf16_tflops") * 1e12, l2_bytes=int(r.get("l2_mib") * MIB),
        h2d_pinned_Bps=pinned * GB, h2d_pageable_Bps=pageable * GB, pcie=text, mig_sms=mig_sms,
        mig_profiles=profiles, derived=str(d.get("derived") or ""),
        fp8_flops=r.get("fp8_tflops", "nonneg", 0) * 1e12, status=status, aliases=tuple(aliases),
        source=str(d.get("source") or ""),
    )


def load_gpu_file(path: str | Path) -> GPUSpec:
    """A GPU from a YAML file; a missing file or bad value is one UserError line."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"gpu={str(path)!r}: no such GPU file")
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return gpu_from_dict(d, str(p))


def _shipped() -> dict[str, GPUSpec]:
    out: dict[str, GPUSpec] = {}
    for p in sorted(DATA_DIR.glob("*.yaml")):
        g = load_gpu_file(p)
        out[g.name] = g
    return out


GPU_SPECS: dict[str, GPUSpec] = _shipped()
_ALIASES: dict[str, str] = {a: g.name for g in GPU_SPECS.values() for a in g.aliases}
A100_80GB, H100_80GB, H200 = GPU_SPECS["a100-80gb"], GPU_SPECS["h100-80gb"], GPU_SPECS["h200"]


def get_gpu(name: str | GPUSpec) -> GPUSpec:
    """A shipped GPU by name (or alias), or a GPU from a YAML path; an unknown name lists the valid ones.

    A ``GPUSpec`` is returned as it is (a user's GPU file, already loaded, whatever its ``name``).
    """
    if isinstance(name, GPUSpec):
        return name
    if name.endswith((".yaml", ".yml")) or "/" in name:
        return load_gpu_file(name)
    try:
        return GPU_SPECS[_ALIASES.get(name, name)]
    except KeyError:
        raise unknown_name("gpu", name, GPU_SPECS) from None

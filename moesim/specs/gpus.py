"""GPU specifications: datasheet facts, host-link bandwidths and MIG profiles.

Figures come from ../facts/hardware.md (copied into the README's data notes). Where a figure is derived
rather than read off a datasheet or measured, the field ``derived`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.errors import unknown_name

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

    def profile(self, name: str) -> MIGProfile:
        """A MIG profile by full name (``"3g.40gb"``) or short name (``"3g"``: the smallest such)."""
        for p in self.mig_profiles:
            if p.name == name:
                return p
        for p in self.mig_profiles:
            if p.short == name:
                return p
        raise unknown_name(f"MIG profile of {self.name}", name, [p.name for p in self.mig_profiles])


def _profiles(rows: list[tuple[str, int, int, int, int, int, tuple[int, ...], int]]) -> tuple[MIGProfile, ...]:
    return tuple(MIGProfile(n, g, sm, mib * MIB, ms, mx, st, sp) for n, g, sm, mib, ms, mx, st, sp in rows)


# (name, g, SMs, memory MiB, memory slices, max instances, starts, span)
_A100_MIG = _profiles(
    [
        ("1g.10gb", 1, 14, 9_856, 1, 7, (0, 1, 2, 3, 4, 5, 6), 1),
        ("1g.20gb", 1, 14, 19_968, 2, 4, (0, 2, 4, 6), 2),
        ("2g.20gb", 2, 28, 19_968, 2, 3, (0, 2, 4), 2),
        ("3g.40gb", 3, 42, 40_192, 4, 2, (0, 4), 4),
        ("4g.40gb", 4, 56, 40_192, 4, 1, (0,), 4),
        ("7g.80gb", 7, 98, 80_384, 8, 1, (0,), 8),
    ]
)
_H100_MIG = _profiles(
    [
        ("1g.10gb", 1, 16, 9_856, 1, 7, (0, 1, 2, 3, 4, 5, 6), 1),
        ("1g.20gb", 1, 26, 19_968, 2, 4, (0, 2, 4, 6), 2),
        ("2g.20gb", 2, 32, 19_968, 2, 3, (0, 2, 4), 2),
        ("3g.40gb", 3, 60, 40_192, 4, 2, (0, 4), 4),
        ("4g.40gb", 4, 64, 40_192, 4, 1, (0,), 4),
        ("7g.80gb", 7, 132, 80_384, 8, 1, (0,), 8),
    ]
)
_H200_MIG = _profiles(
    [
        ("1g.18gb", 1, 16, 16_384, 1, 7, (0, 1, 2, 3, 4, 5, 6), 1),
        ("1g.35gb", 1, 26, 33_280, 2, 4, (0, 2, 4, 6), 2),
        ("2g.35gb", 2, 32, 33_280, 2, 3, (0, 2, 4), 2),
        ("3g.71gb", 3, 60, 71_424, 4, 2, (0, 4), 4),
        ("4g.71gb", 4, 64, 71_424, 4, 1, (0,), 4),
        ("7g.141gb", 7, 132, 143_360, 8, 1, (0,), 8),
    ]
)

A100_80GB = GPUSpec(
    name="a100-80gb",
    sms=108,
    memory_bytes=81_920 * MIB,
    hbm_Bps=2_039 * GB,
    bf16_flops=312e12,
    l2_bytes=40 * 1024**2,
    h2d_pinned_Bps=25 * GB,
    h2d_pageable_Bps=10 * GB,
    pcie="PCIe Gen4 x16",
    mig_sms=98,
    mig_profiles=_A100_MIG,
    derived="h2d_pageable_Bps (typical Gen4 figure, not measured here)",
)
H100_80GB = GPUSpec(
    name="h100-80gb",
    sms=132,
    memory_bytes=81_920 * MIB,
    hbm_Bps=3_350 * GB,
    bf16_flops=989e12,
    l2_bytes=50 * 1024**2,
    h2d_pinned_Bps=55 * GB,
    h2d_pageable_Bps=6.5 * GB,
    pcie="PCIe Gen5 x16",
    mig_sms=132,
    mig_profiles=_H100_MIG,
    derived="host link taken from the H200 measurement (same Gen5 x16 link); MIG memory sizes as A100-80GB",
)
H200 = GPUSpec(
    name="h200",
    sms=132,
    memory_bytes=143_771 * MIB,
    hbm_Bps=4_800 * GB,
    bf16_flops=989e12,
    l2_bytes=50 * 1024**2,
    h2d_pinned_Bps=55 * GB,
    h2d_pageable_Bps=6.5 * GB,
    pcie="PCIe Gen5 x16",
    mig_sms=132,
    mig_profiles=_H200_MIG,
)

GPU_SPECS: dict[str, GPUSpec] = {g.name: g for g in (A100_80GB, H100_80GB, H200)}


def get_gpu(name: str) -> GPUSpec:
    """Look a GPU up by name; an unknown name lists the valid ones."""
    try:
        return GPU_SPECS[name]
    except KeyError:
        raise unknown_name("gpu", name, GPU_SPECS) from None

"""MIG layouts: which combinations of instance profiles a GPU accepts, and where they sit.

A layout is valid when its instances fit non-overlapping memory-slot placements (each profile may start
only at its allowed slots), use at most 7 compute slices, and respect each profile's instance limit.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cache

from moesim.errors import UserError
from moesim.specs.gpus import GPU_SPECS, GPUSpec, MIGProfile, get_gpu


@dataclass(frozen=True, slots=True)
class MIGInstance:
    """One placed instance: a profile at a memory-slot start."""

    profile: MIGProfile
    start: int


@dataclass(frozen=True, slots=True)
class MIGLayout:
    """A valid set of placed MIG instances, largest first."""

    gpu: str
    instances: tuple[MIGInstance, ...]

    @property
    def name(self) -> str:
        """Layout name from full profile names, e.g. ``"4g.40gb+2g.20gb+1g.10gb"``."""
        return "+".join(i.profile.name for i in self.instances)

    @property
    def short_name(self) -> str:
        """Layout name from short names, e.g. ``"4g+2g+1g"`` (may be ambiguous for 1g profiles)."""
        return "+".join(i.profile.short for i in self.instances)

    @property
    def compute_slices(self) -> int:
        """Compute slices used (at most 7)."""
        return sum(i.profile.compute_slices for i in self.instances)


def _key(profiles: list[MIGProfile]) -> tuple[str, ...]:
    return tuple(sorted((p.name for p in profiles), key=_sort_key))


def _sort_key(name: str) -> tuple[int, int]:
    g, mem = name.split(".")
    return (-int(g[:-1]), -int(mem[:-2]))


def _spec(gpu: GPUSpec | str) -> GPUSpec:
    return gpu if isinstance(gpu, GPUSpec) else get_gpu(gpu)


@cache
def _enumerate(gpu: GPUSpec) -> dict[tuple[str, ...], MIGLayout]:
    found: dict[tuple[str, ...], MIGLayout] = {}
    placements = [(p, s) for p in gpu.mig_profiles for s in p.starts]

    def grow(i: int, used: int, chosen: list[tuple[MIGProfile, int]]) -> None:
        if chosen:
            key = _key([p for p, _ in chosen])
            if key not in found:
                inst = tuple(
                    MIGInstance(p, s) for p, s in sorted(chosen, key=lambda ps: (_sort_key(ps[0].name), ps[1]))
                )
                found[key] = MIGLayout(gpu.name, inst)
        for j in range(i, len(placements)):
            p, s = placements[j]
            mask = ((1 << p.span) - 1) << s
            if used & mask or s + p.span > 8:
                continue
            if sum(q.compute_slices for q, _ in chosen) + p.compute_slices > 7:
                continue
            if sum(1 for q, _ in chosen if q.name == p.name) >= p.max_instances:
                continue
            chosen.append((p, s))
            grow(j + 1, used | mask, chosen)
            chosen.pop()

    grow(0, 0, [])
    return found


def mig_layouts(gpu: GPUSpec | str) -> list[MIGLayout]:
    """Every valid MIG layout of a GPU (distinct profile multisets), largest instances first."""
    layouts = list(_enumerate(_spec(gpu)).values())
    return sorted(layouts, key=lambda lay: (-len(lay.instances), lay.name))


def parse_layout(gpu: GPUSpec | str, text: str) -> MIGLayout:
    """Parse ``"4g+3g"`` or ``"4g.40gb+3g.40gb"``; refuse an invalid layout naming the valid ones."""
    spec = _spec(gpu)
    if not spec.mig_profiles:
        raise UserError(f"{spec.name} has no MIG profiles: MIG layouts need a GPU with MIG")
    parts = [t.strip() for t in text.replace(",", "+").split("+") if t.strip()]
    profiles = [spec.profile(p) for p in parts]
    table = _enumerate(spec)
    key = _key(profiles)
    if key not in table:
        valid = sorted({lay.name for lay in table.values() if _is_maximal(lay, table)})
        raise UserError(
            f"invalid MIG layout {text!r} for {spec.name} (profiles {dict(Counter(p.name for p in profiles))}); "
            f"valid full layouts: {', '.join(valid)} (and any subset of one)"
        )
    return table[key]


def _is_maximal(layout: MIGLayout, table: dict[tuple[str, ...], MIGLayout]) -> bool:
    base = [i.profile.name for i in layout.instances]
    for key in table:
        if len(key) > len(base) and not (Counter(base) - Counter(key)):
            return False
    return True


def equal_layout(gpu: GPUSpec, n: int) -> MIGLayout:
    """The layout with exactly ``n`` instances whose smallest instance is largest (memory, then SMs)."""
    if not gpu.mig_profiles:
        raise UserError(f"{gpu.name} has no MIG: MIG policies need a GPU with MIG profiles "
                        f"(shipped: {', '.join(g for g, s in GPU_SPECS.items() if s.mig_profiles)})")
    layouts = mig_layouts(gpu)
    cands = [lay for lay in layouts if len(lay.instances) == n]
    if not cands:
        most = max((len(lay.instances) for lay in layouts), default=0)
        raise UserError(f"{gpu.name} has no MIG layout with {n} instances (one per tenant; at most {most}): "
                        f"use workload.tenants ≤ {most}, or name a layout with policy.layout=")

    def score(lay: MIGLayout) -> tuple[int, int, int]:
        smallest = min(lay.instances, key=lambda i: (i.profile.memory_bytes, i.profile.sms)).profile
        return (smallest.memory_bytes, smallest.sms, -lay.compute_slices)

    return max(cands, key=score)

"""Service-level objectives: the default targets, defined here once, and per-tenant SLO classes.

A request attains its SLO when its time to first token is within ``ttft_s`` and its time per output token
within ``tpot_s`` (seconds). The default is an interactive service: first token within 2 s, then at most
0.2 s per output token. Tenants may belong to SLO classes with their own targets (``slo_classes`` in the
job config, e.g. ``+slo_classes.gold={ttft_s: 0.5, tpot_s: 0.1, tenants: [0, 1]}``); the others keep the
default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from moesim.errors import UserError

SLO_TTFT_S = 2.0
SLO_TPOT_S = 0.2


@dataclass(frozen=True)
class SLOClass:
    """Targets for a set of tenants.

    Attributes:
        name: label (summary keys ``slo_attainment_<name>``).
        ttft_s: time-to-first-token target (seconds).
        tpot_s: time-per-output-token target (seconds).
        tenants: tenants in the class.
    """

    name: str
    ttft_s: float
    tpot_s: float
    tenants: tuple[int, ...]

    def __post_init__(self) -> None:
        for f in ("ttft_s", "tpot_s"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise UserError(f"slo_classes.{self.name}.{f}={v!r}: must be a finite number > 0 (seconds)")
        if any(not isinstance(t, int) or t < 0 for t in self.tenants):
            raise UserError(f"slo_classes.{self.name}.tenants={list(self.tenants)}: must be integers ≥ 0")


def slo_classes(spec: Mapping[str, Any] | None, n_tenants: int | None = None) -> tuple[SLOClass, ...]:
    """Classes from the config mapping ``name → {ttft_s, tpot_s, tenants}``; a tenant in two is refused, and
    so are a class without tenants and (given ``n_tenants``) a tenant the workload does not have: either
    applied to nobody, and ``slo_attainment_<name>`` came out null without a word."""
    out: list[SLOClass] = []
    seen: dict[int, str] = {}
    for name, c in (spec or {}).items():
        keys = ["ttft_s", "tpot_s", "tenants"]
        bad = sorted(str(k) for k in set(c) - set(keys)) if isinstance(c, Mapping) else []
        if bad:  # {ttft: 0.5, ...} read "expected {ttft_s, tpot_s, tenants}, got {...}": name the key
            from moesim.errors import did_you_mean

            raise UserError(f"slo_classes.{name}: unknown key {bad[0]!r}{did_you_mean(bad[0], keys)}; valid: "
                            f"{', '.join(keys)}")
        if not isinstance(c, Mapping):
            raise UserError(f"slo_classes.{name}: expected {{ttft_s, tpot_s, tenants}}, got {dict(c) if isinstance(c, Mapping) else c!r}")
        cls = SLOClass(str(name), c.get("ttft_s", SLO_TTFT_S), c.get("tpot_s", SLO_TPOT_S),
                       tuple(c.get("tenants") or ()))
        if not cls.tenants:
            raise UserError(f"slo_classes.{name}: no tenants; valid: a list of tenant ids, e.g. "
                            f"'+slo_classes.{name}={{ttft_s: {cls.ttft_s:g}, tpot_s: {cls.tpot_s:g}, tenants: [0, 1]}}'")
        if n_tenants is not None and max(cls.tenants) >= n_tenants:
            raise UserError(f"slo_classes.{name}.tenants={list(cls.tenants)}: tenant {max(cls.tenants)} does not "
                            f"exist; valid: ids in 0..{n_tenants - 1} (workload.tenants={n_tenants})")
        for t in cls.tenants:
            if t in seen:
                raise UserError(f"slo_classes: tenant {t} is in both {seen[t]!r} and {name!r}")
            seen[t] = str(name)
        out.append(cls)
    return tuple(out)


def targets(tenant: np.ndarray, ttft_s: float, tpot_s: float,
            classes: Sequence[SLOClass] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Per-request (TTFT, TPOT) targets for requests of ``tenant`` (seconds)."""
    ttft = np.full(len(tenant), float(ttft_s))
    tpot = np.full(len(tenant), float(tpot_s))
    for c in classes:
        m = np.isin(tenant, c.tenants)
        ttft[m] = c.ttft_s
        tpot[m] = c.tpot_s
    return ttft, tpot

"""Realise a ``Residency`` (expert groups on the GPU or the host) in a ``MoEEngine``'s expert layout.

Imports torch: only the executor uses it.

Positions are numbered ``p = moe_layer × E + expert``. Each tenant walks the residency's groups in order and
takes the next ``group.positions`` of its positions from each group it belongs to; a group shared by several
tenants is one weight copy per position, so its tenants must reach it at the same position (true for the
policies' ``consolidated_groups`` and ``private_groups``; a plan whose shared groups interleave differently
is refused in one line). GPU copies become a layer's device slots (one grouped GEMM over them), host copies
live in pinned host memory and are fetched per use through the engine's synchronous placeholder path.
"""

from __future__ import annotations

import torch

from moesim.calibrate.engine import MoEEngine, _normal
from moesim.cost.base import Residency
from moesim.errors import UserError


def layout_key(residency: Residency) -> tuple:
    """What of a residency the weight layout depends on (groups only: slices and overlaps are not laid out)."""
    return tuple((tuple(sorted(g.tenants)), g.positions, g.on_gpu) for g in residency.groups)


def is_shared_whole(residency: Residency, n_positions: int) -> bool:
    """One GPU group holding every position for every tenant: the engine's default shared expert set."""
    gs = residency.groups
    return len(gs) == 1 and gs[0].on_gpu and gs[0].positions == n_positions


def assign_slots(residency: Residency, n_moe_layers: int, n_experts: int
                 ) -> tuple[list[int], list[int], dict[int, list[list[tuple[bool, int]]]]]:
    """Per MoE layer the number of GPU and host copies, and per tenant/layer/expert (on_gpu, index).

    Pure Python (testable without a device). Raises ``UserError`` when the groups do not cover each
    tenant's positions exactly once or a shared group's tenants reach it at different positions.
    """
    P = n_moe_layers * n_experts
    tenants = sorted({t for g in residency.groups for t in g.tenants})
    cursor = dict.fromkeys(tenants, 0)
    n_gpu = [0] * n_moe_layers
    n_host = [0] * n_moe_layers
    assign: dict[int, list[list[tuple[bool, int]]]] = {
        t: [[(True, -1)] * n_experts for _ in range(n_moe_layers)] for t in tenants}
    for gi, g in enumerate(residency.groups):
        starts = {cursor[t] for t in g.tenants}
        if len(starts) != 1:
            raise UserError(
                f"residency group {gi} (tenants {sorted(g.tenants)}) starts at different positions for its "
                f"tenants ({sorted(starts)}); the executor lays out groups in order (shared groups first)")
        s = starts.pop()
        if s + g.positions > P:
            raise UserError(f"residency group {gi}: tenants {sorted(g.tenants)} get more than {P} positions")
        for p in range(s, s + g.positions):
            layer, e = divmod(p, n_experts)
            counter = n_gpu if g.on_gpu else n_host
            idx = counter[layer]
            counter[layer] += 1
            for t in g.tenants:
                assign[t][layer][e] = (g.on_gpu, idx)
        for t in g.tenants:
            cursor[t] += g.positions
    short = {t: c for t, c in cursor.items() if c != P}
    if short:
        raise UserError(f"residency covers {short} positions of tenants (need {P} each)")
    return n_gpu, n_host, assign


def apply_residency(eng: MoEEngine, residency: Residency, n_tenants: int) -> None:
    """Lay the engine's experts out as ``residency`` says (weights redrawn; non-expert sets kept)."""
    s = eng.spec
    moe_layers = [i for i in range(s.n_layers) if eng.is_moe(i)]
    E = s.n_experts
    g = 2 if eng.swiglu else 1
    dev, dt, gen = eng.device, eng.dtype, eng.gen
    if is_shared_whole(residency, len(moe_layers) * E):
        if eng.remap is None and all(eng.n_gpu_slots[i] == E for i in moe_layers):
            return  # already the default layout
        for layer in moe_layers:
            eng.w_in[layer] = eng.w_out[layer] = None
        for layer in moe_layers:
            eng.w_in[layer] = _normal((E, g * s.d_ff, s.d_model), dev, dt, gen)
            eng.w_out[layer] = _normal((E, s.d_model, s.d_ff), dev, dt, gen)
            eng.n_gpu_slots[layer] = E
            eng.host_in[layer], eng.host_out[layer] = [], []
        eng.remap = None
        return
    n_gpu, n_host, assign = assign_slots(residency, len(moe_layers), E)
    for t in assign:
        if t >= len(eng.tenants):
            raise UserError(f"residency names tenant {t} but the engine built {len(eng.tenants)} non-expert sets")
    for layer in moe_layers:  # free every layer first: peak memory stays one expert set
        eng.w_in[layer] = eng.w_out[layer] = None
        eng.host_in[layer], eng.host_out[layer] = [], []
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    pin = dev.type == "cuda"
    # ``eng.host_pool`` > 0: at most that many distinct host copies, reused in turn (random weights: a fetch
    # moves the same bytes over the same link whichever copy it reads; keeps pinned host memory bounded)
    pool_n = int(getattr(eng, "host_pool", 0) or 0)
    pool: list[tuple[torch.Tensor, torch.Tensor]] = []
    for lm, layer in enumerate(moe_layers):
        if n_gpu[lm]:
            eng.w_in[layer] = _normal((n_gpu[lm], g * s.d_ff, s.d_model), dev, dt, gen)
            eng.w_out[layer] = _normal((n_gpu[lm], s.d_model, s.d_ff), dev, dt, gen)
        eng.n_gpu_slots[layer] = n_gpu[lm]
        for _ in range(n_host[lm]):  # drawn on the device (fast), kept in (pinned) host memory
            if pool_n and len(pool) >= pool_n:
                w_in, w_out = pool[sum(len(h) for h in eng.host_in) % pool_n]
                eng.host_in[layer].append(w_in)
                eng.host_out[layer].append(w_out)
                continue
            pair = []
            for dst, shape in ((eng.host_in[layer], (g * s.d_ff, s.d_model)),
                               (eng.host_out[layer], (s.d_model, s.d_ff))):
                w = _normal(shape, dev, dt, gen).cpu()
                w = w.pin_memory() if pin else w
                dst.append(w)
                pair.append(w)
            pool.append((pair[0], pair[1]))
    remap: list[list[torch.Tensor | None]] = [[None] * s.n_layers for _ in range(n_tenants)]
    for t in range(n_tenants):
        for lm, layer in enumerate(moe_layers):
            if t not in assign:  # a tenant the residency does not serve: route to GPU slot 0 (never used)
                remap[t][layer] = torch.zeros(E, dtype=torch.int64, device=dev)
                continue
            remap[t][layer] = torch.tensor(
                [idx if on_gpu else n_gpu[lm] + idx for on_gpu, idx in assign[t][lm]], device=dev)
    eng.ph_in = torch.empty((g * s.d_ff, s.d_model), device=dev, dtype=dt)
    eng.ph_out = torch.empty((s.d_model, s.d_ff), device=dev, dtype=dt)
    eng.remap = remap

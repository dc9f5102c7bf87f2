"""Turning a plan and the variants' weights into the weights one tenant runs (imports torch)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from moesim.consolidation.plan import ExpertCopy, Plan
from moesim.consolidation.weights import MATRICES, MoELayout, State

#: Combines the members' tensors of a shared copy: (key of the copy's slot, members' tensors) → one tensor.
Combine = Callable[[str, list[torch.Tensor]], torch.Tensor]


def copy_tensors(plan: Plan, states: Sequence[State], layout: MoELayout, copy: ExpertCopy,
                 combine: Combine | None = None) -> dict[str, torch.Tensor]:
    """The w1/w2/w3 of one copy: the source expert's tensors, or the mean of ``mean_of``'s experts
    (or ``combine(key, members' tensors)`` when given, e.g. a TIES merge against the base)."""
    if not copy.mean_of:
        st = states[copy.source_variant]
        return {m: st[layout.key(copy.layer, copy.source_expert, m)] for m in MATRICES}
    members = []
    for u in copy.mean_of:
        e_u = plan.assign[u][copy.layer].index(copy.id)
        members.append((u, e_u))
    out = {}
    if combine is not None:
        for m in MATRICES:
            ref = states[members[0][0]][layout.key(copy.layer, members[0][1], m)]
            ts = [states[u][layout.key(copy.layer, e_u, m)] for u, e_u in members]
            out[m] = combine(layout.key(copy.layer, copy.expert, m), ts).to(ref.dtype)
        return out
    for m in MATRICES:
        ref = states[members[0][0]][layout.key(copy.layer, members[0][1], m)]
        acc = torch.zeros_like(ref, dtype=torch.float32)
        for u, e_u in members:
            acc += states[u][layout.key(copy.layer, e_u, m)].float()
        out[m] = (acc / len(members)).to(ref.dtype)
    return out


def materialize(plan: Plan, states: Sequence[State], layout: MoELayout, variant: int,
                nonexpert_from: int | None = None, combine: Combine | None = None) -> dict[str, torch.Tensor]:
    """The state dict ``variant`` runs under ``plan``.

    Non-expert tensors come from ``nonexpert_from`` (default: the variant itself — partial reconfiguration;
    another index gives the no-reconfiguration ablation). Each expert slot gets the tensors of the copy it
    resolves to. Tensors are shared with ``states``, not copied, unless they are means.
    """
    src = variant if nonexpert_from is None else nonexpert_from
    out = dict(states[src])
    cache: dict[int, dict[str, torch.Tensor]] = {}
    for layer in range(plan.n_layers):
        for e in range(plan.n_experts):
            cid = plan.assign[variant][layer][e]
            if cid not in cache:
                cache[cid] = copy_tensors(plan, states, layout, plan.copies[cid], combine)
            for m in MATRICES:
                out[layout.key(layer, e, m)] = cache[cid][m]
    return out

"""Reading variants' weights and measuring expert distances (imports torch).

Variants are Mixtral-style state dicts: ``*.pt``/``*.pth``/``*.bin`` (``torch.load``, weights only) or
``*.safetensors``. Expert matrices are recognised by Hugging Face Mixtral's key pattern
``…layers.{l}.block_sparse_moe.experts.{e}.w{1,2,3}.weight`` (moesim.tinymoe uses the same names); everything
else is the non-expert set that partial reconfiguration swaps.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from moesim.consolidation.matching import align_to_reference
from moesim.errors import UserError

EXPERT_RE = re.compile(r"^(?P<pre>.*layers\.)(?P<layer>\d+)\.block_sparse_moe\.experts\.(?P<expert>\d+)\.(?P<mat>w[123])\.weight$")
MATRICES = ("w1", "w2", "w3")

State = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class MoELayout:
    """Where the experts of a state dict are.

    Attributes:
        prefix: key prefix up to ``layers.`` (``model.layers.`` for Mixtral and TinyMoE).
        layer_ids: the state dict's layer numbers that hold experts, ascending (MoE layer i = layer_ids[i]).
        n_experts: experts per MoE layer.
        expert_params: parameters of one expert (w1 + w2 + w3).
        nonexpert_params: parameters of everything else.
        dtype_bytes: bytes per parameter of the expert tensors as stored.
    """

    prefix: str
    layer_ids: tuple[int, ...]
    n_experts: int
    expert_params: int
    nonexpert_params: int
    dtype_bytes: int

    @property
    def n_layers(self) -> int:
        return len(self.layer_ids)

    @property
    def expert_bytes(self) -> int:
        return self.expert_params * self.dtype_bytes

    @property
    def nonexpert_bytes(self) -> int:
        return self.nonexpert_params * self.dtype_bytes

    def key(self, layer: int, expert: int, mat: str) -> str:
        """Key of MoE layer ``layer`` (an index into layer_ids), expert ``expert``, matrix ``mat``."""
        return f"{self.prefix}{self.layer_ids[layer]}.block_sparse_moe.experts.{expert}.{mat}.weight"


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Load one variant's weights (CPU tensors); a missing or unreadable file raises one UserError line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"variant file {str(p)!r} not found")
    try:
        if p.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise UserError(f"{str(p)!r}: reading .safetensors needs the 'safetensors' package") from None
            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"variant file {str(p)!r} is not a readable state dict ({type(exc).__name__})") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"variant file {str(p)!r} does not hold a flat name → tensor state dict")
    return dict(state)


def layout_of(state: State, source: str = "variant") -> MoELayout:
    """Find the experts in ``state``; raises UserError when it is not a Mixtral-style MoE."""
    found: dict[tuple[int, int], dict[str, tuple[int, ...]]] = {}
    prefixes = set()
    dtypes = set()
    for k, t in state.items():
        m = EXPERT_RE.match(k)
        if m:
            prefixes.add(m["pre"])
            dtypes.add(t.element_size())
            found.setdefault((int(m["layer"]), int(m["expert"])), {})[m["mat"]] = tuple(t.shape)
    if not found:
        raise UserError(f"{source}: no Mixtral-style expert weights (…layers.L.block_sparse_moe.experts.E.w1.weight)")
    if len(prefixes) != 1 or len(dtypes) != 1:
        raise UserError(f"{source}: experts use several key prefixes or dtypes: {sorted(prefixes)}")
    layer_ids = tuple(sorted({lay for lay, _ in found}))
    n_exp = 1 + max(e for _, e in found)
    shapes = None
    for lay in layer_ids:
        for e in range(n_exp):
            mats = found.get((lay, e))
            if mats is None or set(mats) != set(MATRICES):
                raise UserError(f"{source}: layer {lay} expert {e} lacks some of w1/w2/w3")
            if shapes is None:
                shapes = mats
            elif mats != shapes:
                raise UserError(f"{source}: layer {lay} expert {e} has shapes {mats}, expected {shapes}")
    assert shapes is not None
    expert_params = sum(int(np.prod(s)) for s in shapes.values())
    total = sum(t.numel() for t in state.values())
    return MoELayout(
        prefix=prefixes.pop(),
        layer_ids=layer_ids,
        n_experts=n_exp,
        expert_params=expert_params,
        nonexpert_params=total - expert_params * n_exp * len(layer_ids),
        dtype_bytes=dtypes.pop(),
    )


def check_same_architecture(states: Sequence[State], names: Sequence[str]) -> MoELayout:
    """All variants must have the same keys and shapes; returns their shared layout."""
    if len(states) < 2:
        raise UserError(f"consolidation needs at least 2 variants, got {len(states)}")
    layout = layout_of(states[0], names[0])
    ref = {k: tuple(t.shape) for k, t in states[0].items()}
    for st, name in zip(states[1:], names[1:], strict=True):
        keys = set(st)
        if keys != set(ref):
            diff = sorted(keys.symmetric_difference(ref))[0]
            raise UserError(f"{name}: architecture differs from {names[0]} (key {diff!r} is in only one of them)")
        for k, shape in ref.items():
            if tuple(st[k].shape) != shape:
                raise UserError(f"{name}: {k} has shape {tuple(st[k].shape)}, but {shape} in {names[0]}")
    return layout


def expert_matrix(state: State, layout: MoELayout, layer: int) -> torch.Tensor:
    """All experts of MoE layer ``layer`` flattened and concatenated (w1, w2, w3), float32, shape (E, params)."""
    return torch.stack(
        [torch.cat([state[layout.key(layer, e, m)].reshape(-1).float() for m in MATRICES]) for e in range(layout.n_experts)]
    )


@dataclass(frozen=True)
class Distances:
    """Pairwise expert distances of N variants (float64 numpy arrays).

    Attributes:
        l2: ``l2[u, v, l, i]`` = ‖x_u − x_v‖₂ of the concatenated flattened w1/w2/w3 (the paper's measure),
            shape (N, N, L, E); slots i are variant 0's experts, the others' aligned by ``perm``.
        cosine: 1 − cos(x_u, x_v), same shape.
        perm: ``perm[v, l, i]`` = variant v's expert in slot i (identity unless matching was asked for).
    """

    l2: np.ndarray
    cosine: np.ndarray
    perm: np.ndarray


def expert_distances(states: Sequence[State], layout: MoELayout, permute: bool = False,
                     device: str | torch.device = "cpu") -> Distances:
    """Per-position distances between every pair of variants; with ``permute``, match experts within each
    layer to variant 0's first (exact minimum total L2 per layer)."""
    n, n_layers, n_exp = len(states), layout.n_layers, layout.n_experts
    l2 = np.zeros((n, n, n_layers, n_exp))
    cos = np.zeros((n, n, n_layers, n_exp))
    perm = np.broadcast_to(np.arange(n_exp), (n, n_layers, n_exp)).copy()
    for layer in range(n_layers):
        xs = [expert_matrix(s, layout, layer).to(device) for s in states]  # N × (E, params)
        if permute:
            cost = np.stack([torch.cdist(xs[0][None], x[None])[0].double().cpu().numpy() for x in xs])  # (N, E, E)
            perm[:, layer] = align_to_reference(cost[:, None])[:, 0]
        xs = [x[torch.as_tensor(perm[v, layer], device=x.device)] for v, x in enumerate(xs)]
        for u in range(n):
            for v in range(u + 1, n):
                d = (xs[u] - xs[v]).double().norm(dim=1).cpu().numpy()
                c = 1.0 - torch.nn.functional.cosine_similarity(xs[u].double(), xs[v].double(), dim=1).cpu().numpy()
                l2[u, v, layer] = l2[v, u, layer] = d
                cos[u, v, layer] = cos[v, u, layer] = c
    return Distances(l2=l2, cosine=cos, perm=perm)

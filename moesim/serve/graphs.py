"""Decode steps as CUDA graphs per batch-size bucket, the tenant mix as data. Imports torch.

The executor's graphs are keyed by a step's exact shape, tenant composition included (each tenant's
projections run on its own static slice of the packed batch), so a decode batch whose tenant mix the warm-up
never met runs eagerly (3–6× slower on the H200). A serving engine captures per batch-size bucket instead.
``DecodeGraphs`` does that:

* **Tenants as data.** Every per-tenant weight (norms, QKV and output projections, router, dense/shared FFN,
  embedding, lm_head) is restacked once into one tensor per weight with a leading tenant axis
  (``stack_tenants``; each tenant's tensors become views into it, so swaps that copy into them still work).
  A projection of the packed batch is then one grouped GEMM over tenants (``torch._grouped_mm``, rows grouped
  by the row's tenant with device-side offsets, each group padded to 16 rows, as the experts' GEMM); a tenant
  absent from the batch is an empty group whose weights are not read. Norm weights are gathered per row;
  the embedding is one lookup in the stacked table. No host sync: capturable.
* **Padding to a bucket.** A decode batch of ``B`` sequences runs in the graph of the smallest bucket
  ``≥ B`` (``bucket_sizes``: powers of two below ``max_batch``, then ``max_batch``) and of its longest
  context rounded up to ``kv_bucket``. Pad rows are 1-token sequences with context 0 whose keys go to
  scratch rows past the batch's KV rows; they take the last real row's tenant (no extra weights read) and
  the first real row's expert choice (no extra expert touched), and their outputs are dropped.
* **Captured ahead.** ``capture_all`` captures every (bucket, context bucket) pair up to the run's largest
  batch and context before the timed run: no decode step runs eagerly because its mix was unseen.

``plan_decode`` (pure Python, tested on CPU) builds a step's padded inputs; ``mixed_step`` is the forward pass
(also run eagerly on CPU, where the tests check it against ``MoEEngine.step``), in pieces: ``mixed_embed``,
``mixed_layers(lo, hi)``, ``mixed_head``. A decode step that fetches host-resident experts replays a graph of
its first pieces only and runs the layers that fetch eagerly (``DecodeGraphs.run_split``: piecewise graphs);
so does a prefill that fetches (``PrefillGraphs.run_split``: a prefix graph per token bucket).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from moesim.calibrate.engine import ALIGN_ROWS, AttnMeta, MoEEngine
from moesim.errors import first_line
from moesim.serve.buckets import (
    bucket_for,
    bucket_sizes,
    kv_round,
    prefill_bucket_for,
    prefill_bucket_sizes,
)

_LAYER_LISTS = ("attn_norm", "wqkv", "wo", "ffn_norm", "router", "dense_in", "dense_out", "shared_in",
                "shared_out", "shared_gate")


@dataclass(frozen=True)
class DecodePlan:
    """A decode step's padded inputs (host lists, ``bucket`` rows; sequences sorted by tenant, stable).

    Attributes:
        bucket: rows of the graph (sequences, pads included).
        n_real: real sequences (the first ``n_real`` rows).
        order: ``order[i]``: the caller's index of row i (real rows only).
        tenant, pos: per row: tenant, position of its new token (= its context).
        cu_k: cumulative keys per row (``bucket + 1``); each row has ``context + 1`` keys.
        slots: KV-cache row of each row's new token (pads: scratch rows after the real rows').
        pad: per row, True for a pad row.
        max_k: the graph's key bound (longest real key length rounded up to the context bucket).
        kv_rows: cache rows the step touches (real and pad).
    """

    bucket: int
    n_real: int
    order: tuple[int, ...]
    tenant: tuple[int, ...]
    pos: tuple[int, ...]
    cu_k: tuple[int, ...]
    slots: tuple[int, ...]
    pad: tuple[bool, ...]
    max_k: int
    kv_rows: int


def plan_decode(tenants: tuple[int, ...], contexts: tuple[int, ...], sizes: tuple[int, ...],
                kv_bucket: int) -> DecodePlan:
    """Pad a decode batch (one new token per sequence at context ``contexts[i]``) to its bucket."""
    if not tenants or len(tenants) != len(contexts):
        raise ValueError("a decode step needs ≥ 1 sequence and one context per tenant entry")
    n = len(tenants)
    b = bucket_for(n, sizes)
    order = tuple(sorted(range(n), key=lambda i: tenants[i]))
    tn = [tenants[i] for i in order]
    pos = [contexts[i] for i in order]
    cu, slots = [0], []
    for c in pos:
        slots.append(cu[-1] + c)
        cu.append(cu[-1] + c + 1)
    for _ in range(b - n):  # pad: one key each, in scratch rows after the real ones
        slots.append(cu[-1])
        cu.append(cu[-1] + 1)
    return DecodePlan(bucket=b, n_real=n, order=order, tenant=tuple(tn + [tn[-1]] * (b - n)),
                      pos=tuple(pos + [0] * (b - n)), cu_k=tuple(cu), slots=tuple(slots),
                      pad=(False,) * n + (True,) * (b - n), max_k=kv_round(max(pos) + 1, kv_bucket),
                      kv_rows=cu[-1])


# ---- tenant-stacked weights -----------------------------------------------------------------------
@dataclass
class Stacked:
    """Per weight a (T, ...) stack; per MoE layer the remap as a (T, E) table (None: identity)."""

    embed: torch.Tensor
    lm_head: torch.Tensor
    final_norm: torch.Tensor
    layers: dict[str, list[torch.Tensor | None]]
    remap: list[torch.Tensor | None] | None = None
    remap_of: Any = None  # the engine's remap object the table was built from


@torch.no_grad()
def stack_tenants(eng: MoEEngine) -> Stacked:
    """Restack every tenant's non-expert tensors (one (T, ...) tensor per weight; tenants keep views)."""
    ts = eng.tenants

    def stack(get, put) -> torch.Tensor:
        st = torch.stack([get(w) for w in ts])
        for t, w in enumerate(ts):
            put(w, st[t])
        return st

    tied = all(w.lm_head is w.embed for w in ts)
    embed = stack(lambda w: w.embed, lambda w, v: setattr(w, "embed", v))
    if tied:
        for w in ts:
            w.lm_head = w.embed
        lm = embed
    else:
        lm = stack(lambda w: w.lm_head, lambda w, v: setattr(w, "lm_head", v))
    final = stack(lambda w: w.final_norm, lambda w, v: setattr(w, "final_norm", v))
    layers: dict[str, list[torch.Tensor | None]] = {}
    for name in _LAYER_LISTS:
        lists = [getattr(w, name) for w in ts]
        out: list[torch.Tensor | None] = []
        for i in range(eng.spec.n_layers):
            if not lists[0] or i >= len(lists[0]) or lists[0][i] is None:
                out.append(None)
                continue
            st = torch.stack([lst[i] for lst in lists])
            for t, lst in enumerate(lists):
                lst[i] = st[t]
            out.append(st)
        layers[name] = out
    if eng.device.type == "cuda":
        torch.cuda.empty_cache()
    return Stacked(embed=embed, lm_head=lm, final_norm=final, layers=layers)


def _remap_table(eng: MoEEngine, st: Stacked) -> list[torch.Tensor | None] | None:
    if eng.remap is None:
        return None
    if st.remap_of is not eng.remap:
        st.remap = [torch.stack([eng.remap[t][i] for t in range(len(eng.tenants))])
                    if eng.remap[0][i] is not None else None for i in range(eng.spec.n_layers)]
        st.remap_of = eng.remap
    return st.remap


# ---- the forward pass -----------------------------------------------------------------------------
@dataclass
class DecodeBuffers:
    """Device inputs of a decode step (a captured graph's static buffers)."""

    ids: torch.Tensor  # (N,) int64
    pos: torch.Tensor  # (N,) int64
    tid: torch.Tensor  # (N,) int64 tenant of each row
    pad: torch.Tensor  # (N,) bool
    cu_q: torch.Tensor  # (N+1,) int32
    cu_k: torch.Tensor  # (N+1,) int32
    slots: torch.Tensor  # (N,) int64
    max_k: int
    seqs: list[tuple[int, int]]  # (new, context) per non-empty sequence (the CPU attention fallback)
    max_q: int = 1  # new tokens per sequence, bound (decode: 1)
    last: torch.Tensor | None = None  # (S,) int64 row of each sequence's last token (None: every row, decode)


def make_buffers(p: DecodePlan, device: torch.device, vocab: int, seed: int = 0) -> DecodeBuffers:
    """Device buffers holding plan ``p`` (random token ids, as the executor's inputs)."""
    gen = torch.Generator().manual_seed(seed + p.n_real)
    ids = torch.randint(0, vocab, (p.bucket,), generator=gen)
    n = p.bucket
    return DecodeBuffers(
        ids=ids.to(device), pos=torch.tensor(p.pos, device=device), tid=torch.tensor(p.tenant, device=device),
        pad=torch.tensor(p.pad, device=device), cu_q=torch.arange(n + 1, dtype=torch.int32, device=device),
        cu_k=torch.tensor(p.cu_k, dtype=torch.int32, device=device),
        slots=torch.tensor(p.slots, device=device), max_k=p.max_k,
        seqs=[(1, c) for c in (list(p.pos[: p.n_real]) + [0] * (n - p.n_real))])


def fill_buffers(dst: DecodeBuffers, p: DecodePlan, ids: torch.Tensor) -> None:
    """Copy plan ``p``'s data into captured buffers of the same bucket (same ``max_k`` bound)."""
    dst.ids.copy_(ids, non_blocking=True)
    host = torch.tensor([p.pos, p.tenant, p.slots], dtype=torch.int64)
    dst.pos.copy_(host[0], non_blocking=True)
    dst.tid.copy_(host[1], non_blocking=True)
    dst.slots.copy_(host[2], non_blocking=True)
    dst.pad.copy_(torch.tensor(p.pad), non_blocking=True)
    dst.cu_k.copy_(torch.tensor(p.cu_k, dtype=torch.int32), non_blocking=True)


class _Groups:
    """Rows grouped by tenant for grouped GEMMs: destination rows in a padded buffer, group offsets."""

    def __init__(self, tid: torch.Tensor, n_tenants: int) -> None:
        N = tid.shape[0]
        order = torch.argsort(tid, stable=True)
        t_sorted = tid[order]
        bounds = torch.searchsorted(t_sorted, torch.arange(n_tenants + 1, device=tid.device, dtype=tid.dtype))
        start, counts = bounds[:-1], bounds[1:] - bounds[:-1]
        padded = (counts + ALIGN_ROWS - 1) // ALIGN_ROWS * ALIGN_ROWS
        ends_p = torch.cumsum(padded, 0)
        rank = torch.arange(N, device=tid.device) - start[t_sorted]
        dest = torch.empty_like(order)
        dest[order] = (ends_p - padded)[t_sorted] + rank
        self.dest = dest
        self.offs = ends_p.to(torch.int32)
        self.rows = N + n_tenants * (ALIGN_ROWS - 1)

    def linear(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x (N, in) @ w[tenant of row]ᵀ with w (T, out, in) → (N, out)."""
        buf = x.new_zeros((self.rows, x.shape[1]))
        buf[self.dest] = x
        return torch._grouped_mm(buf, w.transpose(-2, -1), offs=self.offs)[self.dest]


def _norm(x: torch.Tensor, w: torch.Tensor, tid: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[1],), None, eps=1e-5) * w[tid]


def _capture_mixed(owner: Any, buf: Any, cache: Any, fn: Any = None, flag: str = "broken") -> _BucketGraph:
    """Warm up, capture and replay once ``fn(eng, stacked, buf, cache)`` (default ``mixed_step``) on ``buf``
    (CUDA) with ``owner``'s engine, stacked weights and graph pool; on failure ``owner.<flag>`` (``broken``) says
    why and the error is raised (the backend then falls back to the executor's exact-shape graphs)."""
    fn = mixed_step if fn is None else fn
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn(owner.eng, owner.stacked, buf, cache)  # warm-up outside capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=owner.pool, stream=stream):
            out = fn(owner.eng, owner.stacked, buf, cache)
    except Exception as exc:
        torch.cuda.synchronize()
        setattr(owner, flag, f"{type(exc).__name__}: {first_line(exc)}")
        raise
    graph.replay()
    torch.cuda.synchronize()
    return _BucketGraph(graph, buf, out)


@dataclass
class MixedCtx:
    """What every piece of a mixed step reads besides x: rows grouped by tenant, attention metadata, the
    tenant-stacked remap table, the pad mask (device tensors; built once per step, or captured in a graph)."""

    tid: torch.Tensor  # (N,) tenant of each row
    g: _Groups
    meta: AttnMeta
    remap: list[torch.Tensor | None] | None
    pad_col: torch.Tensor  # (N, 1) bool


def mixed_context(eng: MoEEngine, st: Stacked, b: DecodeBuffers) -> MixedCtx:
    """The per-step context of ``b`` (a few small kernels, no host sync)."""
    meta = AttnMeta(cu_q=b.cu_q, cu_k=b.cu_k, max_q=b.max_q, max_k=b.max_k, slots=b.slots, seqs=b.seqs)
    return MixedCtx(tid=b.tid, g=_Groups(b.tid, len(eng.tenants)), meta=meta, remap=_remap_table(eng, st),
                    pad_col=b.pad[:, None])


def mixed_embed(eng: MoEEngine, st: Stacked, b: DecodeBuffers) -> torch.Tensor:
    """Every row's embedding in its tenant's table: (N, d)."""
    T, V = len(eng.tenants), st.embed.shape[1]
    return F.embedding(b.tid * V + b.ids, st.embed.view(T * V, -1))


def mixed_layers(eng: MoEEngine, st: Stacked, b: DecodeBuffers, cache: Any, x: torch.Tensor, lo: int, hi: int,
                 ctx: MixedCtx, moe_hook: Any = None) -> torch.Tensor:
    """Decoder layers ``lo`` … ``hi`` − 1 of every row: x (N, d) → (N, d). A MoE layer with host slots fetches
    through the engine's fetcher (``eng.moe``: a host sync on the routing, then the copies): not capturable.
    ``moe_hook(layer)``: called before each MoE layer's experts (``TorchBackend.fetch_table`` puts a host sync
    there)."""
    s = eng.spec
    tid, g, meta, remap, pad_col = ctx.tid, ctx.g, ctx.meta, ctx.remap, ctx.pad_col
    N = x.shape[0]
    L = st.layers
    for layer in range(lo, hi):
        h = _norm(x, L["attn_norm"][layer], tid)
        qkv = g.linear(h, L["wqkv"][layer])
        if eng.fused_ops:  # one kernel for RoPE and the KV-cache write (moesim.kernels.fused_ops)
            from moesim.kernels.fused_ops import rope_kv

            q = rope_kv(qkv.contiguous(), b.pos, eng.cos, eng.sin, b.slots, cache.k[layer], cache.v[layer],
                        s.n_heads, s.n_kv_heads, s.head_dim)
            o = eng.attend(q, meta, cache.k[layer], cache.v[layer])
        else:
            q = qkv[:, : eng.q_dim].view(N, s.n_heads, s.head_dim)
            k = qkv[:, eng.q_dim : eng.q_dim + eng.kv_dim].view(N, s.n_kv_heads, s.head_dim)
            v = qkv[:, eng.q_dim + eng.kv_dim :].view(N, s.n_kv_heads, s.head_dim)
            o = eng.attention(eng._rope(q, b.pos), eng._rope(k, b.pos), v, meta, cache.k[layer], cache.v[layer])
        x = x + g.linear(o, L["wo"][layer])
        h = _norm(x, L["ffn_norm"][layer], tid)
        if eng.is_moe(layer):
            logits = g.linear(h, L["router"][layer]).float()
            if eng.route_noise is not None:
                logits = logits + eng.route_noise[:N]
            probs = torch.softmax(logits, dim=-1)
            top_w, top_i = torch.topk(probs, s.top_k, dim=-1)
            if s.top_k > 1:
                top_w = top_w / top_w.sum(dim=-1, keepdim=True)
            if remap is not None and remap[layer] is not None:
                top_i = remap[layer][tid[:, None], top_i]
            top_i = torch.where(pad_col, top_i[:1], top_i)  # pads touch no extra expert
            top_w = torch.where(pad_col, top_w[:1], top_w).to(eng.dtype)
            if L["shared_in"][layer] is not None:
                a = g.linear(h, L["shared_in"][layer])
                gate, up = a.chunk(2, dim=-1)
                y = g.linear(F.silu(gate) * up, L["shared_out"][layer])
                if L["shared_gate"][layer] is not None:
                    y = y * torch.sigmoid(g.linear(h, L["shared_gate"][layer]))
                x = x + y
            if moe_hook is not None:
                moe_hook(layer)
            if eng.fused_ops and eng.moe_engine == "triton" and eng._triton_ok(layer, top_i):
                from moesim.kernels.fused_moe import fused_moe

                x = fused_moe(h, eng.w_in[layer], eng.w_out[layer], top_i, top_w, eng.swiglu, residual=x)
            else:
                x = x + eng.moe(h, top_i, top_w, layer)
        else:
            x = x + g.linear(eng._act(g.linear(h, L["dense_in"][layer])), L["dense_out"][layer])
    return x


def mixed_head(eng: MoEEngine, st: Stacked, b: DecodeBuffers, x: torch.Tensor, ctx: MixedCtx) -> torch.Tensor:
    """Final norm, lm_head and greedy pick: next token ids per row (decode) or per sequence slot (prefill,
    ``b.last``)."""
    tid, g = ctx.tid, ctx.g
    if b.last is not None:  # prefill: the lm_head on each sequence's last row only
        x, tid = x[b.last], tid[b.last]
        g = _Groups(tid, len(eng.tenants))
    h = _norm(x, st.final_norm, tid)
    return torch.argmax(g.linear(h, st.lm_head), dim=-1)


def mixed_step(eng: MoEEngine, st: Stacked, b: DecodeBuffers, cache: Any) -> torch.Tensor:
    """One step of every row (tenant per row as data); next token ids: per row (decode, pads included) or per
    sequence slot (prefill, ``b.last``: real sequences first). ``mixed_embed``, ``mixed_layers`` over every
    layer and ``mixed_head`` in sequence."""
    ctx = mixed_context(eng, st, b)
    x = mixed_layers(eng, st, b, cache, mixed_embed(eng, st, b), 0, eng.spec.n_layers, ctx)
    return mixed_head(eng, st, b, x, ctx)


def mixed_prefix(eng: MoEEngine, st: Stacked, b: DecodeBuffers, cache: Any, hi: int
                 ) -> tuple[torch.Tensor, MixedCtx]:
    """The embedding and layers 0 … ``hi`` − 1 (a fetching decode step's capturable part): x and the context
    the rest of the step reads."""
    ctx = mixed_context(eng, st, b)
    return mixed_layers(eng, st, b, cache, mixed_embed(eng, st, b), 0, hi, ctx), ctx


def first_host_layer(eng: MoEEngine) -> int:
    """The first decoder layer holding a host-resident expert slot (``n_layers`` when none)."""
    return next((i for i in range(eng.spec.n_layers) if eng.host_in[i]), eng.spec.n_layers)


# ---- graphs per bucket ----------------------------------------------------------------------------
@dataclass
class _BucketGraph:
    graph: Any
    buf: DecodeBuffers
    out: torch.Tensor


class DecodeGraphs:
    """Decode steps of an engine in CUDA graphs per (batch bucket, context bucket); eager on CPU.

    ``run(tenants, contexts, cache)`` executes one step and returns True when it replayed a graph. With
    ``capture`` off, a step whose bucket has no graph runs eagerly (``mixed_step``) and counts as eager.
    Graphs are dropped when the engine's expert layout or the KV cache object changes (``reset``).

    **Fetching decode steps, piecewise** (``run_split``): with host-resident experts, a layer holding host slots
    syncs with the host on its routing and copies the experts it needs (``eng.moe`` → the engine's fetcher), which
    no graph can hold. The step then replays a *prefix graph* of the embedding and layers 0 … j − 1 (j =
    ``first_host_layer``: the packed layouts of ``moesim.executor.layout.assign_slots`` put host copies in the
    last layers), captured per (bucket, key bound, j) like the full graphs, and runs layers j … L − 1 and the
    head eagerly through the same code (``mixed_layers``, ``mixed_head``) on the graph's buffers and output.
    Resident layers after the first host layer stay eager. j = 0, or no graphs (CPU, ``graphs`` off): the
    whole step runs eagerly through the same code.
    """

    def __init__(self, eng: MoEEngine, max_batch: int, kv_bucket: int, pool: Any = None, seed: int = 0) -> None:
        self.eng = eng
        self.sizes = bucket_sizes(max_batch)
        self.kv_bucket = kv_bucket
        self.cuda = eng.device.type == "cuda"
        self.pool = pool if pool is not None or not self.cuda else torch.cuda.graph_pool_handle()
        self.stacked = stack_tenants(eng)
        self.graphs: dict[tuple[int, int], _BucketGraph] = {}
        self.capture = True
        self.seed = seed
        self._cache_id: int | None = None
        self.broken = ""  # why capturing failed (the backend then stops using the bucketed path)
        # prefix graphs of fetching decode steps, per (bucket, key bound, layers); why capturing one failed
        self.prefix: dict[tuple[int, int, int], _BucketGraph] = {}
        self.prefix_broken = ""
        self.last_out: torch.Tensor | None = None
        self.stats = {"captures": 0, "replays": 0, "eager": 0, "pad_rows": 0, "prefix_captures": 0,
                      "prefix_replays": 0, "split_eager": 0}

    def reset(self) -> None:
        """Drop the graphs (their weights or cache changed)."""
        self.graphs.clear()
        self.prefix.clear()

    def rows_needed(self, max_batch_tokens: int) -> int:
        """KV rows a step may touch: its real rows plus one scratch row per pad (tokens)."""
        return max_batch_tokens + self.sizes[-1]

    def _ids(self, p: DecodePlan) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed + p.n_real)
        return torch.randint(0, self.eng.spec.vocab, (p.bucket,), generator=gen)

    def capture_one(self, bucket: int, max_k: int, cache: Any) -> None:
        """Capture the graph of ``bucket`` rows and key bound ``max_k`` (CUDA only)."""
        self._check_cache(cache)
        p = plan_decode((0,) * bucket, (0,) * bucket, self.sizes, self.kv_bucket)
        p = DecodePlan(**{**p.__dict__, "max_k": max_k})  # the bound, not the contents, shapes the kernels
        buf = make_buffers(p, self.eng.device, self.eng.spec.vocab, self.seed)
        self.graphs[(bucket, max_k)] = _capture_mixed(self, buf, cache)
        self.stats["captures"] += 1

    def capture_all(self, max_batch: int, max_context: int, cache: Any) -> int:
        """Capture every bucket up to ``max_batch`` sequences × every key bound up to ``max_context`` + 1."""
        if not self.cuda:
            return 0
        n = 0
        for b, k in self._shapes(max_batch, max_context):
            if (b, k) not in self.graphs:
                self.capture_one(b, k, cache)
                n += 1
        return n

    def _shapes(self, max_batch: int, max_context: int) -> list[tuple[int, int]]:
        """(batch bucket, key bound) of every graph a run of up to ``max_batch`` sequences and ``max_context``
        tokens of context can replay."""
        top = kv_round(max_context + 1, self.kv_bucket)
        last = bucket_for(min(max_batch, self.sizes[-1]), self.sizes)
        return [(b, k) for b in self.sizes if b <= last for k in range(self.kv_bucket, top + 1, self.kv_bucket)]

    def _check_cache(self, cache: Any) -> None:
        if self._cache_id != id(cache):
            self.graphs.clear()
            self.prefix.clear()
            self._cache_id = id(cache)

    def capture_prefix(self, bucket: int, max_k: int, layers: int, cache: Any) -> _BucketGraph:
        """Capture the prefix graph (embedding + layers 0 … ``layers`` − 1) of ``bucket`` rows and key bound
        ``max_k`` (CUDA only); its output is (x, the step's ``MixedCtx``)."""
        self._check_cache(cache)
        p = plan_decode((0,) * bucket, (0,) * bucket, self.sizes, self.kv_bucket)
        p = DecodePlan(**{**p.__dict__, "max_k": max_k})
        buf = make_buffers(p, self.eng.device, self.eng.spec.vocab, self.seed)
        g = _capture_mixed(self, buf, cache, lambda e, st, b, c: mixed_prefix(e, st, b, c, layers),
                           flag="prefix_broken")
        self.prefix[(bucket, max_k, layers)] = g
        self.stats["prefix_captures"] += 1
        return g

    def capture_prefixes(self, max_batch: int, max_context: int, cache: Any, layers: int | None = None) -> int:
        """Capture the prefix graph of every bucket up to ``max_batch`` × every key bound up to ``max_context`` + 1
        for ``layers`` layers (default: ``first_host_layer``; none when 0 or every layer: nothing fetches)."""
        j = first_host_layer(self.eng) if layers is None else layers
        if not self.cuda or j <= 0 or (layers is None and j >= self.eng.spec.n_layers):
            return 0
        self._check_cache(cache)
        n = 0
        for b, k in self._shapes(max_batch, max_context):
            if (b, k, j) not in self.prefix:
                self.capture_prefix(b, k, j, cache)
                n += 1
        return n

    def run_split(self, tenants: tuple[int, ...], contexts: tuple[int, ...], cache: Any, graphs: bool = True,
                  layers: int | None = None, tail: bool = True) -> bool:
        """Execute one fetching decode step piecewise (see the class docstring): the prefix graph of ``layers``
        layers (default ``first_host_layer``) when ``graphs`` (CUDA), then the rest eagerly (``tail`` False: stop
        after the prefix; ``last_out`` is then None). True when a prefix graph was replayed."""
        p = plan_decode(tenants, contexts, self.sizes, self.kv_bucket)
        self.stats["pad_rows"] += p.bucket - p.n_real
        eng, st = self.eng, self.stacked
        L = eng.spec.n_layers
        j = first_host_layer(eng) if layers is None else layers
        if self.cuda and graphs and j > 0 and not self.prefix_broken:
            self._check_cache(cache)
            key = (p.bucket, p.max_k, j)
            g = self.prefix.get(key)
            if g is None and self.capture:
                g = self.capture_prefix(p.bucket, p.max_k, j, cache)
            if g is not None:
                fill_buffers(g.buf, p, self._ids(p))
                g.graph.replay()
                x, ctx = g.out
                self.last_out = mixed_head(eng, st, g.buf, mixed_layers(eng, st, g.buf, cache, x, j, L, ctx), ctx) \
                    if tail else None
                self.stats["prefix_replays"] += 1
                return True
        buf = make_buffers(p, eng.device, eng.spec.vocab, self.seed)
        x, ctx = mixed_prefix(eng, st, buf, cache, j)
        self.last_out = mixed_head(eng, st, buf, mixed_layers(eng, st, buf, cache, x, j, L, ctx), ctx) \
            if tail else None
        self.stats["split_eager"] += 1
        return False

    def run(self, tenants: tuple[int, ...], contexts: tuple[int, ...], cache: Any, graphs: bool = True) -> bool:
        """Execute one decode step (``graphs``: through the bucket's graph on CUDA); True when one was replayed."""
        p = plan_decode(tenants, contexts, self.sizes, self.kv_bucket)
        self.stats["pad_rows"] += p.bucket - p.n_real
        if self.cuda and graphs:
            self._check_cache(cache)
            key = (p.bucket, p.max_k)
            g = self.graphs.get(key)
            if g is None and self.capture:
                self.capture_one(p.bucket, p.max_k, cache)
                g = self.graphs[key]
            if g is not None:
                fill_buffers(g.buf, p, self._ids(p))
                g.graph.replay()
                self.stats["replays"] += 1
                return True
        buf = make_buffers(p, self.eng.device, self.eng.spec.vocab, self.seed)
        self.last_out = mixed_step(self.eng, self.stacked, buf, cache)
        self.stats["eager"] += 1
        return False


# ---- prefill graphs per token bucket --------------------------------------------------------------
@dataclass(frozen=True)
class PrefillPlan:
    """A prefill's padded inputs (host lists; sequences sorted by tenant, stable, every one from context 0).

    The graph has ``bucket`` token rows and ``n_slots`` sequence slots: the real sequences first, then one
    *sink* sequence holding the ``bucket − tokens`` pad rows (keys in the KV rows after the real ones, causal
    among themselves only), then empty slots (0 tokens: attention skips them). Pad rows take the last real
    row's tenant (no extra weights read) and the first real row's experts (no extra expert touched).

    Attributes:
        bucket: token rows of the graph.
        n_real: real sequences (slots 0 … n_real − 1).
        n_slots: sequence slots of the graph (the policy's batch limit + 1: the sink).
        tokens: real tokens (rows 0 … tokens − 1).
        order: ``order[i]``: the caller's index of sequence slot i (real slots only).
        tenant, pos, pad: per row.
        cu_q: cumulative tokens per slot (``n_slots + 1``); also the keys (context 0).
        last: per slot, the row of its last token (empty slots: the row before, unused).
        seqs: (new tokens, context) of each non-empty slot in order (the CPU attention path).
    """

    bucket: int
    n_real: int
    n_slots: int
    tokens: int
    order: tuple[int, ...]
    tenant: tuple[int, ...]
    pos: tuple[int, ...]
    pad: tuple[bool, ...]
    cu_q: tuple[int, ...]
    last: tuple[int, ...]
    seqs: tuple[tuple[int, int], ...]


def plan_prefill(tenants: tuple[int, ...], new_tokens: tuple[int, ...], bucket: int, n_slots: int) -> PrefillPlan:
    """Pad a prefill (sequence i: ``new_tokens[i]`` tokens of tenant ``tenants[i]`` from context 0) to ``bucket``
    token rows and ``n_slots`` sequence slots (ValueError when it does not fit)."""
    n = len(tenants)
    if not n or len(new_tokens) != n or min(new_tokens) < 1:
        raise ValueError("a prefill needs ≥ 1 sequence, each with ≥ 1 new token")
    total = sum(new_tokens)
    if total > bucket or n > n_slots - 1:
        raise ValueError(f"prefill of {n} sequences, {total} tokens does not fit {n_slots - 1} slots, {bucket} rows")
    order = tuple(sorted(range(n), key=lambda i: tenants[i]))
    tenant: list[int] = []
    pos: list[int] = []
    cu = [0]
    for i in order:
        tenant += [tenants[i]] * new_tokens[i]
        pos += range(new_tokens[i])
        cu.append(cu[-1] + new_tokens[i])
    n_pad = bucket - total
    tenant += [tenant[-1]] * n_pad
    pos += range(n_pad)
    cu.append(bucket)  # the sink
    cu += [bucket] * (n_slots - n - 1)  # empty slots
    last = tuple(max(c - 1, 0) for c in cu[1:])
    seqs = tuple((new_tokens[i], 0) for i in order) + (((n_pad, 0),) if n_pad else ())
    return PrefillPlan(bucket=bucket, n_real=n, n_slots=n_slots, tokens=total, order=order, tenant=tuple(tenant),
                       pos=tuple(pos), pad=(False,) * total + (True,) * n_pad, cu_q=tuple(cu), last=last, seqs=seqs)


def make_prefill_buffers(p: PrefillPlan, device: torch.device, ids: torch.Tensor) -> DecodeBuffers:
    """Device buffers holding plan ``p`` with token ids ``ids`` (``p.bucket`` of them)."""
    cu = torch.tensor(p.cu_q, dtype=torch.int32, device=device)
    return DecodeBuffers(
        ids=ids.to(device), pos=torch.tensor(p.pos, device=device), tid=torch.tensor(p.tenant, device=device),
        pad=torch.tensor(p.pad, device=device), cu_q=cu, cu_k=cu,
        slots=torch.arange(p.bucket, device=device), max_k=p.bucket, seqs=list(p.seqs), max_q=p.bucket,
        last=torch.tensor(p.last, device=device))


def fill_prefill_buffers(dst: DecodeBuffers, p: PrefillPlan, ids: torch.Tensor) -> None:
    """Copy plan ``p``'s data into captured buffers of the same bucket and slot count (one host tensor per
    dtype, two copies)."""
    rows = torch.tensor([p.pos, p.tenant, p.pad], dtype=torch.int64)
    dst.ids.copy_(ids, non_blocking=True)
    dst.pos.copy_(rows[0], non_blocking=True)
    dst.tid.copy_(rows[1], non_blocking=True)
    dst.pad.copy_(rows[2].bool(), non_blocking=True)
    dst.cu_q.copy_(torch.tensor(p.cu_q, dtype=torch.int32), non_blocking=True)
    dst.last.copy_(torch.tensor(p.last, dtype=torch.int64), non_blocking=True)


class PrefillGraphs:
    """Prefill steps of an engine in CUDA graphs per token bucket (``PrefillPlan``); eager on CPU.

    Shares the tenant-stacked weights of the engine's ``DecodeGraphs``. ``capture_all`` captures every bucket up
    to a run's largest possible prefill before the timed run; ``run`` replays the bucket's graph (capturing it
    first when ``capture`` is on), else runs ``mixed_step`` eagerly. ``last_out`` (eager) / the graph's output:
    next token ids per slot, real sequences first.

    **Fetching prefills, piecewise** (``run_split``): with host-resident experts, a prefill replays a prefix graph
    of its bucket (embedding and layers 0 … j − 1, j = ``first_host_layer``; ``capture_prefixes`` captures one
    per bucket ahead) and runs the layers from j on and the head eagerly with the fetcher, on the graph's buffers.
    """

    def __init__(self, eng: MoEEngine, stacked: Stacked, max_seqs: int, smallest: int, pool: Any = None,
                 seed: int = 0) -> None:
        self.eng = eng
        self.stacked = stacked
        self.n_slots = max_seqs + 1
        self.smallest = smallest
        self.cuda = eng.device.type == "cuda"
        self.pool = pool if pool is not None or not self.cuda else torch.cuda.graph_pool_handle()
        self.graphs: dict[int, _BucketGraph] = {}
        self.capture = True
        self.seed = seed
        self._cache_id: int | None = None
        self.broken = ""
        # prefix graphs of fetching prefills, per (bucket, layers); why capturing one failed
        self.prefix: dict[tuple[int, int], _BucketGraph] = {}
        self.prefix_broken = ""
        self.stats = {"captures": 0, "replays": 0, "eager": 0, "pad_tokens": 0, "prefix_captures": 0,
                      "prefix_replays": 0, "split_eager": 0}
        self.last_out: torch.Tensor | None = None

    def reset(self) -> None:
        """Drop the graphs (their weights or cache changed)."""
        self.graphs.clear()
        self.prefix.clear()

    def set_max_seqs(self, max_seqs: int) -> None:
        """Sequence slots for a policy's batch limit (the graphs dropped when it changes)."""
        if max_seqs + 1 != self.n_slots:
            self.n_slots = max_seqs + 1
            self.graphs.clear()
            self.prefix.clear()

    def bucket(self, tokens: int) -> int:
        """The token bucket of a prefill of ``tokens`` tokens."""
        return prefill_bucket_for(tokens, self.smallest)

    def plan(self, tenants: tuple[int, ...], new_tokens: tuple[int, ...]) -> PrefillPlan | None:
        """The padded plan, or None when the prefill has more sequences than slots."""
        if len(tenants) > self.n_slots - 1:
            return None
        return plan_prefill(tenants, new_tokens, self.bucket(sum(new_tokens)), self.n_slots)

    def ids(self, p: PrefillPlan) -> torch.Tensor:
        """Random token ids of the plan (host; seeded by its shape)."""
        gen = torch.Generator().manual_seed(self.seed + p.tokens)
        return torch.randint(0, self.eng.spec.vocab, (p.bucket,), generator=gen)

    def _check_cache(self, cache: Any) -> None:
        if self._cache_id != id(cache):
            self.graphs.clear()
            self.prefix.clear()
            self._cache_id = id(cache)

    def capture_prefix(self, bucket: int, layers: int, cache: Any) -> _BucketGraph:
        """Capture the prefix graph (embedding + layers 0 … ``layers`` − 1) of ``bucket`` token rows (CUDA only;
        the KV cache must hold ``bucket`` rows); its output is (x, the prefill's ``MixedCtx``)."""
        self._check_cache(cache)
        p = plan_prefill((0,), (bucket,), bucket, self.n_slots)
        buf = make_prefill_buffers(p, self.eng.device, self.ids(p))
        g = _capture_mixed(self, buf, cache, lambda e, st, b, c: mixed_prefix(e, st, b, c, layers),
                           flag="prefix_broken")
        self.prefix[(bucket, layers)] = g
        self.stats["prefix_captures"] += 1
        return g

    def capture_prefixes(self, max_tokens: int, cache: Any, layers: int | None = None) -> int:
        """Capture the prefix graph of ``layers`` layers (default ``first_host_layer``; none when 0 or every
        layer: nothing fetches) of every token bucket up to the one of ``max_tokens`` tokens (CUDA); the number
        captured."""
        j = first_host_layer(self.eng) if layers is None else layers
        if not self.cuda or max_tokens < 1 or j <= 0 or (layers is None and j >= self.eng.spec.n_layers):
            return 0
        self._check_cache(cache)
        n = 0
        for b in prefill_bucket_sizes(max_tokens, self.smallest):
            if (b, j) not in self.prefix:
                self.capture_prefix(b, j, cache)
                n += 1
        return n

    def run_split(self, p: PrefillPlan, cache: Any, graphs: bool = True, ids: torch.Tensor | None = None,
                  layers: int | None = None, tail: bool = True) -> bool:
        """Execute plan ``p`` piecewise, as ``DecodeGraphs.run_split`` a fetching decode step: the prefix graph of
        its bucket for ``layers`` layers (default ``first_host_layer``) when ``graphs`` (CUDA), then layers
        ``layers`` … L − 1 and the head eagerly through ``mixed_layers`` / ``mixed_head`` with the engine's
        fetcher (``tail`` False: stop after the prefix; ``last_out`` is then None). Pad rows take the first real
        token's experts: they fetch nothing more. True when a prefix graph was replayed."""
        ids = self.ids(p) if ids is None else ids
        self.stats["pad_tokens"] += p.bucket - p.tokens
        eng, st = self.eng, self.stacked
        L = eng.spec.n_layers
        j = first_host_layer(eng) if layers is None else layers
        if self.cuda and graphs and j > 0 and not self.prefix_broken:
            self._check_cache(cache)
            g = self.prefix.get((p.bucket, j))
            if g is None and self.capture:
                g = self.capture_prefix(p.bucket, j, cache)
            if g is not None:
                fill_prefill_buffers(g.buf, p, ids)
                g.graph.replay()
                x, ctx = g.out
                self.last_out = mixed_head(eng, st, g.buf, mixed_layers(eng, st, g.buf, cache, x, j, L, ctx), ctx) \
                    if tail else None
                self.stats["prefix_replays"] += 1
                return True
        buf = make_prefill_buffers(p, eng.device, ids)
        x, ctx = mixed_prefix(eng, st, buf, cache, j)
        self.last_out = mixed_head(eng, st, buf, mixed_layers(eng, st, buf, cache, x, j, L, ctx), ctx) \
            if tail else None
        self.stats["split_eager"] += 1
        return False

    def capture_one(self, bucket: int, cache: Any) -> None:
        """Capture the graph of ``bucket`` token rows (CUDA only; the KV cache must hold ``bucket`` rows)."""
        self._check_cache(cache)
        p = plan_prefill((0,), (bucket,), bucket, self.n_slots)
        buf = make_prefill_buffers(p, self.eng.device, self.ids(p))
        self.graphs[bucket] = _capture_mixed(self, buf, cache)
        self.stats["captures"] += 1

    def capture_all(self, max_tokens: int, cache: Any) -> int:
        """Capture every bucket up to the one of ``max_tokens`` tokens (CUDA); the number captured."""
        if not self.cuda or max_tokens < 1:
            return 0
        n = 0
        for b in prefill_bucket_sizes(max_tokens, self.smallest):
            if b not in self.graphs:
                self.capture_one(b, cache)
                n += 1
        return n

    def run(self, p: PrefillPlan, cache: Any, graphs: bool = True, ids: torch.Tensor | None = None) -> bool:
        """Execute plan ``p`` (``graphs``: through its bucket's graph on CUDA); True when one was replayed."""
        ids = self.ids(p) if ids is None else ids
        self.stats["pad_tokens"] += p.bucket - p.tokens
        if self.cuda and graphs:
            self._check_cache(cache)
            g = self.graphs.get(p.bucket)
            if g is None and self.capture:
                self.capture_one(p.bucket, cache)
                g = self.graphs[p.bucket]
            if g is not None:
                fill_prefill_buffers(g.buf, p, ids)
                g.graph.replay()
                self.stats["replays"] += 1
                return True
        buf = make_prefill_buffers(p, self.eng.device, ids)
        self.last_out = mixed_step(self.eng, self.stacked, buf, cache)
        self.stats["eager"] += 1
        return False

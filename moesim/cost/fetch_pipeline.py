"""A step that fetches host experts, as a pipeline of host launches and device copies, layer by layer.

Used by ``profile_bucketed`` (``fetch_model=pipeline``) for decode steps, and for prefills the runtime runs
piecewise (``prefill_prefix=graphs``: ``PrefillFetchTable``); an eagerly run prefill keeps the composed model.

How the runtime runs such a step (``moesim.serve``; ``moesim.calibrate.engine.MoEEngine._moe_grouped``): the
host launches each layer's kernels; at every MoE layer that holds a host copy (of any tenant of the instance) it
reads the layer's routing back (a host synchronisation), queues the copies of the host experts the batch picked,
their FFNs, and goes on launching the next layers until the next such layer, where it waits for the device. So:

* a layer with host slots that fetches nothing costs the host's launch time with a sync, ``e_sync`` (the device,
  a few tokens, finishes long before);
* a layer that fetches ``f`` experts costs ``max(e_sync, f·t + g + s)``: the device copies for ``f·t`` (``t``: one
  expert over the link) and then runs the layer's rest, ``g``, while the host, which launched everything up to the
  next sync meanwhile, waits; ``s`` is the sync's own cost (host time after the wait: reading the routing back and
  issuing the copies);
* each fetched expert's FFN then runs on its own (``Fetcher.run``: gather its rows, its three GEMMs, scatter), ``u``
  seconds (the profile's ``expert_one`` at the tokens routed to it, ``ffn_s``). With synchronous fetches
  (``fetch_overlap`` = 0) the runtime copies and computes one expert after the other on the compute stream, so the
  layer costs ``f·(t + u) + g + s``; with overlapped fetches the copies run on a copy stream and each FFN waits only
  for its own copy, so the FFNs hide under the next copies but the last: ``f·t + u + g + s``. The copies themselves
  are never shorter: what overlap hides is compute, not copy time. ``g`` keeps the graph's grouped expert compute
  whole. Measured (``reports/validation/realtime/residuals*.md``): outside their copies, synchronous fetching steps
  took about ``u`` more per fetch than ``f·t + g + s`` (decode: 0.05–0.10 ms per fetch, ``expert_one(1)`` =
  0.093 ms; 256-token prefills: 0.09–0.15 ms, ``expert_one(64)`` = 0.112 ms), overlapped ones did not, and their
  copies took their whole time;
* the layers before the first one holding host slots (the runtime's packed layout puts host copies in the last
  layers) cost their eager launch time without syncs, ``e`` per layer, or, when the runtime replays them from a
  CUDA graph (piecewise graphs, ``prefix="graphs"``), the graph's device time;
* layers after it without host slots cost ``e``.

So the step's time outside its copies falls as it fetches more (its launches hide under the copies): measured on
the H200 (``reports/validation/realtime/h200_host``), naive's fetching decode steps (36 fetches in 19 host layers)
spent 35 ms outside their copies, the others (8–17 fetches in 5–9 host layers) 40–63 ms, against 59.5 ms for the
runtime's eager step with a sync at every layer. The earlier rule (``max(synced step, graph)``) gives 59.5 ms
to all. With the prefix in a graph (``reports/validation/realtime/h200_split``), the same steps spent 18–23 ms.

Which layers fetch: each host slot of a layer is reached by the tokens of the tenants that share it (the
residency's groups laid out as ``moesim.executor.layout.assign_slots`` does: each tenant's positions in group
order, layer by layer; a group shared by tenants is one copy); a slot reached by ``n`` tokens is fetched with
probability ``p = expected_active_fraction(n)`` (uniform top-k, or the cost model's skew), independently of the
other slots; a layer's expected fetches are ``Σ p`` and it fetches none with probability ``Π (1 − p)``; given it
fetches, it fetches ``Σ p / (1 − Π (1 − p))`` experts on average, each over ``Σ n·k/E / Σ p`` tokens on average
(``k`` of ``E`` experts per token). Expected fetches are then scaled to the cost
model's own expected fetch count for the step (which knows prefetching and caching), so the copy time is the
cost model's. All times in seconds. Torch-free.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moesim.cost.base import Residency, expected_active_fraction
from moesim.errors import UserError

PREFIX_MODES = ("eager", "graphs")


def host_slots_by_layer(residency: Residency, n_moe_layers: int, n_experts: int
                        ) -> tuple[tuple[frozenset[int], ...], ...]:
    """Per MoE layer, the tenants reaching each of its host copies (empty: the layer holds none).

    The layout of ``moesim.executor.layout.assign_slots`` (pure Python here): each tenant walks the groups in
    order and takes its next ``positions`` positions from each group it belongs to; position ``p`` is in layer
    ``p // n_experts``; a group shared by tenants is one copy reached by all of them (they reach it at the same
    position in every policy's residency; where they do not, the first tenant's position is taken).
    """
    cursor: dict[int, int] = {}
    layers: list[list[frozenset[int]]] = [[] for _ in range(n_moe_layers)]
    for g in residency.groups:
        if not g.tenants:
            continue
        start = min(cursor.get(t, 0) for t in g.tenants)
        if not g.on_gpu:
            for p in range(start, start + g.positions):
                layer = p // n_experts
                if layer < n_moe_layers:
                    layers[layer].append(g.tenants)
        for t in g.tenants:
            cursor[t] = cursor.get(t, 0) + g.positions
    return tuple(tuple(x) for x in layers)


@dataclass(frozen=True)
class LayerFetch:
    """One MoE layer of a step: whether it holds host slots, its expected fetches, P(it fetches none), and the
    expected tokens routed to a fetched expert."""

    host: bool
    fetches: float
    p_none: float
    tokens: float = 1.0


def layer_fetches(slots: tuple[tuple[frozenset[int], ...], ...], tokens: dict[int, int], n_experts: int,
                  top_k: int, skew: float = 0.0) -> tuple[LayerFetch, ...]:
    """Expected fetches per layer for a batch with ``tokens[t]`` tokens of tenant ``t`` (module docstring)."""
    out = []
    for layer in slots:
        if not layer:
            out.append(LayerFetch(False, 0.0, 1.0))
            continue
        f, none, routed = 0.0, 1.0, 0.0
        for ts in layer:
            n = sum(tokens.get(t, 0) for t in ts)
            if n <= 0:
                continue
            p = float(expected_active_fraction(n, n_experts, top_k, skew))
            f += p
            none *= 1.0 - p
            routed += n * top_k / n_experts
        out.append(LayerFetch(True, f, none, routed / f if f > 0 else 1.0))
    return tuple(out)


@dataclass(frozen=True)
class HostTimes:
    """Per-layer host and device times of one step shape (seconds per layer, except ``prefix_s``).

    ``e``: an eager layer's host launch time without a sync; ``e_sync``: with a host sync; ``g``: the layer's device
    time; ``prefix_s``: the time of the layers before the first one holding host slots when they replay from a
    graph (None: they run eagerly, ``e`` each); ``head_s``: the final norm, lm_head and sampling run eagerly after
    the last layer (0 where ``e`` includes its share)."""

    e: float
    e_sync: float
    g: float
    prefix_s: float | None = None
    head_s: float = 0.0


def pipeline_step(layers: tuple[LayerFetch, ...], times: HostTimes, copy_s_per_fetch: float,
                  fetch_scale: float = 1.0, ffn_s: Callable[[float], float] | None = None,
                  overlap: bool = False) -> tuple[float, float]:
    """(step seconds, of them copy seconds) of one fetching decode step (module docstring).

    ``fetch_scale`` multiplies every layer's expected fetches (to match a cost model's own count). ``ffn_s``: seconds
    of one fetched expert's own FFN over the given tokens (None: 0); ``overlap``: the fetches are overlapped (only a
    layer's last FFN is exposed) rather than synchronous (every FFN after its copy).
    """
    first = next((i for i, lf in enumerate(layers) if lf.host), len(layers))
    total = times.prefix_s if times.prefix_s is not None else first * times.e
    s = max(0.0, times.e_sync - times.e)
    copies = 0.0
    for lf in layers[first:]:
        if not lf.host:
            total += times.e
            continue
        f = lf.fetches * fetch_scale
        copies += f * copy_s_per_fetch
        p_some = 1.0 - lf.p_none
        if f <= 0 or p_some <= 0:
            total += times.e_sync
            continue
        n = f / p_some  # fetches of the layer, given it fetches
        u = ffn_s(lf.tokens) if ffn_s is not None else 0.0
        busy = n * copy_s_per_fetch + (u if overlap else n * u) + times.g + s
        total += lf.p_none * times.e_sync + p_some * max(times.e_sync, busy)
    return total + times.head_s, copies


class FetchTable:
    """Per-layer host times of the runtime's eager layers, by (sequences, distinct tenants), from a table.

    ``fetch_table.csv`` (``TorchBackend.fetch_table``): ``n_seqs``, ``n_tenants``, ``eager_layer_s`` (an eager
    layer with a host sync), ``eager_nosync_layer_s`` (without), ``graph_step_s`` (the bucket graph's whole step)
    and optionally prefix graph times (``prefix_<j>_s``: the first ``j`` layers replayed from a graph). Without it,
    ``sync_table.csv`` (the runtime's eager step with and without a sync at every layer: ``eager_sync_s``,
    ``eager_s``) divided by the layers. Lookup: the rows of the nearest tenant count, linear in sequences.
    """

    def __init__(self, folder: Path, n_layers: int) -> None:
        self.n_layers = n_layers
        self.rows: dict[int, list[tuple[int, float, float, dict[int, float], float]]] = {}
        fetch, sync = folder / "fetch_table.csv", folder / "sync_table.csv"
        self.source = ""
        if fetch.is_file():
            self.source = str(fetch)
            for r in self._read(fetch, {"n_seqs", "n_tenants", "eager_layer_s", "eager_nosync_layer_s"}):
                pre = {int(k[7:-2]): float(v) for k, v in r.items()
                       if k.startswith("prefix_") and k.endswith("_s") and k[7:-2].isdigit() and v not in ("", None)}
                head = float(r["eager_head_s"]) if r.get("eager_head_s") not in (None, "") else 0.0
                self._add(int(r["n_tenants"]), int(r["n_seqs"]), float(r["eager_nosync_layer_s"]),
                          float(r["eager_layer_s"]), pre, head)
        elif sync.is_file():
            self.source = str(sync)
            for r in self._read(sync, {"batch", "n_seqs", "eager_s", "eager_sync_s"}):
                if not r["batch"].startswith("decode"):
                    continue
                n = int(r["n_seqs"])
                k = int(r["n_tenants"]) if r.get("n_tenants") else min(2, n)
                self._add(k, n, float(r["eager_s"]) / n_layers, float(r["eager_sync_s"]) / n_layers, {}, 0.0)
        for v in self.rows.values():
            v.sort(key=lambda x: x[0])

    @staticmethod
    def _read(path: Path, need: set[str]) -> list[dict[str, str]]:
        with path.open() as f:
            rows = list(csv.DictReader(f))
        if rows and not need <= set(rows[0]):
            raise UserError(f"{path}: needs columns {sorted(need)}, has {sorted(rows[0])}")
        return rows

    def _add(self, k: int, n: int, e: float, e_sync: float, pre: dict[int, float], head: float) -> None:
        self.rows.setdefault(k, []).append((n, e, max(e, e_sync), pre, head))

    def __bool__(self) -> bool:
        return bool(self.rows)

    def _pts(self, n_tenants: int) -> list[tuple[int, float, float, dict[int, float], float]]:
        return self.rows[min(self.rows, key=lambda m: (abs(m - n_tenants), m))]

    def layer_s(self, n_seqs: int, n_tenants: int) -> tuple[float, float]:
        """(eager layer without sync, with sync), seconds per layer."""
        pts = self._pts(n_tenants)
        xs = [p[0] for p in pts]
        return (float(np.interp(n_seqs, xs, [p[1] for p in pts])),
                float(np.interp(n_seqs, xs, [p[2] for p in pts])))

    def head_s(self, n_seqs: int, n_tenants: int) -> float:
        """The eager head after the last layer (seconds; 0 from a ``sync_table.csv``, whose per-layer times hold it)."""
        pts = self._pts(n_tenants)
        return float(np.interp(n_seqs, [p[0] for p in pts], [p[4] for p in pts]))

    def prefix_s(self, n_seqs: int, n_tenants: int, j: int) -> float | None:
        """The first ``j`` layers replayed from a graph (seconds; linear in ``j`` between measured prefixes and
        through 0 below the first), or None when the table has no prefix times."""
        pts = [(p[0], p[3]) for p in self._pts(n_tenants) if p[3]]
        if not pts:
            return None
        if j <= 0:
            return 0.0
        return _prefix_at(min(pts, key=lambda p: (abs(p[0] - n_seqs), p[0]))[1], j)


def _prefix_at(row: dict[int, float], j: int) -> float:
    """Seconds of a ``j``-layer prefix from measured ones (``row``: layers → seconds): linear between them and
    through 0 below the first, proportional past the last."""
    js = sorted(row)
    if j >= js[-1]:
        return float(row[js[-1]] * j / js[-1])
    return float(np.interp(j, [0, *js], [0.0, *(row[x] for x in js)]))


def tokens_by_tenant(tenants: Iterable[int], tokens_each: int = 1) -> dict[int, int]:
    """Tokens of each tenant in a batch of sequences (``tokens_each`` new tokens per sequence)."""
    out: dict[int, int] = {}
    for t in tenants:
        out[t] = out.get(t, 0) + tokens_each
    return out


class PrefillFetchTable:
    """Per token bucket: the parts of a prefill that fetches host experts, run piecewise by the runtime.

    ``prefill_fetch_table.csv`` (``TorchBackend.fetch_table``): ``tokens`` (the token bucket), ``n_tenants``,
    ``prefill_eager_layer_s`` (one eager layer of the bucket's prefill with a host sync, seconds),
    ``prefill_graph_s`` (the bucket's whole prefill replayed from its graph: device time, seconds) and
    ``prefix_<j>_s`` (input building plus the embedding and the first ``j`` layers replayed from the bucket's prefix
    graph, seconds). Lookup: the rows of the nearest tenant count; the measured bucket nearest ``tokens`` at or
    above it (the largest one past them), its times scaled by ``tokens / bucket`` when no bucket holds it.
    """

    NEED = frozenset({"tokens", "n_tenants", "prefill_eager_layer_s", "prefill_graph_s"})

    def __init__(self, path: Path) -> None:
        self.rows: dict[int, dict[int, tuple[float, float, dict[int, float]]]] = {}
        if not path.is_file():
            return
        rows = FetchTable._read(path, set(self.NEED))
        for r in rows:
            pre = {int(k[7:-2]): float(v) for k, v in r.items()
                   if k.startswith("prefix_") and k.endswith("_s") and k[7:-2].isdigit() and v not in ("", None)}
            self.rows.setdefault(int(r["n_tenants"]), {})[int(r["tokens"])] = (
                float(r["prefill_eager_layer_s"]), float(r["prefill_graph_s"]), pre)

    def __bool__(self) -> bool:
        return bool(self.rows)

    def times(self, tokens: int, n_tenants: int, j: int, n_layers: int) -> tuple[float, float, float]:
        """(eager layer with a sync, whole graph, prefix of ``j`` of ``n_layers`` layers) seconds for a prefill of
        ``tokens`` tokens (without prefix columns: the whole graph's share of the layers)."""
        by = self.rows[min(self.rows, key=lambda m: (abs(m - n_tenants), m))]
        buckets = sorted(by)
        b = next((x for x in buckets if x >= tokens), buckets[-1])
        e, g, pre = by[b]
        scale = tokens / b if tokens > b else 1.0
        if pre and j > 0:
            p = _prefix_at(pre, j)
        else:
            p = g * j / n_layers if j > 0 else 0.0
        return e * scale, g * scale, p * scale

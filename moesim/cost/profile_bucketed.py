"""``profile_bucketed``: ``profile_mixed``, with decode steps timed as the runtime runs them (bucket CUDA graphs).

The real-time runtime (``moesim.serve``) runs a decode step whose experts are all resident as the replay of a CUDA
graph captured per batch-size bucket (1, 2, 4, … sequences; the batch padded to its bucket, the tenant mix as
data) and key-length bucket (the longest context rounded up to ``kv_bucket``), after building the step's inputs
on the host. Its time is therefore a function of the bucket, the number of distinct tenants (their non-expert
weights are read once each) and the key bucket, measured on that engine (``TorchBackend.decode_table``, written
as ``decode_table.csv`` by the device script) rather than composed from the executor's per-op profile. The
table's rows: ``n_seqs``, ``bucket``, ``n_tenants``, ``context``, ``step_s``.

Lookup of a decode step of ``B`` sequences of ``k`` distinct tenants, longest context ``c``: the rows measured at
``B`` sequences, else those of the nearest measured size in ``B``'s bucket, else the nearest size; of them the
largest measured tenant count ≤ ``k``; then the key bucket of ``c`` (``kv_round(c + 1)``): the row of the measured
context with the same key bucket, linear in the key bucket between and beyond the measured ones.

Resident prefills (every sequence from context 0, no host experts) run in the CUDA graph of their token bucket
when the runtime captures them so (``prefill_table.csv`` with ``bucket``/``bucket_s``: ``PrefillTable``); else
they are the graph profile's. Every other step (steps fetching host experts, and prefills under a streamed swap,
which run eagerly) is ``profile_mixed``'s with the runtime's host layout (``host_layout=packed``), plus the host
synchronisations measured beside the table (``sync_table.csv``: eager steps without and with a host sync per
layer; rows keyed by distinct tenants, ``SyncScale``; ``sm<N>/sync_table.csv``: the same on a green context of
``N`` SMs, used for slices within 16 SMs of ``N``). All times in seconds; tables' token counts in tokens.

A fetching decode step is host-bound: the runtime launches it eagerly and reads each host layer's routing on the
host, and its kernels (a few tokens) finish long before the next launches. Its time outside the copies is then the
runtime's own eager step time, not the eager profile's composition of the ops of its residency (which moves
expert compute between resident and host experts, compute the launches hide anyway). Measured in the h200x2
matrix: outside their copies, the fetching decode steps of one tenant took 36–47 ms (mean ≈ 41) in all eight
runs with host experts, whatever their fetches (8–36 per step) or the layers holding host copies (5–19), against
40.5 ms for the runtime's eager one-tenant step with a host sync per layer (``sync_table.csv``); the composition
gave 34–42 ms, falling with more host positions (``decode_host_bound``).

On a slice (MIG emulated as a green context of 64 of 132 SMs), an eager step is host-bound or GPU-bound: its
launch gaps and per-layer host syncs are host time, unchanged by the slice, while its kernels run up to 2× slower
and hide them (``slice_bound``). Measured in ``reports/validation/realtime/h200x2/mig_light``: a 256-token prefill
with 60 host copies took 452 ms alone on a slice, 69.7 ms of it outside its copies, against 70.1 ms for the graph
profile on the slice and 98 ms for the eager profile scaled op by op plus the whole-GPU syncs. Decode steps are
left op by op: a prefill's kernels are GPU-bound already on the whole GPU (the runtime's eager 256-token prefill
42.5 ms, its graph 39.6 ms), a decode step's are not (34.8 against 14.8 ms), and the fetching decode steps measured
alone on the slice spent 35–60 ms outside their copies for identical work, above both the host-bound bound
(37.6 ms) and the additive one (host-bound + the slice's extra GPU time, ~44 ms): not explained by the slice.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moesim.cost import COST_MODELS
from moesim.cost.base import CostModel, DecodeRun, ExpertGroup, Residency, SeqWork, StepCost
from moesim.cost.fetch_pipeline import (
    PREFIX_MODES,
    FetchTable,
    HostTimes,
    PrefillFetchTable,
    host_slots_by_layer,
    layer_fetches,
    pipeline_step,
    tokens_by_tenant,
)
from moesim.cost.profile_mixed import ProfileMixedConfig, ProfileMixedCost
from moesim.errors import UserError
from moesim.serve.buckets import prefill_bucket_for
from moesim.specs import GPUSpec, ModelSpec

FETCH_MODELS = ("pipeline", "host_bound")


@dataclass(frozen=True)
class ProfileBucketedConfig:
    """Attributes:
    table: ``decode_table.csv`` measured on the runtime's engine (required).
    kv_bucket: the runtime's key-length bucket (tokens).
    host_sync_s: as ``profile_mixed`` (seconds per MoE layer added to a fetching step; default 0: the
        synchronisations are in ``sync_scale``); −1: the median ``per_layer_s`` of the decode rows of
        ``sync_table.csv`` beside ``table``.
    sync_scale: add to a step that fetches host experts the measured difference (eager step with a host sync
        at every layer, ``sync_table.csv`` beside ``table``) − (the eager profile's step of the same shape),
        interpolated in the number of sequences (decode) or one value (prefill); without the file, 0. Additive:
        the synchronisations cost host time, which does not shrink or grow with a slice's SMs.
    routing_skew, overlap_bound: as ``profile_mixed``.
    host_layout: as ``profile_mixed``; default ``packed``, as the runtime lays experts out.
    prefill_table: ``auto`` (``prefill_table.csv`` beside ``table`` when it has the ``bucket``/``bucket_s``
        columns), a path, or ``off``: time a resident prefill (every sequence from context 0, no host experts,
        not under a streamed swap) as the CUDA graph of its token bucket, padded (``PrefillTable``); without
        bucket columns, the graph profile as before.
    decode_host_bound: a decode step that fetches host experts (whole GPU) is host-bound: outside its copies it
        takes the larger of the runtime's measured eager decode step with a host sync per layer (``sync_table.csv``
        ``eager_sync_s``, rows as ``sync_scale``) and its GPU time (the graph profile), instead of the eager
        profile's op-by-op composition plus the sync difference (module docstring). Used by
        ``fetch_model=host_bound``.
    fetch_model: ``pipeline`` (default): a fetching decode step is the layer-by-layer pipeline of host launches
        and device copies of ``moesim.cost.fetch_pipeline`` (its launches hide under its copies where it fetches),
        timed from ``fetch_table.csv`` (else ``sync_table.csv``) beside ``table``; ``host_bound``: the rule above.
        Without either table, the rule above.
    expert_link_Bps: the pinned host→device rate of one expert copy (bytes per second) instead of the profile's
        (0: the profile's). ``python -m moesim.serve.validate`` sets it from the rate measured in the same call
        (``link_share.json`` beside ``table``: ``fetch_GBps``) or, as a diagnostic, from the run's own copies.
    fetch_ffn: in the pipeline (``fetch_model=pipeline``: fetching decode steps, and prefills with
        ``prefill_prefix=graphs``), each fetched expert's own FFN (the graph profile's ``expert_one`` at the tokens
        routed to it, seconds) follows its copy: after every copy with synchronous fetches, only the layer's last
        one with overlapped fetches (``fetch_overlap`` > 0), whose copies are then counted whole (overlap hides the
        FFNs under the copies, not the copies under compute; ``moesim.cost.fetch_pipeline``). False: no FFN term,
        and the copies hidden as ``profile_mixed`` hides them (``fetch_overlap`` bounded by the expert compute).
    swap_link_Bps: the pinned host→device rate of a non-expert-set swap (bytes per second) instead of the
        profile's (0: the profile's). ``python -m moesim.serve.validate link=run`` sets it from the run's own swap
        copies (a diagnostic, as ``expert_link_Bps``).
    prefill_prefix: how the runtime ran a prefill that fetches host experts: ``eager`` (the whole step launched one
        op at a time: ``profile_mixed`` plus the measured syncs, as above) or ``graphs`` (piecewise: the layers
        before the first one holding host slots from the token bucket's prefix graph, the rest eagerly; timed as
        ``fetch_pipeline.pipeline_step`` from ``prefill_fetch_table.csv`` beside ``table``).
    fetch_prefix: how the runtime ran the layers before the first one holding host slots in a fetching decode
        step: ``eager`` (launched one by one) or ``graphs`` (replayed from a CUDA graph, the runtime's piecewise
        graphs: ``fetch_table.csv``'s prefix times, else the decode table's step × the layers' share).
    slice_bound: on a partial slice (a green context's share of the SMs), time an eagerly run prefill outside its
        copies as the larger of its host-bound time (the eager profile + the host syncs on the whole GPU: launch
        gaps and synchronisations are host time, which a slice's SM share does not change) and its GPU time on
        the slice (the graph profile on the slice): kernels slowed by the slice hide the launch gaps and syncs
        first (module docstring). Off, and for decode steps: the eager profile scaled to the slice op by op,
        plus the syncs.
    """

    name: str = "profile_bucketed"
    table: str = ""
    kv_bucket: int = 256
    host_sync_s: float = 0.0
    sync_scale: bool = True
    routing_skew: float = 0.0
    overlap_bound: bool = True
    host_layout: str = "packed"
    slice_bound: bool = True
    prefill_table: str = "auto"
    decode_host_bound: bool = True
    fetch_model: str = "pipeline"
    fetch_prefix: str = "eager"
    expert_link_Bps: float = 0.0
    swap_link_Bps: float = 0.0
    prefill_prefix: str = "eager"
    fetch_ffn: bool = True

    def __post_init__(self) -> None:
        if not self.table:
            raise UserError("cost=profile_bucketed needs table=<decode_table.csv> (measured by the runtime's "
                            "device script: TorchBackend.decode_table)")
        if self.kv_bucket < 1:
            raise UserError(f"kv_bucket={self.kv_bucket}: must be ≥ 1")
        if not self.prefill_table:
            raise UserError("cost.prefill_table is empty: auto, off or a prefill_table.csv path")
        if self.fetch_model not in FETCH_MODELS:
            raise UserError(f"cost.fetch_model={self.fetch_model!r}: valid: {', '.join(FETCH_MODELS)}")
        if self.swap_link_Bps < 0:
            raise UserError(f"cost.swap_link_Bps={self.swap_link_Bps}: must be ≥ 0 (bytes per second; 0: the "
                            "profile's)")
        if self.expert_link_Bps < 0:
            raise UserError(f"cost.expert_link_Bps={self.expert_link_Bps}: must be ≥ 0 (bytes per second; 0: the "
                            "profile's)")
        if self.prefill_prefix not in PREFIX_MODES:
            raise UserError(f"cost.prefill_prefix={self.prefill_prefix!r}: valid: {', '.join(PREFIX_MODES)}")
        if self.fetch_prefix not in PREFIX_MODES:
            raise UserError(f"cost.fetch_prefix={self.fetch_prefix!r}: valid: {', '.join(PREFIX_MODES)}")


def _bucket(n: int) -> int:
    b = 1
    while b < n:
        b *= 2
    return b


class DecodeTable:
    """The measured decode-step times, looked up as the module docstring says."""

    def __init__(self, path: str | Path, kv_bucket: int) -> None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"table={path}: no such file (a decode_table.csv from the runtime's device script)")
        need = {"n_seqs", "bucket", "n_tenants", "context", "step_s"}
        with p.open() as f:
            rows = list(csv.DictReader(f))
        if not rows or not need <= set(rows[0]):
            raise UserError(f"table={path}: needs columns {sorted(need)}")
        self.kv_bucket = kv_bucket
        self.rows: dict[tuple[int, int], list[tuple[int, float]]] = {}  # (n_seqs, n_tenants) → (kv, s) sorted
        self.buckets: dict[int, int] = {}
        for r in rows:
            n, k, ctx, s = int(r["n_seqs"]), int(r["n_tenants"]), int(r["context"]), float(r["step_s"])
            self.rows.setdefault((n, k), []).append((self.kv(ctx), s))
            self.buckets[n] = int(r["bucket"])
        for v in self.rows.values():
            v.sort()
        self.sizes = sorted(self.buckets)
        self._memo: dict[tuple[int, int, int], float] = {}

    def kv(self, context: int) -> int:
        """The key bucket of a step whose longest context is ``context`` (tokens)."""
        return -(-(context + 1) // self.kv_bucket) * self.kv_bucket

    def _size(self, n: int) -> int:
        if n in self.buckets:
            return n
        same = [m for m in self.sizes if self.buckets[m] == _bucket(n)]
        pool = same or self.sizes
        return min(pool, key=lambda m: (abs(m - n), m))

    def step_s(self, n: int, k: int, context: int) -> float:
        """Seconds of a decode step of ``n`` sequences, ``k`` distinct tenants, longest context ``context``."""
        kv = self.kv(context)
        key = (n, k, kv)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        m = self._size(n)
        ks = sorted(kk for (nn, kk) in self.rows if nn == m)
        kk = max([x for x in ks if x <= k] or ks[:1])
        pts = self.rows[(m, kk)]
        xs = np.array([p[0] for p in pts], dtype=float)
        ys = np.array([p[1] for p in pts], dtype=float)
        if len(xs) == 1 or kv in xs:
            s = float(ys[np.searchsorted(xs, kv)]) if kv in xs else float(ys[0])
        else:
            i = int(np.clip(np.searchsorted(xs, kv) - 1, 0, len(xs) - 2))
            s = float(ys[i] + (ys[i + 1] - ys[i]) * (kv - xs[i]) / (xs[i + 1] - xs[i]))
        s = max(s, float(ys.min()) * 0.5)
        self._memo[key] = s
        return s


class PrefillTable:
    """Resident prefills timed as the runtime runs them: in the CUDA graph of their token bucket.

    The runtime (``moesim.serve.buckets``) runs a prefill of ``T`` prompt tokens in total (every sequence from
    context 0) in the graph captured for the smallest token bucket ``≥ T`` (256, 384, 512, 768, 1024, … on the
    H200), padded: its time is the bucket's, whatever ``T`` inside it. ``prefill_table.csv`` (the runtime's device
    script) holds, per measured prefill, ``bucket`` (tokens) and ``bucket_s`` (seconds, the padded graph's replay
    as the runtime runs it: host input building and synchronisation included), and ``n_tenants``.

    Lookup of ``T`` tokens of ``k`` distinct tenants: the bucket ``b`` (the runtime's rule with the table's
    smallest bucket; without ``moesim.serve.buckets``, the smallest measured bucket ``≥ T``); the bucket's time is
    the ``bucket_s`` of its row nearest in tenant count, then in real tokens (the pads are not free: they take the
    first real row's experts, so a bucket mostly of pads loads one expert pair: in the h200x2b table the 256 bucket
    took 42.0 ms full and 48.9–50.0 ms holding 32–128 real tokens); a bucket without rows is linear in tokens
    between the measured buckets around it, and past the largest one linear in tokens along the last two.
    """

    def __init__(self, path: Path) -> None:
        with path.open() as f:
            rows = [r for r in csv.DictReader(f) if r.get("bucket") and r.get("bucket_s")]
        if not rows:
            raise UserError(f"prefill_table={path}: no row with bucket and bucket_s (the runtime's token-bucket "
                            "prefill times)")
        by: dict[int, list[tuple[int, int, float]]] = {}  # bucket → [(tenants, real tokens, seconds)]
        for r in rows:
            k = int(r["n_tenants"]) if r.get("n_tenants") else 1
            by.setdefault(int(r["bucket"]), []).append((k, int(r["n_seqs"]) * int(r["tokens"]), float(r["bucket_s"])))
        self.by_bucket = by
        self.buckets = sorted(by)
        self.smallest = self.buckets[0]
        self._memo: dict[tuple[int, int], float] = {}

    def bucket(self, tokens: int) -> int:
        """The token bucket a prefill of ``tokens`` tokens runs in."""
        return prefill_bucket_for(tokens, self.smallest)

    def _at(self, b: int, k: int, tokens: int | None = None) -> float:
        """The bucket's time: its measured row nearest in tenants, then in real tokens (``tokens``; default the
        bucket full); between and past measured buckets linear in the bucket's tokens."""
        rows = self.by_bucket.get(b)
        t = b if tokens is None else tokens
        if rows is not None:
            return min(rows, key=lambda r: (abs(r[0] - k), abs(r[1] - t), r[2]))[2]
        xs = self.buckets
        if len(xs) == 1:
            return self._at(xs[0], k) * b / xs[0]
        i = int(np.clip(np.searchsorted(xs, b) - 1, 0, len(xs) - 2))
        lo, hi = self._at(xs[i], k), self._at(xs[i + 1], k)
        return max(lo + (hi - lo) * (b - xs[i]) / (xs[i + 1] - xs[i]), 0.5 * self._at(xs[0], k))

    def step_s(self, tokens: int, n_tenants: int = 1) -> float:
        """Seconds of a resident prefill of ``tokens`` prompt tokens in total, of ``n_tenants`` distinct tenants."""
        key = (tokens, n_tenants)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = self._at(self.bucket(tokens), n_tenants, tokens)
        return hit


def prefill_table_for(setting: str, decode_table: str) -> PrefillTable | None:
    """The ``prefill_table`` setting: ``off``: None; ``auto``: ``prefill_table.csv`` beside the decode table if
    it has bucket columns; else that path (an error if it has none)."""
    if setting == "off":
        return None
    if setting == "auto":
        p = Path(decode_table).parent / "prefill_table.csv"
        if not p.is_file():
            return None
        with p.open() as f:
            head = next(csv.reader(f), [])
        return PrefillTable(p) if {"bucket", "bucket_s"} <= set(head) else None
    p = Path(setting)
    if not p.is_file():
        raise UserError(f"prefill_table={setting}: no such file (a prefill_table.csv from the runtime's device script)")
    return PrefillTable(p)


class SyncScale:
    """Measured (eager step with a host sync per layer) − (eager profile's step), from ``sync_table.csv``.

    Decode rows are kept per number of distinct tenants (column ``n_tenants``; tables without it were measured
    with tenants ``i % min(2, n_seqs)``, so ``min(2, n_seqs)``): an eager step launches each tenant's
    projections on its own, so its host time grows with the tenants it holds, not with its sequences (measured:
    1 sequence of 1 tenant 40.5 ms, 4 sequences of 2 tenants 72.5 ms; the fetching decode steps of one tenant in
    multiplex_host spent the same ~40 ms outside their copies at 1–4 sequences).
    """

    def __init__(self, path: Path, eager: CostModel) -> None:
        self.decode: dict[int, list[tuple[int, float]]] = {}  # tenants → [(n_seqs, seconds)] by n_seqs
        self.synced: dict[int, list[tuple[int, float]]] = {}  # tenants → [(n_seqs, measured synced step s)]
        self.prefill = 0.0
        if not path.is_file():
            return
        with path.open() as f:
            rows = list(csv.DictReader(f))
        # every expert resident and shared by the tenants, as the table was measured (multiplex's layout)
        resident = Residency((ExpertGroup(frozenset(range(8)), eager.model.n_expert_positions, True),))
        pre = []
        for r in rows:
            n, tokens = int(r["n_seqs"]), int(r["tokens"])
            k = int(r["n_tenants"]) if r.get("n_tenants") else min(2, n)
            dec = r["batch"].startswith("decode")
            batch = tuple(SeqWork(i % k, 1, 200) for i in range(n)) if dec else (SeqWork(0, tokens, 0),)
            diff = float(r["eager_sync_s"]) - eager.step(batch, resident).total_s
            (self.decode.setdefault(k, []).append((n, diff)) if dec else pre.append(diff))
            if dec:
                self.synced.setdefault(k, []).append((n, float(r["eager_sync_s"])))
        for v in (*self.decode.values(), *self.synced.values()):
            v.sort()
        if pre:
            self.prefill = float(np.median(pre))

    def synced_s(self, n_seqs: int, n_tenants: int = 1) -> float | None:
        """The measured eager decode step with a host sync per layer (seconds; rows as ``extra_s``), or None."""
        if not self.synced:
            return None
        pts = self.synced[min(self.synced, key=lambda m: (abs(m - n_tenants), m))]
        return float(np.interp(n_seqs, [n for n, _ in pts], [r for _, r in pts]))

    def extra_s(self, decode: bool, n_seqs: int, n_tenants: int = 1) -> float:
        """Seconds for a decode step of ``n_seqs`` sequences of ``n_tenants`` distinct tenants (the rows of that
        tenant count, else the nearest measured one; linear in sequences between them, clamped), or a prefill."""
        if not decode:
            return self.prefill
        if not self.decode:
            return 0.0
        k = min(self.decode, key=lambda m: (abs(m - n_tenants), m))
        pts = self.decode[k]
        return float(np.interp(n_seqs, [n for n, _ in pts], [r for _, r in pts]))


def sync_per_layer(folder: Path) -> float:
    """Median ``per_layer_s`` of the decode rows of ``folder/sync_table.csv`` (≥ 0; 0 without the file)."""
    p = folder / "sync_table.csv"
    if not p.is_file():
        return 0.0
    with p.open() as f:
        vals = [float(r["per_layer_s"]) for r in csv.DictReader(f) if r.get("batch", "").startswith("decode")]
    return max(0.0, float(np.median(vals))) if vals else 0.0


@COST_MODELS.register("profile_bucketed", ProfileBucketedConfig)
class ProfileBucketedCost(CostModel):
    """``profile_mixed``; decode steps without host experts from the runtime's measured bucket table."""

    name = "profile_bucketed"

    def __init__(self, cfg: ProfileBucketedConfig, model: ModelSpec, gpu: GPUSpec) -> None:
        super().__init__(model, gpu)
        self.cfg = cfg
        self.table = DecodeTable(cfg.table, cfg.kv_bucket)
        self.host_sync_s = cfg.host_sync_s if cfg.host_sync_s >= 0 else sync_per_layer(Path(cfg.table).parent)
        self.mixed = ProfileMixedCost(ProfileMixedConfig(routing_skew=cfg.routing_skew, overlap_bound=cfg.overlap_bound,
                                                         host_sync_s=self.host_sync_s, host_layout=cfg.host_layout), model, gpu)
        if cfg.expert_link_Bps > 0:  # the link measured where the runtime served
            for prof in (self.mixed.graphs, self.mixed.eager):
                prof.expert_Bps = {**prof.expert_Bps, True: cfg.expert_link_Bps}
        if cfg.swap_link_Bps > 0:
            for prof in (self.mixed.graphs, self.mixed.eager):
                prof.set_Bps = {**prof.set_Bps, True: cfg.swap_link_Bps}
        self.path = self.mixed.path
        self.meta = self.mixed.meta
        self.derived = self.mixed.derived
        self.sync = SyncScale(Path(cfg.table).parent / "sync_table.csv", self.mixed.eager) if cfg.sync_scale \
            else None
        self._whole_memo: dict[int, tuple[Residency, Residency]] = {}
        self.prefills = prefill_table_for(cfg.prefill_table, cfg.table)
        # host-sync tables measured on a green context of N SMs (``sm<N>/sync_table.csv`` beside the table)
        self.slice_sync: dict[int, SyncScale] = {}
        if cfg.sync_scale:
            for f in sorted(Path(cfg.table).parent.glob("sm*/sync_table.csv")):
                tag = f.parent.name[2:]
                if tag.isdigit():
                    self.slice_sync[int(tag)] = SyncScale(f, self.mixed.eager)
        self._slice_memo: dict[float, SyncScale | None] = {}
        # the pipeline's per-layer host times: beside the table, and per green-context SM count (``sm<N>/``)
        folder = Path(cfg.table).parent
        L = max(1, model.n_layers)
        self.fetch_times = FetchTable(folder, L) if cfg.fetch_model == "pipeline" else None
        self.slice_fetch: dict[int, FetchTable] = {}
        if self.fetch_times is not None:
            for f in sorted(folder.glob("sm*/")):
                tag = f.name[2:]
                if tag.isdigit() and ((f / "fetch_table.csv").is_file() or (f / "sync_table.csv").is_file()):
                    self.slice_fetch[int(tag)] = FetchTable(f, L)
        self._slots: dict[int, tuple[Residency, tuple]] = {}
        self.prefill_fetch = PrefillFetchTable(folder / "prefill_fetch_table.csv") \
            if cfg.prefill_prefix == "graphs" else None

    def _graphs(self, tenants: tuple[int, ...], residency: Residency) -> bool:
        return self.mixed._pick(tenants, residency) is self.mixed.graphs

    def _slice_table(self, residency: Residency) -> SyncScale | None:
        """The host-sync table measured on the SM count nearest the slice's (within 16 SMs), if any."""
        f = residency.slice.sm_fraction
        if f >= 1.0 or not self.slice_sync:
            return None
        if f not in self._slice_memo:
            sms = f * self.mixed.eager.total_sms
            n = min(self.slice_sync, key=lambda m: abs(m - sms))
            self._slice_memo[f] = self.slice_sync[n] if abs(n - sms) <= 16 else None
        return self._slice_memo[f]

    def _partial(self, residency: Residency) -> bool:
        sl = residency.slice
        return self.cfg.slice_bound and (sl.sm_fraction < 1.0 or sl.bw_fraction < 1.0)

    def _whole(self, residency: Residency) -> Residency:
        """``residency`` on all the SMs and HBM (its link share kept); cached per residency object."""
        hit = self._whole_memo.get(id(residency))
        if hit is None or hit[0] is not residency:
            sl = dataclasses.replace(residency.slice, sm_fraction=1.0, bw_fraction=1.0)
            hit = (residency, dataclasses.replace(residency, slice=sl))
            self._whole_memo[id(residency)] = hit
        return hit[1]

    @staticmethod
    def _bound(c: StepCost, host: StepCost, gpu: StepCost) -> StepCost:
        """``c`` (the step on the slice) outside its copies set to max(host-bound, GPU-bound) time."""
        out = max(host.total_s - host.fetch_s, gpu.total_s - gpu.fetch_s)
        return dataclasses.replace(c, overhead_s=c.overhead_s + out - (c.total_s - c.fetch_s))

    def _scaled(self, c: StepCost, decode: bool, n_seqs: int, tenants: tuple[int, ...], residency: Residency,
                steps: int = 1, sync: SyncScale | None = None) -> StepCost:
        """A fetching step plus the measured host-sync difference (``sync_scale``; ``sync``: that table instead),
        never below its fetch time."""
        sync = sync or self.sync
        if sync is None or self._graphs(tenants, residency):
            return c
        extra = sync.extra_s(decode, n_seqs, len(set(tenants))) * steps
        if not decode and self.cfg.fetch_model == "pipeline":
            # the table synced at every layer; the step syncs only at the layers holding host slots
            layers = self._layout(residency)
            extra *= sum(1 for x in layers if x) / max(1, len(layers))
        extra = max(extra, -(c.total_s - c.fetch_s))
        return dataclasses.replace(c, overhead_s=c.overhead_s + extra)

    def _fetch_table(self, residency: Residency) -> FetchTable | None:
        """The per-layer host times for ``residency``'s slice: the green-context table nearest its SMs (within 16),
        the whole GPU's on the whole GPU; None where none was measured."""
        f = residency.slice.sm_fraction
        if f >= 1.0 or not self._partial(residency):
            return self.fetch_times or None
        sms = f * self.mixed.eager.total_sms
        n = min(self.slice_fetch, key=lambda m: abs(m - sms), default=None)
        return self.slice_fetch[n] if n is not None and abs(n - sms) <= 16 else None

    def host_bound_share(self, residency: Residency) -> float:
        """With ``fetch_prefix=graphs`` the runtime replays the layers before the first one holding host slots from a
        graph (one launch) and launches the rest op by op: the share of the MoE layers from the first host layer on
        (head included in it). Else 1.0 (the whole step eager)."""
        if self.cfg.fetch_prefix != "graphs":
            return 1.0
        layers = self._layout(residency)
        first = next((i for i, x in enumerate(layers) if x), len(layers))
        return (len(layers) - first) / max(1, len(layers))

    def _layout(self, residency: Residency) -> tuple:
        hit = self._slots.get(id(residency))
        if hit is None or hit[0] is not residency:
            hit = (residency, host_slots_by_layer(residency, self.model.n_moe_layers, self.model.n_experts))
            self._slots[id(residency)] = hit
        return hit[1]

    def _pipeline(self, c: StepCost, tenants: tuple[int, ...], residency: Residency, context: int,
                  graphs_on: Callable[[Residency], StepCost], steps: int) -> StepCost | None:
        """``c`` (``steps`` fetching decode steps of ``tenants``, ``profile_mixed``'s fetch count and copy time)
        timed outside its copies as the pipeline of ``moesim.cost.fetch_pipeline``; None where it has no table."""
        table = self._fetch_table(residency)
        if table is None or c.expert_fetches <= 0:
            return None
        n, k = len(tenants), len(set(tenants))
        L = max(1, self.model.n_layers)
        layers = layer_fetches(self._layout(residency), tokens_by_tenant(tenants), self.model.n_experts,
                               self.model.top_k, self.cfg.routing_skew)
        expected = sum(lf.fetches for lf in layers)
        if expected <= 0:
            return None
        per_step = c.expert_fetches / steps
        if residency.slice.sm_fraction >= 1.0 and residency.slice.bw_fraction >= 1.0:
            graph_step = self.table.step_s(n, k, context)
        else:
            gc = graphs_on(residency)
            graph_step = (gc.total_s - gc.fetch_s) / steps
        e, e_sync = table.layer_s(n, k)
        prefix = None
        if self.cfg.fetch_prefix == "graphs":
            first = next((i for i, lf in enumerate(layers) if lf.host), len(layers))
            # the table's prefix graphs where it was measured on this slice (whole GPU, or ``sm<N>/fetch_table.csv``)
            on_slice = table is not self.fetch_times
            prefix = table.prefix_s(n, k, first) if residency.slice.sm_fraction >= 1.0 or on_slice else None
            if prefix is None:
                prefix = graph_step * first / L
        times = HostTimes(e=e, e_sync=e_sync, g=graph_step / L, prefix_s=prefix, head_s=table.head_s(n, k))
        total, copies = pipeline_step(layers, times, c.fetch_s / c.expert_fetches, per_step / expected,
                                      **self._ffn(residency))
        return dataclasses.replace(c, overhead_s=c.overhead_s + (total - copies) * steps - (c.total_s - c.fetch_s))

    def _copies(self, residency: Residency) -> Residency:
        """The residency whose fetch time the pipeline takes: with ``fetch_ffn``, nothing of the copies hidden
        (the pipeline places the FFNs under them itself)."""
        return self.mixed._unhidden(residency) if self.cfg.fetch_ffn else residency

    def _ffn(self, residency: Residency) -> dict[str, Any]:
        """``pipeline_step``'s ``ffn_s`` and ``overlap`` for ``residency`` (``fetch_ffn``; off: none)."""
        if not self.cfg.fetch_ffn:
            return {}
        graphs = self.mixed.graphs
        return {"ffn_s": lambda tokens: graphs.expert_one_s(tokens, residency),
                "overlap": residency.fetch_overlap > 0}

    def _prefill_split(self, batch: tuple[SeqWork, ...], residency: Residency) -> StepCost | None:
        """A fetching prefill run piecewise (``prefill_prefix=graphs``) on the whole GPU: the token bucket's prefix
        graph, then the host layers as ``pipeline_step`` (copy-bound or launch-bound each), then the head; the
        fetch count and copy time are ``profile_mixed``'s. None without ``prefill_fetch_table.csv``."""
        if not self.prefill_fetch or self._partial(residency):
            return None
        c = self.mixed.step(batch, self._copies(residency))
        if c.expert_fetches <= 0:
            return None
        tokens: dict[int, int] = {}
        for w in batch:
            tokens[w.tenant] = tokens.get(w.tenant, 0) + w.new_tokens
        layers = layer_fetches(self._layout(residency), tokens, self.model.n_experts, self.model.top_k,
                               self.cfg.routing_skew)
        expected = sum(lf.fetches for lf in layers)
        if expected <= 0:
            return None
        L = max(1, self.model.n_layers)
        first = next((i for i, lf in enumerate(layers) if lf.host), len(layers))
        e, graph, prefix = self.prefill_fetch.times(sum(tokens.values()), len(tokens), first, L)
        head = self.fetch_times.head_s(len(batch), len(tokens)) if self.fetch_times else 0.0
        total, copies = pipeline_step(layers, HostTimes(e=e, e_sync=e, g=graph / L, prefix_s=prefix, head_s=head),
                                      c.fetch_s / c.expert_fetches, c.expert_fetches / expected,
                                      **self._ffn(residency))
        return dataclasses.replace(c, overhead_s=c.overhead_s + (total - copies) - (c.total_s - c.fetch_s))

    def _eager(self, decode: bool, n_seqs: int, tenants: tuple[int, ...], residency: Residency,
               mixed_on: Callable[[Residency], StepCost], graphs_on: Callable[[Residency], StepCost],
               steps: int = 1, context: int = 0) -> StepCost:
        """An eagerly run step (or ``steps`` of a decode run): ``mixed_on(res)`` is ``profile_mixed``'s cost on a
        residency, ``graphs_on(res)`` the graph profile's. Adds the host syncs (``sync_scale``: the slice's SM
        table where one was measured, from the whole-GPU composition), then bounds a fetching decode step by the
        measured synced step (``decode_host_bound``; on a slice only with a slice table) and a prefill on a slice
        without a slice table by max(host-bound, GPU-bound) (``slice_bound``)."""
        if decode and self.fetch_times is not None and not self._graphs(tenants, residency):
            p = self._pipeline(mixed_on(self._copies(residency)), tenants, residency, context, graphs_on, steps)
            if p is not None:
                return p
        on_slice = self._slice_table(residency)
        if on_slice is not None:
            c = self._scaled(mixed_on(self._whole(residency)), decode, n_seqs, tenants, residency, steps, on_slice)
        else:
            c = self._scaled(mixed_on(residency), decode, n_seqs, tenants, residency, steps)
        if decode:
            table = on_slice or self.sync
            if (self.cfg.decode_host_bound and table is not None and not self._graphs(tenants, residency)
                    and (on_slice is not None or not self._partial(residency))):
                synced = table.synced_s(n_seqs, len(set(tenants)))
                if synced is not None:
                    c = self._bound(c, StepCost(overhead_s=synced * steps), graphs_on(residency))
        elif on_slice is None and self._partial(residency):
            host = self._scaled(mixed_on(self._whole(residency)), decode, n_seqs, tenants, residency, steps)
            c = self._bound(c, host, graphs_on(residency))
        return c

    def step(self, batch: tuple[SeqWork, ...], residency: Residency) -> StepCost:
        """A pure decode step without host experts: the table; a resident prefill: its token bucket's time
        (``prefill_table``); a fetching step: ``_eager``; anything else: ``profile_mixed``."""
        tenants = tuple(w.tenant for w in batch)
        decode = bool(batch) and all(w.new_tokens == 1 for w in batch)
        if self._graphs(tenants, residency):
            if decode:
                return StepCost(overhead_s=self.table.step_s(len(batch), len(set(tenants)),
                                                             max(w.context for w in batch)))
            if (self.prefills is not None and batch and all(w.context == 0 and w.new_tokens > 1 for w in batch)
                    and residency.slice.sm_fraction >= 1.0):
                return StepCost(overhead_s=self.prefills.step_s(sum(w.new_tokens for w in batch),
                                                                len(set(tenants))))
            return self.mixed.step(batch, residency)
        if not decode and self.prefill_fetch is not None and all(w.context == 0 for w in batch):
            p = self._prefill_split(batch, residency)
            if p is not None:
                return p
        return self._eager(decode, len(batch), tenants, residency, lambda r: self.mixed.step(batch, r),
                           lambda r: self.mixed.graphs.step(batch, r), 1,
                           max((w.context for w in batch), default=0))

    def step_streamed(self, batch: tuple[SeqWork, ...], residency: Residency) -> StepCost:
        """``profile_mixed``'s (a prefill under a streamed swap runs eagerly), as ``_eager``, with its first
        fetch's start (``with_fetch_start``)."""
        tenants = tuple(w.tenant for w in batch)
        c = self._eager(False, len(batch), tenants, residency, lambda r: self.mixed.step_streamed(batch, r),
                        lambda r: self.mixed.graphs.step(batch, r))
        return self.mixed.with_fetch_start(c, residency, tenants)

    def decode_run(self, decode_tenants: tuple[int, ...], context0: tuple[int, ...], n_steps: int,
                   residency: Residency) -> DecodeRun:
        """Each step from the table (context growing by one per step), or ``_eager`` over the run (what it adds
        spread evenly over the steps)."""
        if not self._graphs(decode_tenants, residency):
            run = self.mixed.decode_run(decode_tenants, context0, n_steps, residency)
            if not n_steps or (self.sync is None and not self.slice_sync):
                return run
            c = self._eager(True, len(decode_tenants), decode_tenants, residency,
                            lambda r: run.cost if r is residency else
                            self.mixed.decode_run(decode_tenants, context0, n_steps, r).cost,
                            lambda r: self.mixed.graphs.decode_run(decode_tenants, context0, n_steps, r).cost,
                            n_steps, max(context0, default=0) + n_steps // 2)
            per = (c.total_s - run.cost.total_s) / n_steps
            return DecodeRun(run.end_s + per * np.arange(1, n_steps + 1), c)
        n, k, c0 = len(decode_tenants), len(set(decode_tenants)), max(context0)
        steps = np.array([self.table.step_s(n, k, c0 + i) for i in range(n_steps)])
        ends = np.cumsum(steps)
        return DecodeRun(ends, StepCost(overhead_s=float(ends[-1]) if n_steps else 0.0))

    def swap_s(self, nbytes: float, residency: Residency, bandwidth_fraction: float = 1.0) -> float:
        """``profile_mixed``'s (the graph profile's measured copy rate)."""
        return self.mixed.swap_s(nbytes, residency, bandwidth_fraction)

"""Piecewise fetching decode steps on CUDA (``DecodeGraphs.run_split``; ``TorchBackend`` ``fetch_graphs``): are the
next tokens of a step whose prefix replays a CUDA graph those of the same step run wholly eagerly through the same
code, and how long does a fetching decode step take, the old eager path (``MoEEngine.step``) against the new?
Then one ``TorchBackend.fetch_table()`` on the all-resident layout of the matrix's ``tables`` task.
The same for fetching prefills (``PrefillGraphs.run_split``): are the next tokens of a prefill whose prefix replays
its token bucket's graph those of the same prefill with an eager prefix, how long does a fetching prefill of 256
tokens take, old path against new, and ``TorchBackend.prefill_fetch_table()`` (one bucket at a time).

Usage (repository root; writes ``piecewise_check.json`` after each part, ``fetch_table.csv``,
``prefill_fetch_table.csv``)::

    PYTHONPATH=. python reports/validation/realtime/piecewise_check.py OUT [MODEL[@LAYERS]] [DEVICE] [BUDGET] [DEADLINE_S] [PARTS]

Defaults: ``mixtral-8x7b cuda 85e9 120 all`` (the ``reconfig_host`` layout: policy reconfig, 2 tenants,
``budget_bytes=85e9``: host slots in layers 27–31). ``PARTS``: comma-separated of ``check`` (A), ``timing`` (B),
``fetch_table`` (C), ``prefill_check`` (D), ``prefill_timing`` (E), ``prefill_table`` (F), or ``all``. The CPU
check of this script: ``tiny@4 cpu 1.2e6``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from statistics import median

import torch

from moesim.cost.base import SeqWork
from moesim.policies import POLICIES
from moesim.serve.backend import TorchBackend
from moesim.serve.graphs import first_host_layer, make_buffers, plan_decode
from moesim.specs import get_gpu, get_model

T0 = time.perf_counter()
out = sys.argv[1]
name = sys.argv[2] if len(sys.argv) > 2 else "mixtral-8x7b"
device = sys.argv[3] if len(sys.argv) > 3 else "cuda"
budget = float(sys.argv[4]) if len(sys.argv) > 4 else 85e9
deadline = float(sys.argv[5]) if len(sys.argv) > 5 else 120.0
parts = set((sys.argv[6] if len(sys.argv) > 6 else "all").split(","))
if "all" in parts:
    parts = {"check", "timing", "fetch_table", "prefill_check", "prefill_timing", "prefill_table"}
os.makedirs(out, exist_ok=True)
base, _, n_layers = name.partition("@")
model, gpu = get_model(base), get_gpu("h200")
if n_layers:
    model = dataclasses.replace(model, n_layers=int(n_layers))
cuda = device == "cuda"
res: dict = {"model": name, "device": device, "budget_bytes": budget, "parts": sorted(parts)}


def sync() -> None:
    if cuda:
        torch.cuda.synchronize()


def save(part: str) -> None:
    res.setdefault("parts_done", []).append(part)
    res["elapsed_s"] = time.perf_counter() - T0
    with open(os.path.join(out, "piecewise_check.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    print(f"{part}: done at {res['elapsed_s']:.1f} s", flush=True)


b = TorchBackend(model, gpu, device=device, n_tenants=3, max_batch=16, host_pool=8, fetch_graphs="on")
res["build_s"] = time.perf_counter() - T0
if cuda:
    res["gpu_name"] = torch.cuda.get_device_name()
plan = POLICIES.build("reconfig", {"budget_bytes": budget}).layout(model, gpu, 2)[0]
t = time.perf_counter()
b.setup(plan, 2)
b.set_max_batch(16)  # reconfig's batch limit is 1: buckets up to 16 so that batched steps are checked too
b.reserve_kv(16 * 460)
eng, dg, x, f = b.eng, b.dg, b.x, b.fetcher
res["setup_s"] = time.perf_counter() - t
res["split_layer"] = first_host_layer(eng)
res["host_slots_per_layer"] = [len(h) for h in eng.host_in]
res["max_batch"] = plan.max_batch
t = time.perf_counter()
res["prefix_graphs_captured"] = b.prepare(16, 460, prefill_tokens=1024)  # decode and prefill (256 … 1024) prefixes
sync()
res["prefill_prefix_graphs"] = sorted(b.pg.prefix)
res["prepare_s"] = time.perf_counter() - t
save("setup")

# ---- A: the graph prefix against the eager prefix (same code, same buffers), and the engine's eager step --------
rows = []
cache = x.cache
for tenants, ctxs in [((1,), (200,)), ((0,), (311,)), ((0, 1, 1), (100, 200, 300)), ((0, 1) * 4, (150,) * 8)]:
    if "check" not in parts:
        break
    p = plan_decode(tenants, ctxs, dg.sizes, dg.kv_bucket)
    dg.capture = True
    runs = {}
    for label, graphs in (("graph", True), ("graph2", True), ("eager", False)):
        f.reset()
        replayed = dg.run_split(tenants, ctxs, cache, graphs)
        sync()
        runs[label] = (dg.last_out[: p.n_real].clone(), f.count, replayed)
    si = eng.make_inputs([(tn, 1, c) for tn, c in zip(tenants, ctxs, strict=True)])
    si.ids.copy_(make_buffers(p, eng.device, model.vocab, dg.seed).ids[: p.n_real])
    f.reset()
    ref = eng.step(si, cache)
    sync()
    g, e = runs["graph"][0], runs["eager"][0]
    rows.append({"n_seqs": p.n_real, "bucket": p.bucket, "tenants": list(tenants), "graph": runs["graph"][2],
                 "graph_eq_eager": int((g == e).sum()), "graph_repeat_eq": int((g == runs["graph2"][0]).sum()),
                 "engine_step_eq_eager": int((ref == e).sum()), "of": p.n_real,
                 "fetches_graph": runs["graph"][1], "fetches_eager": runs["eager"][1], "fetches_engine_step": f.count,
                 "g": g.tolist(), "e": e.tolist(), "ref": ref.tolist()})
    print(rows[-1], flush=True)
res["check"] = rows
res["prefix_graphs"] = len(dg.prefix)
save("check")

# ---- B: a fetching decode step as the runtime runs it, old path (eager engine step) vs new (piecewise) -----------
b.capture = False  # as a timed run: no capture (prepare captured ahead)
timing = {}
for label, tenants in (("b1_t1", (1,)), ("b1_t0", (0,)), ("b3_t2", (0, 1, 1))):
    if time.perf_counter() - T0 > deadline * 0.5 or "timing" not in parts:
        continue
    per = {"old": [], "new": []}
    for k in range(10):
        for path in ("old", "new"):
            b.split_fetch = path == "new"
            before = dict(b.stats)
            c = b._execute(tuple(SeqWork(tn, 1, 200 + k + 3 * i) for i, tn in enumerate(tenants)))
            per[path].append({"step_s": c.total_s, "fetch_s": c.fetch_s, "fetches": c.expert_fetches,
                              "prefix_graph": b.stats["prefix_graph_steps"] > before["prefix_graph_steps"],
                              "captures": b.stats["prefix_captures"] - before["prefix_captures"]})
    summary = {}
    for path, lst in per.items():
        lst = lst[1:]  # the first of each: untimed warm-up
        summary[path] = {"step_s_median": median(r["step_s"] for r in lst),
                         "outside_copies_s_median": median(r["step_s"] - r["fetch_s"] for r in lst),
                         "fetch_s_median": median(r["fetch_s"] for r in lst),
                         "fetches": sorted({r["fetches"] for r in lst}),
                         "prefix_graph_steps": sum(r["prefix_graph"] for r in lst),
                         "captures": sum(r["captures"] for r in lst), "steps": lst}
    timing[label] = summary
    print(label, {p: {k: v for k, v in s.items() if k != "steps"} for p, s in summary.items()}, flush=True)
b.split_fetch = True
res["timing"] = timing
res["stats"] = dict(b.stats)
save("timing")

# ---- D: fetching prefills: the graph prefix against the eager prefix (same code, same buffers, same ids) ---------
pg = b.pg
b.capture = True
rows = []
for tenants, toks in [((1,), (256,)), ((0,), (200,)), ((0, 1), (150, 230)), ((0, 1, 1), (100, 300, 200))]:
    if "prefill_check" not in parts or time.perf_counter() - T0 > deadline * 0.4:
        break
    p = pg.plan(tenants, toks)
    ids = pg.ids(p)
    pg.capture = True
    runs = {}
    for label, graphs in (("graph", True), ("graph2", True), ("eager", False)):
        f.reset()
        replayed = pg.run_split(p, cache, graphs, ids=ids)
        sync()
        runs[label] = (pg.last_out[: p.n_real].clone(), f.count, replayed)
    si = eng.make_inputs([(tn, n, 0) for tn, n in zip(tenants, toks, strict=True)])
    si.ids.copy_(ids[: p.tokens].to(si.ids.device))  # the same packed order (by tenant, stable) and ids
    f.reset()
    ref = eng.step(si, cache)
    sync()
    g, e = runs["graph"][0], runs["eager"][0]
    rows.append({"n_seqs": p.n_real, "tokens": p.tokens, "bucket": p.bucket, "tenants": list(tenants),
                 "graph": runs["graph"][2], "graph_eq_eager": int((g == e).sum()),
                 "graph_repeat_eq": int((g == runs["graph2"][0]).sum()), "engine_step_eq_eager": int((ref == e).sum()),
                 "of": p.n_real, "fetches_graph": runs["graph"][1], "fetches_eager": runs["eager"][1],
                 "fetches_engine_step": f.count, "g": g.tolist(), "e": e.tolist(), "ref": ref.tolist()})
    print(rows[-1], flush=True)
res["prefill_check"] = rows
res["prefill_prefix_graphs_after_check"] = sorted(pg.prefix)
save("prefill_check")

# ---- E: a fetching prefill of 256 tokens as the runtime runs it, old path (eager engine step) vs new (piecewise) -
b.capture = False  # as a timed run: no capture (prepare captured ahead)
timing = {}
for label, tenants in (("p256_t1", (1,)), ("p256_t0", (0,))):
    if time.perf_counter() - T0 > deadline * 0.55 or "prefill_timing" not in parts:
        continue
    per = {"old": [], "new": []}
    for _k in range(6):
        for path in ("old", "new"):
            b.split_fetch = path == "new"
            before = dict(b.stats)
            c = b._execute(tuple(SeqWork(tn, 256, 0) for tn in tenants))
            per[path].append({"step_s": c.total_s, "fetch_s": c.fetch_s, "fetches": c.expert_fetches,
                              "split": b.stats["prefill_split_steps"] > before["prefill_split_steps"],
                              "prefix_graph": b.stats["prefill_prefix_graph_steps"]
                              > before["prefill_prefix_graph_steps"],
                              "captures": b.stats["prefill_prefix_captures"] - before["prefill_prefix_captures"]})
    summary = {}
    for path, lst in per.items():
        lst = lst[1:]  # the first of each: untimed warm-up; 5 reps remain
        outside = [r["step_s"] - r["fetch_s"] for r in lst]
        summary[path] = {"step_s_median": median(r["step_s"] for r in lst),
                         "outside_copies_s_median": median(outside), "outside_copies_s_min": min(outside),
                         "outside_copies_s_max": max(outside),
                         "fetch_s_median": median(r["fetch_s"] for r in lst),
                         "fetches": sorted({r["fetches"] for r in lst}),
                         "split_steps": sum(r["split"] for r in lst),
                         "prefix_graph_steps": sum(r["prefix_graph"] for r in lst),
                         "captures": sum(r["captures"] for r in lst), "steps": lst}
    timing[label] = summary
    print(label, {p: {k: v for k, v in s.items() if k != "steps"} for p, s in summary.items()}, flush=True)
b.split_fetch = True
b.capture = True
res["prefill_timing"] = timing
res["stats_after_prefill"] = dict(b.stats)
save("prefill_timing")

# ---- C: fetch_table on the all-resident layout of the matrix's tables task --------------------------------------
if "fetch_table" in parts or "prefill_table" in parts:
    b.setup(POLICIES.build("multiplex", {"max_batch": 16}).layout(model, gpu, 3)[0], 3)
    assert b.fetcher is None
if "fetch_table" in parts and time.perf_counter() - T0 < deadline * 0.6:
    import pandas as pd

    b.capture = True
    t = time.perf_counter()
    rows = b.fetch_table()
    res["fetch_table_s"] = time.perf_counter() - t
    df = pd.DataFrame(rows)
    df.to_csv(os.path.join(out, "fetch_table.csv"), index=False)
    print(df.to_string(index=False), flush=True)
    res["fetch_table"] = rows
    save("fetch_table")
else:
    res["fetch_table"] = "skipped (time)"
    save("fetch_table skipped")

# ---- F: prefill_fetch_table on the same layout, one bucket at a time (the CSV rewritten after each) ---------------
if "prefill_table" in parts:
    import pandas as pd

    from moesim.serve.backend import PREFILL_FETCH_BUCKETS

    b.capture = True
    rows, t = [], time.perf_counter()
    res["prefill_fetch_table_buckets"] = []
    for tok in PREFILL_FETCH_BUCKETS if cuda else (16, 24):
        if time.perf_counter() - T0 > deadline * 0.92:
            res["prefill_fetch_table_skipped_from"] = tok
            break
        rows += b.prefill_fetch_table(tokens=(tok,))
        res["prefill_fetch_table_s"] = time.perf_counter() - t
        res["prefill_fetch_table_buckets"].append(tok)
        pd.DataFrame(rows).to_csv(os.path.join(out, "prefill_fetch_table.csv"), index=False)
        res["prefill_fetch_table"] = rows
        save(f"prefill_table {tok}")
    print(pd.DataFrame(rows).to_string(index=False), flush=True)

"""Prefill bucket graphs vs eager, on CUDA: does the graph replay return what the same kernels return eagerly
(graph semantics), and how far are both from the engine's reference step (numerics)?

Usage: ``python prefill_diag.py OUT tiny,mixtral-8x7b,mixtral-8x7b@2`` (``NAME@L``: the model's shapes cut to its
first L layers, to see how agreement with the reference step falls with depth)."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import torch

from moesim.cost.base import SeqWork
from moesim.policies import POLICIES
from moesim.serve.backend import TorchBackend
from moesim.specs import get_gpu, get_model

out = sys.argv[1]
res = {}
for name in sys.argv[2].split(","):
    t = time.perf_counter()
    base, _, n_layers = name.partition("@")
    model, gpu = get_model(base), get_gpu("h200")
    if n_layers:
        model = dataclasses.replace(model, n_layers=int(n_layers))
    b = TorchBackend(model, gpu, device="cuda", n_tenants=3, max_batch=16, host_pool=8)
    b.bucket_prefill = True
    plan = POLICIES.build("multiplex", {"max_batch": 16}).layout(model, gpu, 3)[0]
    b.setup(plan, 3)
    b.reserve_kv(16 * 460)
    b.prepare(16, 460, prefill_tokens=16 * 256)
    pg, x = b.pg, b.x
    rows = []
    for batch in [(SeqWork(0, 256, 0),), (SeqWork(0, 100, 0), SeqWork(2, 200, 0)),
                  (SeqWork(1, 256, 0), SeqWork(0, 256, 0), SeqWork(1, 131, 0)), (SeqWork(2, 40, 0),)]:
        si = x._inputs(batch)
        p = pg.plan(tuple(w.tenant for w in batch), tuple(w.new_tokens for w in batch))
        ids = torch.cat([si.ids.cpu(), torch.zeros(p.bucket - p.tokens, dtype=si.ids.dtype)])
        x._ensure_cache(max(p.bucket, si.meta.kv_tokens))
        pg.capture = True
        graph = pg.run(p, x.cache, True, ids=ids)
        g1 = (pg.graphs[p.bucket].out if graph else pg.last_out)[: p.n_real].clone()
        pg.run(p, x.cache, True, ids=ids)
        g2 = (pg.graphs[p.bucket].out if graph else pg.last_out)[: p.n_real].clone()
        pg.run(p, x.cache, False, ids=ids)
        e1 = pg.last_out[: p.n_real].clone()
        pg.run(p, x.cache, False, ids=ids)
        e2 = pg.last_out[: p.n_real].clone()
        ref = b.eng.step(si, x.cache)
        ref2 = b.eng.step(si, x.cache)
        torch.cuda.synchronize()
        rows.append({"n_seqs": len(batch), "tokens": p.tokens, "bucket": p.bucket, "graph": graph,
                     "graph_repeat_equal": int((g1 == g2).sum()), "eager_mixed_repeat_equal": int((e1 == e2).sum()),
                     "graph_eq_eager_mixed": int((g1 == e1).sum()), "eager_mixed_eq_ref": int((e1 == ref).sum()),
                     "graph_eq_ref": int((g1 == ref).sum()), "ref_repeat_equal": int((ref == ref2).sum()),
                     "of": len(batch), "g": g1.tolist(), "e": e1.tolist(), "ref": ref.tolist()})
        print(name, rows[-1], flush=True)
    res[name] = {"rows": rows, "s": time.perf_counter() - t}
    with open(os.path.join(out, "prefill_diag.json"), "w") as f:
        json.dump(res, f, indent=1)
    del b, pg, x
    torch.cuda.empty_cache()

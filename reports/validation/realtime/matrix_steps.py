"""Per run of a matrix folder: measured vs simulated (``profile_bucketed``) prefill and decode-step times (markdown).

    python reports/validation/realtime/matrix_steps.py reports/validation/realtime/h200x2

Means over the run: prefills (count × mean duration) and decode steps (count × mean per step); the measured
segments are the runtime's timeline, the simulated ones the simulator's for the same trace. Needs simpy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from moesim.serve.config import ServeConfig, make_requests
from moesim.serve.run import build_cost, simulate_config
from moesim.specs import get_gpu, get_model

root = Path(sys.argv[1])
table = str(root / "tables" / "decode_table.csv")
print("| run | prefills meas. / sim. (mean) | decode steps meas. / sim. (mean per step) | eager steps (measured) |")
print("|---|---|---|---|")
order = ("naive", "swap", "reconfig_fast", "reconfig", "multiplex", "mig", "dedicated", "fleet")
def key(p):
    n = p.parent.name
    return (next(i for i, o in enumerate(order) if n.startswith(o)), n)
for f in sorted(root.glob("*/summary.json"), key=key):
    doc = json.loads(f.read_text())
    cfg = ServeConfig(**{**doc["config"], "sim_cost": "profile_bucketed", "sim_table": table})
    m, g = get_model(cfg.model), get_gpu(cfg.gpu)
    cost, _ = build_cost(cfg, m, g, "graphs")
    sim = simulate_config(cfg, m, g, cost, make_requests(cfg))
    cells = []
    vals = {}
    for seg, tag in ((pd.read_parquet(f.parent / "segments.parquet"), "m"), (sim.segments, "s")):
        d = seg.assign(dur=seg.end_s - seg.start_s)
        pre = d[d.kind == "prefill"]
        dec = d[d.kind == "decode"]
        steps = (dec["tokens"] / dec["n_seqs"]).sum()
        vals[tag] = (len(pre), 1e3 * pre.dur.mean(), 1e3 * dec.dur.sum() / max(steps, 1), int(steps))
    be = doc["backend"]
    be = be if isinstance(be, list) else [be]
    m_, s_ = vals["m"], vals["s"]
    print(f"| {f.parent.name} | {m_[0]} × {m_[1]:.0f} / {s_[0]} × {s_[1]:.0f} ms | {m_[3]} × {m_[2]:.1f} / {s_[3]} × {s_[2]:.1f} ms "
          f"| {sum(b['eager_steps'] for b in be)} of {sum(b['steps'] for b in be)} |")

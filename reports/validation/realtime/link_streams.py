"""Two host→device copy streams at once: does the pinned link split between them, or do two streams move more?

``python reports/validation/realtime/link_streams.py OUT [n_experts] [expert_mb]`` (CUDA; writes
``OUT/link_streams.json``). Each stream copies ``n_experts`` expert-sized buffers (``expert_mb`` MB each, default
Mixtral-8x7B's 352.3 MB) from its own pinned host buffers into device staging buffers, one after the other, as the
runtime's fetcher does. Measured (CUDA events, medians of 3 after one warm-up):

* ``alone``: one stream;
* ``together``: two streams started at once (each stream's own duration and per-copy time);
* ``staggered``: the second stream starts when the first is half done.

Why: the simulator's ``HostLink`` gives each of ``k`` instances fetching at once ``1/k`` of the link for a whole
step; measured MIG prefills fetching beside the other slice took 8.1–8.4 ms per expert against 6.4 ms alone and
12.8 ms at a half share (``h200_split``, ``h200_split2``, ``h200_long``). Times in seconds, rates in GB/s.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch


def main(out: str, n: int = 8, mb: float = 352.321536) -> None:
    nbytes = int(mb * 1e6)
    dev = torch.device("cuda")
    host = [[torch.empty(nbytes, dtype=torch.uint8).pin_memory() for _ in range(2)] for _ in range(2)]
    dst = [[torch.empty(nbytes, dtype=torch.uint8, device=dev) for _ in range(2)] for _ in range(2)]
    streams = [torch.cuda.Stream(dev), torch.cuda.Stream(dev)]

    def issue(s: int, wait: torch.cuda.Event | None = None) -> list[torch.cuda.Event]:
        st = streams[s]
        evs = []
        with torch.cuda.stream(st):
            if wait is not None:
                st.wait_event(wait)
            e0 = torch.cuda.Event(enable_timing=True)
            e0.record(st)
            evs.append(e0)
            for i in range(n):
                dst[s][i % 2].copy_(host[s][i % 2], non_blocking=True)
                e = torch.cuda.Event(enable_timing=True)
                e.record(st)
                evs.append(e)
        return evs

    def durations(evs: list[torch.cuda.Event]) -> tuple[float, list[float]]:
        per = [evs[i].elapsed_time(evs[i + 1]) / 1e3 for i in range(len(evs) - 1)]
        return evs[0].elapsed_time(evs[-1]) / 1e3, per

    def run(kind: str) -> dict:
        torch.cuda.synchronize()
        if kind == "alone":
            a = issue(0)
            torch.cuda.synchronize()
            t, per = durations(a)
            return {"stream0_s": t, "per_copy_s": per}
        if kind == "together":
            a, b = issue(0), issue(1)
        else:  # the second starts when the first has done half its copies
            a = issue(0)
            b = issue(1, wait=a[n // 2])
        torch.cuda.synchronize()
        ta, pa = durations(a)
        tb, pb = durations(b)
        span = a[0].elapsed_time(b[-1]) / 1e3 if b[-1].elapsed_time(a[-1]) < 0 else a[0].elapsed_time(a[-1]) / 1e3
        return {"stream0_s": ta, "stream1_s": tb, "per_copy0_s": pa, "per_copy1_s": pb, "span_s": span}

    res: dict = {"gpu": torch.cuda.get_device_name(0), "n_experts": n, "expert_bytes": nbytes}
    for kind in ("alone", "together", "staggered"):
        run(kind)  # warm-up
        reps = [run(kind) for _ in range(3)]
        med = {k: statistics.median(r[k] for r in reps) for k in reps[0] if k.endswith("_s") and not k.startswith("per")}
        med["per_copy_median_s"] = statistics.median(x for r in reps for k in r if k.startswith("per_copy")
                                                     for x in r[k])
        res[kind] = {**med, "reps": reps}
    res["alone_GBps"] = n * nbytes / res["alone"]["stream0_s"] / 1e9
    res["together_aggregate_GBps"] = 2 * n * nbytes / res["together"]["span_s"] / 1e9
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "link_streams.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if not isinstance(v, dict)}, indent=1))
    for kind in ("alone", "together", "staggered"):
        print(kind, {k: round(v, 5) for k, v in res[kind].items() if k != "reps"})


if __name__ == "__main__":
    main(sys.argv[1], *(int(sys.argv[2]),) if len(sys.argv) > 2 else (), *(float(sys.argv[3]),) if len(sys.argv) > 3 else ())

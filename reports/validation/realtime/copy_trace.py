"""Two slices fetching host experts at once, copy by copy: which rule does the host→device copy queue follow?

``PYTHONPATH=. python reports/validation/realtime/copy_trace.py OUT [reps]`` (CUDA; writes ``OUT/copy_trace.json``).

Each slice is a host thread driving a stream, as the runtime's mig slices are (``moesim.serve``): per layer, some
compute (the attention and router of a layer holding host copies), a host synchronisation (the routing read back),
then for each fetched expert, synchronously: its two weight copies from pinned memory into one staging pair
(Mixtral-8x7B's shapes: gate+up 234.9 MB, down 117.4 MB) and that expert's FFN on its tokens. A ``decode`` slice
fetches 2 experts per layer for 1 token, a ``prefill`` slice 8 experts per layer for 32 tokens each; 8 layers.
Scenarios, each alone and two at once (``decode+decode``, ``prefill+decode``, ``prefill+prefill``), on plain
streams of the primary context (``plain``: both slices' events on one clock) and on two green contexts of 64 SMs
(``green``: as the runtime; each slice's own clock). Per scenario and slice (medians of ``reps``): wall seconds of
its 8 layers, the sum of its copies' durations (from just before a copy is issued on its stream to the copy's end:
waits included), and for ``plain`` each copy's start and end on the common clock (the interleaving). Seconds.

Why: the simulator's ``HostLink`` ``fifo`` gives each slice a share in proportion to its copies per layer
(``docs/validation.md``, mig at saturated load: the fluid shares are 4–7 % pessimistic there, a per-layer copy queue
2–11 % optimistic).
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

D, F = 4096, 14336  # Mixtral-8x7B hidden and expert sizes
LAYERS = 8
KINDS = {"decode": (2, 1), "prefill": (8, 32)}  # experts per layer, tokens per expert


def main(out: str, reps: int = 3) -> None:
    if not torch.cuda.is_available():
        print("copy_trace: needs CUDA (nothing to measure on this machine)")
        return
    from moesim.serve.backend import _green_context, _in_green

    dev = torch.device("cuda")
    t0 = time.perf_counter()
    # 4 distinct experts' pinned copies, reused in turn by both slices (the runtime's host_pool)
    host_in = [torch.empty(2 * F, D, dtype=torch.bfloat16).pin_memory() for _ in range(4)]
    host_out = [torch.empty(D, F, dtype=torch.bfloat16).pin_memory() for _ in range(4)]
    greens = [_green_context(64, 0), _green_context(64, 0)]
    print(f"copy_trace: pinned {len(host_in) * 3 * D * F * 2 / 1e9:.1f} GB in {time.perf_counter() - t0:.1f} s",
          flush=True)

    class Slice:
        def __init__(self) -> None:
            self.st_in = torch.empty(2 * F, D, dtype=torch.bfloat16, device=dev)
            self.st_out = torch.empty(D, F, dtype=torch.bfloat16, device=dev)
            self.attn = torch.randn(D, D, dtype=torch.bfloat16, device=dev) / 64

    def layer_pass(s: Slice, kind: str, copies: list, origin: torch.cuda.Event | None) -> None:
        n_exp, tokens = KINDS[kind]
        x = torch.randn(tokens, D, dtype=torch.bfloat16, device=dev)
        for layer in range(LAYERS):
            for _ in range(4):  # the layer's attention and router (a few small matmuls)
                x = torch.tanh(x @ s.attn)
            torch.cuda.current_stream().synchronize()  # the routing read back on the host
            for e in range(n_exp):
                a = torch.cuda.Event(enable_timing=True)
                a.record()
                s.st_in.copy_(host_in[e % 4], non_blocking=True)
                s.st_out.copy_(host_out[e % 4], non_blocking=True)
                b = torch.cuda.Event(enable_timing=True)
                b.record()
                h = x @ s.st_in.t()
                y = (torch.nn.functional.silu(h[:, :F]) * h[:, F:]) @ s.st_out.t()
                x = x + y * 1e-3
                copies.append((layer, e, a, b))
        torch.cuda.current_stream().synchronize()

    def one(kinds: tuple[str, ...], mode: str, slices: list[Slice]) -> dict:
        results: list = [None] * len(kinds)
        barrier = threading.Barrier(len(kinds))
        origin = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        origin.record()
        torch.cuda.synchronize()

        def work(i: int) -> None:
            copies: list = []

            def body() -> None:
                first = torch.cuda.Event(enable_timing=True)
                barrier.wait()
                w = time.perf_counter()
                first.record()
                layer_pass(slices[i], kinds[i], copies, origin)
                results[i] = (time.perf_counter() - w, first, copies)

            if mode == "green":
                with _in_green(greens[i], dev):
                    body()
            else:
                with torch.cuda.stream(torch.cuda.Stream(dev)):
                    body()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(kinds))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        torch.cuda.synchronize()
        row: dict = {}
        for i, (wall, first, copies) in enumerate(results):
            d = [a.elapsed_time(b) / 1e3 for _, _, a, b in copies]
            r = {"kind": kinds[i], "wall_s": wall, "copy_sum_s": sum(d), "copy_median_s": statistics.median(d),
                 "n_copies": len(d)}
            if mode == "plain":
                r["start_s"] = origin.elapsed_time(first) / 1e3
                r["copies"] = [[ly, e, origin.elapsed_time(a) / 1e3, origin.elapsed_time(b) / 1e3]
                               for ly, e, a, b in copies]
            row[f"slice{i}"] = r
        return row

    res: dict = {"gpu": torch.cuda.get_device_name(0), "layers": LAYERS, "kinds": KINDS,
                 "copy_bytes": [2 * F * D * 2, D * F * 2], "scenarios": {}}
    scenarios = [("decode",), ("prefill",), ("decode", "decode"), ("prefill", "decode"), ("prefill", "prefill")]
    for mode in ("plain", "green"):
        slices = []
        for i in range(2):
            if mode == "green":
                with _in_green(greens[i], dev):
                    slices.append(Slice())
            else:
                slices.append(Slice())
        for kinds in scenarios:
            name = f"{mode}:{'+'.join(kinds)}"
            one(kinds, mode, slices)  # warm-up
            runs = [one(kinds, mode, slices) for _ in range(reps)]
            summary = {s: {k: statistics.median(r[s][k] for r in runs) for k in ("wall_s", "copy_sum_s",
                                                                                 "copy_median_s")}
                       for s in runs[0]}
            res["scenarios"][name] = {"summary": summary, "last": runs[-1]}
            print(name, json.dumps({s: {k: round(v, 4) for k, v in d.items()} for s, d in summary.items()}),
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / "copy_trace.json").write_text(json.dumps(res, indent=1))
        del slices
        torch.cuda.empty_cache()
    print(f"copy_trace: done in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], *(int(sys.argv[2]),) if len(sys.argv) > 2 else ())

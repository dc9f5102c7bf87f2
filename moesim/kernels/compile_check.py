"""Compile every Triton kernel of ``moesim.kernels`` for sm_90 without a GPU and report its resources.

``python -m moesim.kernels.compile_check`` (needs the triton package; no GPU): for each kernel and each tile
configuration the benchmark may pick (``fused_moe.CANDIDATES``, Mixtral shapes), the shared memory, whether the
loads are pipelined (``cp.async`` count in the PTX), whether the tensor cores are driven by ``wgmma`` (Hopper) or
``mma.sync``, and registers / stack bytes from ``cuobjdump --dump-resource-usage`` (the one in Triton's package).
Arguments are declared 16-byte aligned / divisible by 16, as the JIT specialises them on real launches (without
that, Triton does not pipeline the loads at all).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile


def main() -> int:
    """Print one line per compiled kernel; exit 1 if any fails to compile or uses stack (spills)."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError:
        print("triton is not installed", file=sys.stderr)
        return 2
    from moesim.kernels import fused_moe as fm
    from moesim.kernels import fused_ops as fo

    target = GPUTarget("cuda", 90, 32)
    cuobj = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    no_div = {"NK", "NUM_M", "NB", "eps", "E", "R", "ROW0", "H", "HKV"}
    bad = 0

    def comp(fn, sig: dict, const: dict, warps: int, stages: int, name: str) -> None:
        nonlocal bad
        attrs = {(i,): [["tt.divisibility", 16]] for i, (n, t) in enumerate(sig.items())
                 if t != "constexpr" and n not in no_div and not t.startswith("tensordesc")}
        try:
            k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs), target=target,
                               options={"num_warps": warps, "num_stages": stages})
        except Exception as exc:
            print(f"{name}: FAILED {str(exc).splitlines()[0][:300]}")
            bad += 1
            return
        ptx = k.asm["ptx"]
        usage = ""
        if os.path.exists(cuobj):
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(k.asm["cubin"])
                f.flush()
                out = subprocess.run([cuobj, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
            usage = " ".join(w for line in out.splitlines() if "REG:" in line for w in line.split()
                             if w.startswith(("REG:", "STACK:", "LOCAL:")))
            if "STACK:0" not in usage:
                bad += 1
        mma = "wgmma" if "wgmma" in ptx else ("mma.sync" if "mma.sync" in ptx else "-")
        if "cp.async.bulk.tensor" in ptx:
            mma += "+tma"
        print(f"{name:34s} shared={k.metadata.shared:>7d} cp.async={ptx.count('cp.async.cg'):>3d} {mma:8s} {usage}")

    gu = {"a_ptr": "*bf16", "w_ptr": "*bf16", "out_ptr": "*bf16", "sorted_ptr": "*i32", "expert_ptr": "*i32",
          "total_ptr": "*i32", "NK": "i32", "K": "i32", "FF": "i32", "NUM_M": "i32", "stride_am": "i32",
          "stride_we": "i32", "stride_wn": "i32", "stride_om": "i32", "TOPK": "constexpr", "SWIGLU": "constexpr",
          "BM": "constexpr", "BN": "constexpr", "BK": "constexpr", "DOT_F32": "constexpr"}
    dn = {"a_ptr": "*bf16", "w_ptr": "*bf16", "out_ptr": "*bf16", "sorted_ptr": "*i32", "expert_ptr": "*i32",
          "total_ptr": "*i32", "tw_ptr": "*bf16", "NK": "i32", "K": "i32", "D": "i32", "NUM_M": "i32",
          "stride_am": "i32", "stride_we": "i32", "stride_wn": "i32", "stride_om": "i32", "BM": "constexpr",
          "BN": "constexpr", "BK": "constexpr", "DOT_F32": "constexpr"}
    seen = set()
    for cand in fm.CANDIDATES:
        for bm in cand.bms:
            for kind, sig, tiles in (("gate_up", gu, cand.gu), ("down", dn, cand.dn)):
                for bn, bk, w, st in tiles:
                    key = (kind, bm, bn, bk, w, st)
                    if key in seen:
                        continue
                    seen.add(key)
                    const = {"BM": bm, "BN": bn, "BK": bk, "DOT_F32": False}
                    if kind == "gate_up":
                        const |= {"TOPK": 2, "SWIGLU": True}
                    comp(fm._gate_up_kernel if kind == "gate_up" else fm._down_kernel, sig, const, w, st,
                         f"{kind} bm{bm} bn{bn} bk{bk} w{w} s{st}")
    # the TMA-descriptor variants (MoEConfig.tma = 1) of the tiles the 2k/4k regimes may pick
    for cand in fm.CANDIDATES[3:]:
        for bm in cand.bms:
            for (bn, bk, w, st) in cand.gu[:2]:
                sig = {"a_ptr": "*bf16", "w_desc": f"tensordesc<bf16[{bn}, {bk}]>", "out_ptr": "*bf16",
                       "sorted_ptr": "*i32", "expert_ptr": "*i32", "total_ptr": "*i32", "NK": "i32", "K": "i32",
                       "FF": "i32", "NUM_M": "i32", "stride_am": "i32", "stride_om": "i32", "TOPK": "constexpr",
                       "SWIGLU": "constexpr", "BM": "constexpr", "BN": "constexpr", "BK": "constexpr",
                       "DOT_F32": "constexpr"}
                if ("gu_tma", bm, bn, bk, w, st) not in seen:
                    seen.add(("gu_tma", bm, bn, bk, w, st))
                    comp(fm._gate_up_tma_kernel, sig, {"TOPK": 2, "SWIGLU": True, "BM": bm, "BN": bn, "BK": bk,
                                                       "DOT_F32": False}, w, st, f"gate_up_tma bm{bm} bn{bn} bk{bk} w{w} s{st}")
            for (bn, bk, w, st) in cand.dn[:3]:
                sig = {"a_desc": f"tensordesc<bf16[{bm}, {bk}]>", "w_desc": f"tensordesc<bf16[{bn}, {bk}]>",
                       "out_ptr": "*bf16", "sorted_ptr": "*i32", "expert_ptr": "*i32", "total_ptr": "*i32",
                       "tw_ptr": "*bf16", "NK": "i32", "K": "i32", "D": "i32", "NUM_M": "i32", "stride_om": "i32",
                       "BM": "constexpr", "BN": "constexpr", "BK": "constexpr", "DOT_F32": "constexpr"}
                if ("dn_tma", bm, bn, bk, w, st) not in seen:
                    seen.add(("dn_tma", bm, bn, bk, w, st))
                    comp(fm._down_tma_kernel, sig, {"BM": bm, "BN": bn, "BK": bk, "DOT_F32": False}, w, st,
                         f"down_tma bm{bm} bn{bn} bk{bk} w{w} s{st}")
    al = {"ids_ptr": "*i64", "sorted_ptr": "*i32", "expert_ptr": "*i32", "total_ptr": "*i32", "NK": "i32", "E": "i32",
          "NB": "i32", "EP": "constexpr", "BM": "constexpr", "CHUNK": "constexpr"}
    for ep, chunk in ((16, 256), (128, 32)):
        comp(fm._align_kernel, al, {"EP": ep, "BM": 16, "CHUNK": chunk}, 4, 3, f"align E{ep} chunk{chunk}")
    rt = {"x_ptr": "*bf16", "nw_ptr": "*bf16", "wr_ptr": "*bf16", "noise_ptr": "*fp32", "h_ptr": "*bf16",
          "ids_ptr": "*i64", "tw_ptr": "*bf16", "D": "i32", "E": "i32", "R": "i32", "ROW0": "i32", "eps": "fp32", "stride_x": "i32",
          "stride_h": "i32", "BD": "constexpr", "EP": "constexpr", "TOPK": "constexpr", "HAS_NOISE": "constexpr"}
    comp(fo._router_kernel, rt, {"BD": 1024, "EP": 8, "TOPK": 2, "HAS_NOISE": True}, 4, 3, "router E8 k2")
    rp = {"qkv_ptr": "*bf16", "pos_ptr": "*i64", "cos_ptr": "*bf16", "sin_ptr": "*bf16", "slot_ptr": "*i64",
          "q_ptr": "*bf16", "ck_ptr": "*bf16", "cv_ptr": "*bf16", "stride_qkv": "i32", "H": "i32", "HKV": "i32",
          "HD": "constexpr", "HALF": "constexpr", "HP": "constexpr", "HKP": "constexpr"}
    comp(fo._rope_kv_kernel, rp, {"HD": 128, "HALF": 64, "HP": 32, "HKP": 8}, 4, 3, "rope_kv H32 Hkv8")
    cb = {"out_ptr": "*bf16", "x_ptr": "*bf16", "D": "i32", "stride_x": "i32", "TOPK": "constexpr", "BD": "constexpr"}
    comp(fm._combine_kernel, cb, {"TOPK": 2, "BD": 1024}, 4, 3, "combine k2 d4096")
    rn = {"x_ptr": "*bf16", "w_ptr": "*bf16", "y_ptr": "*bf16", "D": "i32", "eps": "fp32", "stride_x": "i32",
          "stride_y": "i32", "BD": "constexpr"}
    comp(fo._rms_norm_kernel, rn, {"BD": 1024}, 4, 3, "rms_norm d4096")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

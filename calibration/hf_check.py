"""Cross-check moesim's tensor lists against Hugging Face transformers' model classes.

For each shipped decoder-only model: build the transformers model from the shipped config.json on the meta
device (no weights, no download), expand its fused expert tensors (gpt-oss) per expert, and compare every
parameter's name and shape with ``moesim.specs.shapes.tensor_shapes``. With ``--forward`` (GPU), also run
one forward pass at real size with random weights for the named models and check the logits' shape.

    PYTHONPATH=<transformers> python calibration/hf_check.py [--json OUT] [--forward qwen3-30b-a3b,...]

Prints one line per model; exits 1 if any model disagrees.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moesim.specs import MODEL_SPECS
from moesim.specs.models import DATA_DIR
from moesim.specs.shapes import tensor_shapes


def hf_config(name: str):
    import transformers

    cfg = json.loads((DATA_DIR / f"{name}.json").read_text())
    cfg.pop("quantization_config", None)  # build the bf16 model: the quantizer needs weights
    cfg.pop("architectures", None)
    mt = cfg.pop("model_type")
    return transformers.AutoConfig.for_model(mt, **cfg)


def hf_params(name: str) -> dict[str, tuple[int, ...]]:
    """Name → shape of the transformers model's parameters, fused experts expanded per expert."""
    import transformers

    conf = hf_config(name)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(conf)
    out: dict[str, tuple[int, ...]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        shape = tuple(p.shape)
        if ".mlp.experts." in n and n.split(".")[-1] in ("gate_up_proj", "gate_up_proj_bias", "down_proj",
                                                        "down_proj_bias"):
            for e in range(shape[0]):
                out[f"{n}[{e}]"] = shape[1:]
        else:
            out[n] = shape
    return out


def _by_layer(params: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Parameters per decoder layer (``model.layers.<i>``) and outside the layers (``rest``)."""
    out: dict[str, int] = {}
    for n, shape in params.items():
        parts = n.split(".")
        key = ".".join(parts[:3]) if n.startswith("model.layers.") else "rest"
        out[key] = out.get(key, 0) + int(torch.Size(shape).numel())
    return out


def compare(name: str) -> dict:
    """Names and shapes (exact), and parameters per layer (robust to transformers fusing experts)."""
    spec = MODEL_SPECS[name]
    ours = {t.name: t.shape for t in tensor_shapes(spec)}
    t0 = time.perf_counter()
    theirs = hf_params(name)
    missing = sorted(set(theirs) - set(ours))
    extra = sorted(set(ours) - set(theirs))
    wrong = sorted(n for n in set(ours) & set(theirs) if ours[n] != theirs[n])
    hf_total = sum(int(torch.Size(s).numel()) for s in theirs.values())
    per_layer = _by_layer(ours) == _by_layer(theirs)
    return {"model": name, "tensors": len(ours), "hf_tensors": len(theirs), "moesim_params": spec.total_params,
            "hf_params": hf_total, "names_and_shapes_equal": not (missing or extra or wrong),
            "per_layer_counts_equal": per_layer, "equal": per_layer and hf_total == spec.total_params,
            "only_hf": missing[:5], "only_moesim": extra[:5], "shape_differs": wrong[:5],
            "seconds": round(time.perf_counter() - t0, 2)}


def forward(name: str, device: str = "cuda", tokens: int = 16) -> dict:
    """One forward pass at real size, random weights, bf16: logits' shape and time."""
    import transformers

    conf = hf_config(name)
    torch.manual_seed(0)
    with torch.device(device):
        try:
            model = transformers.AutoModelForCausalLM.from_config(conf, dtype=torch.bfloat16)
        except TypeError:  # transformers < 4.56 names it torch_dtype
            model = transformers.AutoModelForCausalLM.from_config(conf, torch_dtype=torch.bfloat16)
    model.eval()
    ids = torch.randint(0, conf.vocab_size, (2, tokens), device=device)
    with torch.no_grad():
        model(input_ids=ids)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model(input_ids=ids)
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) * 1e3
    shape = tuple(out.logits.shape)
    n = sum(p.numel() for p in model.parameters())
    del model, out
    torch.cuda.empty_cache()
    return {"model": name, "logits_shape": list(shape), "expected": [2, tokens, conf.vocab_size],
            "ok": shape == (2, tokens, conf.vocab_size) and n == MODEL_SPECS[name].total_params,
            "params_on_device": n, "eager_forward_ms": round(ms, 2),
            "moesim_params": MODEL_SPECS[name].total_params}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default="")
    ap.add_argument("--forward", default="")
    ap.add_argument("--models", default="")
    a = ap.parse_args()
    import transformers

    names = a.models.split(",") if a.models else [p.stem for p in sorted(DATA_DIR.glob("*.json"))]
    rows, ok = [], True
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    for n in names:
        try:
            r = compare(n)
        except Exception as exc:  # an architecture this transformers lacks: say so, keep going
            r = {"model": n, "equal": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        ok &= bool(r["equal"])
        rows.append(r)
        print(json.dumps(r), flush=True)
        if a.json:  # written after every model: a timeout keeps what was checked
            Path(a.json).write_text(json.dumps({"transformers": transformers.__version__, "rows": rows}, indent=1))
    for n in [x for x in a.forward.split(",") if x]:
        try:
            r = forward(n)
        except Exception as exc:
            r = {"model": n, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        ok &= bool(r["ok"])
        rows.append({"forward": r})
        print(json.dumps({"forward": r}), flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps({"transformers": transformers.__version__, "rows": rows}, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps({"transformers": transformers.__version__, "rows": rows}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

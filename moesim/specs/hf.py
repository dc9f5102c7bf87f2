"""A ``ModelSpec`` from a Hugging Face ``config.json``.

Supported architectures (``architectures[0]`` or ``model_type``) and the fields each reads:

  * Mixtral (``MixtralForCausalLM``): hidden_size, intermediate_size, num_hidden_layers,
    num_attention_heads, num_key_value_heads, vocab_size, num_local_experts, num_experts_per_tok;
  * Qwen1.5/Qwen2-MoE (``Qwen2MoeForCausalLM``): + moe_intermediate_size, num_experts,
    shared_expert_intermediate_size (one shared expert with a sigmoid gate; q/k/v biases);
  * Qwen3-MoE (``Qwen3MoeForCausalLM``): + head_dim, moe_intermediate_size, num_experts (q/k RMSNorm);
  * DeepSeek-V2/V3 (``DeepseekV2ForCausalLM``, ``DeepseekV3ForCausalLM``): MLA (q_lora_rank,
    kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim), n_routed_experts, n_shared_experts,
    moe_intermediate_size, first_k_dense_replace, n_group/topk_group (grouped routing);
  * OLMoE (``OlmoeForCausalLM``): intermediate_size, num_experts (q/k RMSNorm over all channels);
  * gpt-oss (``GptOssForCausalLM``): head_dim, num_local_experts, sliding_window, layer_types (biases on
    attention, router and experts; attention sinks; MXFP4 experts);
  * Phi-3.5-MoE (``PhimoeForCausalLM``): num_local_experts (LayerNorm with bias, attention and lm_head
    biases);
  * Switch Transformers (``SwitchTransformersForConditionalGeneration``): d_model, d_ff, d_kv, num_heads,
    num_layers, num_decoder_layers, num_experts, encoder/decoder_sparse_step.

Optional fields take the defaults of the transformers config classes (num_key_value_heads: heads,
head_dim: hidden/heads, tie_word_embeddings: false). A missing required field, an unknown architecture
or a layout moesim cannot represent is refused in one line naming the file and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moesim.errors import UserError
from moesim.specs.formats import check_format
from moesim.specs.models import ModelSpec

#: class name → family
ARCHITECTURES: dict[str, str] = {
    "MixtralForCausalLM": "mixtral",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "DeepseekV2ForCausalLM": "deepseek_v2",
    "DeepseekV3ForCausalLM": "deepseek_v3",
    "OlmoeForCausalLM": "olmoe",
    "GptOssForCausalLM": "gpt_oss",
    "PhimoeForCausalLM": "phimoe",
    "PhiMoEForCausalLM": "phimoe",
    "SwitchTransformersForConditionalGeneration": "switch_transformers",
}
FAMILIES = tuple(dict.fromkeys(ARCHITECTURES.values()))


class _Fields:
    """Reads fields of one config, naming the file and field when one is missing or wrong."""

    def __init__(self, cfg: dict[str, Any], where: str, arch: str) -> None:
        self.cfg, self.where, self.arch = cfg, where, arch

    def need(self, key: str) -> Any:
        if key not in self.cfg or self.cfg[key] is None:
            raise UserError(f"{self.where}: field {key!r} missing (required for {self.arch} configs)")
        return self.cfg[key]

    def int(self, key: str, default: int | None = None, minimum: int = 1) -> int:
        v = self.cfg.get(key) if default is not None else self.need(key)
        if v is None:
            v = default
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise UserError(f"{self.where}: field {key!r}={v!r} must be an integer ≥ {minimum}")
        return v

    def bool(self, key: str, default: bool) -> bool:
        v = self.cfg.get(key, default)
        if not isinstance(v, bool):
            raise UserError(f"{self.where}: field {key!r}={v!r} must be true or false")
        return v


def family_of(cfg: dict[str, Any], where: str) -> str:
    """The architecture family of a config (from ``architectures`` or ``model_type``)."""
    archs = cfg.get("architectures") or []
    for a in archs if isinstance(archs, list) else []:
        if a in ARCHITECTURES:
            return ARCHITECTURES[a]
    mt = cfg.get("model_type")
    if mt in FAMILIES:
        return str(mt)
    got = archs[0] if archs else (mt or "none")
    raise UserError(f"{where}: field 'architectures' is {got!r}: unsupported architecture; supported: "
                    f"{', '.join(sorted(set(ARCHITECTURES) - {'PhiMoEForCausalLM'}))}")


def _quant_format(cfg: dict[str, Any], where: str) -> str:
    q = cfg.get("quantization_config") or {}
    method = str(q.get("quant_method", "")).lower() if isinstance(q, dict) else ""
    if not method:
        return "bf16"
    if method == "mxfp4":
        return "mxfp4"
    if method == "fp8":
        return "fp8"
    if method in ("gptq", "awq") and int(q.get("bits", 4)) == 4:
        return "int4"
    raise UserError(f"{where}: field 'quantization_config.quant_method'={method!r} is not supported; "
                    "supported: mxfp4, fp8, gptq/awq 4-bit (or none: bf16)")


def spec_from_config(cfg: dict[str, Any], name: str, where: str = "config.json") -> ModelSpec:
    """Build a spec from a parsed config.json (``where`` names it in errors).

    Fields that are valid one by one but not together are refused too: a token cannot be routed to more
    experts than a layer has (``num_experts_per_tok`` ≤ the number of routed experts).
    """
    spec = _spec_from_config(cfg, name, where)
    if spec.top_k > spec.n_experts:
        key = "num_experts_per_tok" if "num_experts_per_tok" in cfg else "experts_per_token"
        raise UserError(f"{where}: field {key!r}={spec.top_k} exceeds the number of routed experts "
                        f"({spec.n_experts}); must be an integer in 1..{spec.n_experts}")
    return spec


def _spec_from_config(cfg: dict[str, Any], name: str, where: str) -> ModelSpec:
    if not isinstance(cfg, dict):
        raise UserError(f"{where}: not a JSON object")
    fam = family_of(cfg, where)
    f = _Fields(cfg, where, fam)
    fmt = _quant_format(cfg, where)
    if fam == "switch_transformers":
        return _switch(f, name, where)
    d, L, H = f.int("hidden_size"), f.int("num_hidden_layers"), f.int("num_attention_heads")
    common: dict[str, Any] = {
        "name": name, "arch": fam, "vocab": f.int("vocab_size"), "d_model": d, "n_layers": L, "n_heads": H,
        "n_kv_heads": f.int("num_key_value_heads", H), "head_dim": f.int("head_dim", d // H),
        "top_k": f.int("num_experts_per_tok", f.cfg.get("experts_per_token") or None),
        "tied_embeddings": f.bool("tie_word_embeddings", False), "expert_format": fmt, "source": where,
        "max_context_tokens": f.int("max_position_embeddings", 0, minimum=0),
    }
    if fam in ("qwen2_moe", "qwen3_moe"):
        if f.cfg.get("mlp_only_layers"):
            raise UserError(f"{where}: field 'mlp_only_layers' is not empty: dense layers between MoE layers "
                            "are supported only as DeepSeek's first_k_dense_replace")
        sparse = f.int("decoder_sparse_step", 1)
        if sparse != 1:
            raise UserError(f"{where}: field 'decoder_sparse_step'={sparse}: only 1 is supported for {fam}")
    if fam == "mixtral":
        return ModelSpec(**common, d_ff=f.int("intermediate_size"), n_experts=f.int("num_local_experts"))
    if fam == "qwen2_moe":
        shared = f.int("shared_expert_intermediate_size", 0, minimum=0)
        return ModelSpec(**common, d_ff=f.int("moe_intermediate_size"), n_experts=f.int("num_experts"),
                         n_shared_experts=1 if shared else 0, shared_d_ff=shared, shared_gate=bool(shared),
                         qkv_bias=True)
    if fam == "qwen3_moe":
        return ModelSpec(**common, d_ff=f.int("moe_intermediate_size"), n_experts=f.int("num_experts"),
                         qk_norm="head", qkv_bias=f.bool("attention_bias", False),
                         o_bias=f.bool("attention_bias", False))
    if fam == "olmoe":
        return ModelSpec(**common, d_ff=f.int("intermediate_size"), n_experts=f.int("num_experts"),
                         qk_norm="full")
    if fam == "phimoe":
        bias = f.bool("attention_bias", False)
        return ModelSpec(**common, d_ff=f.int("intermediate_size"), n_experts=f.int("num_local_experts"),
                         qkv_bias=bias, o_bias=bias, norm_bias=True, lm_head_bias=f.bool("lm_head_bias", False))
    if fam == "gpt_oss":
        types = f.cfg.get("layer_types") or [("sliding_attention" if i % 2 == 0 else "full_attention")
                                            for i in range(L)]
        if len(types) != L:
            raise UserError(f"{where}: field 'layer_types' has {len(types)} entries for {L} layers")
        window = f.int("sliding_window", 128)
        return ModelSpec(**common, d_ff=f.int("intermediate_size"), n_experts=f.int("num_local_experts"),
                         qkv_bias=True, o_bias=True, attn_sinks=True, router_bias=True, expert_bias=True,
                         sliding_window=window, n_sliding_layers=sum(t == "sliding_attention" for t in types))
    # DeepSeek-V2 / V3
    freq = f.int("moe_layer_freq", 1)
    if freq != 1:
        raise UserError(f"{where}: field 'moe_layer_freq'={freq}: only 1 is supported")
    q_lora = f.cfg.get("q_lora_rank") or 0
    n_shared = f.int("n_shared_experts", 0, minimum=0)
    moe_ff = f.int("moe_intermediate_size")
    rope, nope = f.int("qk_rope_head_dim"), f.int("qk_nope_head_dim")
    common.update(head_dim=rope + nope, n_kv_heads=H)
    return ModelSpec(**common, d_ff=moe_ff, n_experts=f.int("n_routed_experts"),
                     first_dense=f.int("first_k_dense_replace", 0, minimum=0),
                     dense_d_ff=f.int("intermediate_size"), n_shared_experts=n_shared,
                     shared_d_ff=n_shared * moe_ff, attention="mla", q_lora_rank=int(q_lora),
                     kv_lora_rank=f.int("kv_lora_rank"), qk_nope_dim=nope, qk_rope_dim=rope,
                     v_head_dim=f.int("v_head_dim"), n_group=f.int("n_group", 1),
                     topk_group=f.int("topk_group", 1))


def _switch(f: _Fields, name: str, where: str) -> ModelSpec:
    enc, dec = f.int("num_layers"), f.int("num_decoder_layers", f.cfg.get("num_layers"))
    es, ds = f.int("encoder_sparse_step", 1), f.int("decoder_sparse_step", 1)
    if es != ds:
        raise UserError(f"{where}: fields 'encoder_sparse_step'={es} and 'decoder_sparse_step'={ds} must be "
                        "equal")
    H = f.int("num_heads")
    return ModelSpec(name=name, arch="switch_transformers", vocab=f.int("vocab_size"), d_model=f.int("d_model"),
                     d_ff=f.int("d_ff"), n_layers=dec, n_encoder_layers=enc, n_heads=H, n_kv_heads=H,
                     head_dim=f.int("d_kv"), n_experts=f.int("num_experts"), top_k=1, moe_every=ds,
                     expert_matrices=2, cross_attention=True, tied_embeddings=f.bool("tie_word_embeddings", True),
                     extra_nonexpert_params=2 * f.int("relative_attention_num_buckets", 32) * H, source=where)


#: the Hugging Face repositories the shipped models' configs come from (moesim/specs/data/NOTICE.md)
HUB_IDS = {
    "mistralai/Mixtral-8x7B-v0.1": "mixtral-8x7b", "mistralai/Mixtral-8x22B-v0.1": "mixtral-8x22b",
    "Qwen/Qwen1.5-MoE-A2.7B": "qwen1.5-moe-a2.7b", "Qwen/Qwen3-30B-A3B": "qwen3-30b-a3b",
    "Qwen/Qwen3-235B-A22B": "qwen3-235b-a22b", "deepseek-ai/DeepSeek-V2-Lite": "deepseek-v2-lite",
    "deepseek-ai/DeepSeek-V2": "deepseek-v2", "deepseek-ai/DeepSeek-V3": "deepseek-v3",
    "allenai/OLMoE-1B-7B-0924": "olmoe-1b-7b", "openai/gpt-oss-20b": "gpt-oss-20b",
    "openai/gpt-oss-120b": "gpt-oss-120b", "microsoft/Phi-3.5-MoE-instruct": "phi-3.5-moe",
    "google/switch-base-8": "switch-base-8",
}


def _hub_hint(text: str) -> str:
    """``; moesim ships it as model=mixtral-8x7b`` for a Hugging Face id of a shipped model (the id is no
    file, and moesim downloads nothing), also for its nearest id (``mistralai/Mixtral-8x7B``); else ``""``."""
    import difflib

    ids = {k.lower(): v for k, v in HUB_IDS.items()}
    key = "/".join(Path(text.strip()).parts[-2:]).lower()  # the command line made a relative path absolute
    hit = ids.get(key) or next(iter(difflib.get_close_matches(key, list(ids), n=1, cutoff=0.85)), None)
    if hit in ids:
        hit = ids[hit]
    if hit is None:
        return ""
    return f"; that Hugging Face model ships with moesim as model={hit} (or give the path of its config.json)"


def load_config(path: str | Path, name: str | None = None) -> ModelSpec:
    """A spec from a config.json file (its stem, or its folder's name for ``config.json``, names it)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"model={str(path)!r}: no such config.json file{_hub_hint(str(path))}")
    try:
        cfg = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: not valid JSON ({exc})") from None
    if name is None:
        name = str(cfg.get("_moesim_name") or (p.parent.name if p.stem == "config" else p.stem))
    spec = spec_from_config(cfg, name, where=str(p))
    fmt = cfg.get("_moesim_expert_format")
    if fmt:
        check_format(fmt, where=f"{p}: field '_moesim_expert_format'")
        from dataclasses import replace

        spec = replace(spec, expert_format=fmt)
    return spec

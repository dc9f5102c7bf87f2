"""Models from config.json: exact counts (closed forms = tensor lists), published totals, weight formats,
bad input, the specs table, and the expert-activation model at fine granularity."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from moesim.cost.base import expected_active_fraction
from moesim.errors import UserError
from moesim.specs import MODEL_SPECS, get_model
from moesim.specs.__main__ import main as specs_main
from moesim.specs.formats import matrix_bytes
from moesim.specs.hf import load_config
from moesim.specs.models import DATA_DIR
from moesim.specs.shapes import count_by_kind, tensor_shapes

SHIPPED = sorted(p.stem for p in DATA_DIR.glob("*.json"))
DECODER_ONLY = [n for n, m in MODEL_SPECS.items() if not m.n_encoder_layers]


def test_twelve_architectures_ship() -> None:
    assert SHIPPED == ["deepseek-v2", "deepseek-v2-lite", "deepseek-v3", "gpt-oss-120b", "gpt-oss-20b",
                       "mixtral-8x22b", "mixtral-8x7b", "olmoe-1b-7b", "phi-3.5-moe", "qwen1.5-moe-a2.7b",
                       "qwen3-235b-a22b", "qwen3-30b-a3b"]
    assert {MODEL_SPECS[n].arch for n in SHIPPED} == {"mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2",
                                                        "deepseek_v3", "olmoe", "gpt_oss", "phimoe"}


@pytest.mark.parametrize("name", DECODER_ONLY)
def test_closed_forms_equal_the_tensor_list(name: str) -> None:
    m = MODEL_SPECS[name]
    kinds = count_by_kind(m)
    assert sum(kinds.values()) == m.total_params
    assert kinds["expert"] == m.all_expert_params
    assert kinds["router"] == m.router_params
    assert kinds.get("shared", 0) == m.shared_expert_params
    assert kinds.get("dense", 0) == m.dense_ffn_params
    assert kinds["embed"] + kinds.get("lm_head", 0) == m.embedding_params
    assert kinds["attn"] == m.attention_params_per_block * m.n_layers
    assert kinds["norm"] == m.norm_params
    experts = [t for t in tensor_shapes(m) if t.kind == "expert" and ".layers.0." in t.name]
    per_layer0 = m.n_experts * m.expert_params if m.is_moe_layer(0) else 0
    assert sum(t.numel for t in experts) == per_layer0


# Exact totals, equal to transformers 4.57.1's model classes built from these files (meta device):
# calibration/logs/hf_check.cpu.json; and on the H200 with transformers there (hf_check.h200.json).
EXACT = {
    "mixtral-8x7b": (46_702_792_704, 12_879_925_248),
    "mixtral-8x22b": (140_620_634_112, 39_152_031_744),
    "qwen1.5-moe-a2.7b": (14_315_784_192, 2_689_173_504),
    "qwen3-30b-a3b": (30_532_122_624, 3_353_032_704),
    "qwen3-235b-a22b": (235_093_634_560, 22_190_763_520),
    "deepseek-v2-lite": (15_706_484_224, 2_661_150_208),
    "deepseek-v2": (235_741_434_880, 21_375_800_320),
    "deepseek-v3": (671_026_404_352, 37_552_282_624),
    "olmoe-1b-7b": (6_919_161_856, 1_282_017_280),
    "gpt-oss-20b": (20_914_757_184, 4_187_440_704),
    "gpt-oss-120b": (116_829_156_672, 5_711_982_912),
    "phi-3.5-moe": (41_873_153_344, 6_640_999_744),
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_totals(name: str) -> None:
    m = get_model(name)
    assert (m.total_params, m.active_params_per_token) == EXACT[name]


def test_exact_totals_agree_with_transformers_log() -> None:
    log = json.loads((Path(__file__).resolve().parents[1] / "calibration/logs/hf_check.cpu.json").read_text())
    rows = {r["model"]: r for r in log["rows"] if "model" in r}
    assert set(rows) == set(SHIPPED)
    for n, r in rows.items():
        assert r["equal"]
        assert r["hf_params"] == EXACT[n][0] == r["moesim_params"]


# Published figures, at the precision they are published with. Publishers differ in two ways, kept per
# model: whether "active" counts the input embedding matrix (a lookup) and whether figures are rounded or
# truncated. "both": every non-expert parameter and top-k experts, both embedding matrices counted;
# "no_embed": without the input embedding.
PUBLISHED = {
    # name: (total, active, digits after the point, active convention, rounding)
    "mixtral-8x7b": (46.7, 12.9, 1, "both", "round"),
    "mixtral-8x22b": (141, 39, 0, "both", "round"),
    "qwen1.5-moe-a2.7b": (14.3, 2.7, 1, "both", "round"),
    "qwen3-30b-a3b": (30.5, 3.3, 1, "both", "truncate"),  # 3.353B active
    "qwen3-235b-a22b": (235, 22, 0, "both", "round"),
    "deepseek-v2-lite": (15.7, 2.4, 1, "no_embed", "truncate"),  # 2.451B without the input embedding
    "deepseek-v2": (236, 21, 0, "both", "round"),
    "deepseek-v3": (671, 37, 0, "no_embed", "round"),  # 36.63B without the input embedding
    "olmoe-1b-7b": (6.9, 1.3, 1, "both", "round"),
    "gpt-oss-20b": (21, 3.6, (0, 1), "no_embed", "round"),  # model card: 20.91B total, 3.61B active
    "gpt-oss-120b": (117, 5.1, (0, 1), "no_embed", "round"),  # 116.83B, 5.13B
    "phi-3.5-moe": (41.9, 6.6, 1, "both", "round"),
}


def _at(x: float, digits: int, how: str) -> float:
    if how == "round":
        return round(x, digits)
    return math.floor(x * 10**digits) / 10**digits


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_totals_match_published(name: str) -> None:
    total, active, digits, conv, how = PUBLISHED[name]
    dt, da = digits if isinstance(digits, tuple) else (digits, digits)
    m = get_model(name)
    a = m.active_params_per_token if conv == "both" else m.active_params_excl_embedding
    assert round(m.total_params / 1e9, dt) == total
    assert _at(a / 1e9, da, how) == active


def test_expert_bytes_per_format_include_scales() -> None:
    # gpt-oss-20b, MXFP4: 4 bits per weight + one byte per 32 along the input, biases bf16
    gu = 5760 * 2880 // 2 + 5760 * 90
    dn = 2880 * 2880 // 2 + 2880 * 90
    assert get_model("gpt-oss-20b").expert_bytes == gu + dn + 2 * (5760 + 2880) == 13_236_480
    # DeepSeek-V3, fp8 with one fp32 scale per 128×128 block
    assert get_model("deepseek-v3").expert_bytes == 3 * (2048 * 7168 + 16 * 56 * 4) == 44_050_944
    q = get_model("qwen3-30b-a3b")
    assert q.expert_bytes == 2 * 3 * 2048 * 768 == 9_437_184
    # model.dtype=int4: 4 bits + one bf16 scale per 128 inputs
    i4 = get_model("qwen3-30b-a3b", "int4")
    assert i4.expert_bytes == 2 * (768 * 2048 // 2 + 768 * 16 * 2) + (2048 * 768 // 2 + 2048 * 6 * 2)
    assert i4.total_params == q.total_params
    assert i4.nonexpert_bytes == q.nonexpert_bytes
    assert matrix_bytes("fp8", 100, 130) == 13_000 + 1 * 2 * 4
    with pytest.raises(UserError, match=r"model\.dtype='fp4': unknown expert weight format; valid: auto"):
        get_model("qwen3-30b-a3b", "fp4")


def test_kv_bytes_mla_latent_and_sliding_window() -> None:
    assert get_model("deepseek-v2-lite").kv_bytes_per_token == 27 * (512 + 64) * 2
    assert get_model("gpt-oss-20b").kv_bytes_per_token == 12 * 2 * 8 * 64 * 2  # 12 full-attention layers
    assert get_model("qwen3-30b-a3b").kv_bytes_per_token == 48 * 2 * 4 * 128 * 2


def _write(tmp_path: Path, cfg: dict, name: str = "config.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(cfg))
    return p


def test_any_config_json_path(tmp_path: Path) -> None:
    cfg = json.loads((DATA_DIR / "olmoe-1b-7b.json").read_text())
    d = tmp_path / "my-olmoe"
    d.mkdir()
    m = get_model(str(_write(d, cfg)))
    assert m.name == "my-olmoe"
    assert m.total_params == EXACT["olmoe-1b-7b"][0]


def test_bad_configs_one_line(tmp_path: Path) -> None:
    cfg = json.loads((DATA_DIR / "qwen3-30b-a3b.json").read_text())
    del cfg["moe_intermediate_size"]
    p = _write(tmp_path, cfg, "a.json")
    with pytest.raises(UserError) as e:
        load_config(p)
    assert str(e.value) == f"{p}: field 'moe_intermediate_size' missing (required for qwen3_moe configs)"
    p = _write(tmp_path, {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "b.json")
    with pytest.raises(UserError, match=r"b.json: field 'architectures' is 'LlamaForCausalLM': unsupported "
                                        r"architecture; supported: DeepseekV2ForCausalLM, .*MixtralForCausalLM"):
        load_config(p)
    cfg = json.loads((DATA_DIR / "mixtral-8x7b.json").read_text())
    cfg["num_local_experts"] = 0
    p = _write(tmp_path, cfg, "c.json")
    with pytest.raises(UserError, match=r"c\.json: field 'num_local_experts'=0 must be an integer ≥ 1"):
        load_config(p)
    p.write_text("{not json")
    with pytest.raises(UserError, match=r"c\.json: not valid JSON"):
        load_config(p)
    with pytest.raises(UserError, match=r"no such config\.json file"):
        get_model(str(tmp_path / "missing.json"))


def test_specs_table_csv_reads_back(capsys: pytest.CaptureFixture[str]) -> None:
    assert specs_main(["models", "--csv"]) == 0
    rows = {r["model"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert set(rows) == set(MODEL_SPECS)
    q = rows["qwen3-30b-a3b"]
    assert (q["layers"], q["experts"], q["top_k"], q["shared_experts"]) == ("48", "128", "8", "0")
    assert float(q["total_params_B"]) == 30.532
    assert float(q["active_params_B"]) == 3.353
    d = rows["deepseek-v3"]
    assert (d["dense_layers"], d["shared_experts"], d["expert_format"], d["attention"]) == ("3", "1", "fp8", "mla")
    assert specs_main(["gpus"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["gpu", "status", "sms"]
    assert "h200       measured" in out
    assert "l40s       derived" in out


def test_active_fraction_top8_of_128_matches_sampling() -> None:
    rng = np.random.default_rng(0)
    E, k = 128, 8
    for n in (1, 4, 16, 77):
        hits = np.zeros(E)
        trials = 400
        for _ in range(trials):
            picks = np.argsort(rng.random((n, E)), axis=1)[:, :k]  # uniform k-subsets per token
            hits[np.unique(picks)] += 1
        sampled = hits.sum() / (trials * E)
        exact = float(expected_active_fraction(n, E, k))
        assert exact == pytest.approx(1 - (1 - k / E) ** n)
        assert sampled == pytest.approx(exact, abs=0.01)


def test_active_fraction_skewed_routing() -> None:
    E, k = 128, 8
    # one token touches exactly k experts when no pick probability reaches 1 (true at skew 0.5: the top
    # expert's is 8 / Σ i^-0.5 ≈ 0.38)
    assert float(expected_active_fraction(1, E, k, skew=0.5)) == pytest.approx(k / E)
    for n in (8, 64, 512):
        assert float(expected_active_fraction(n, E, k, skew=1.2)) < float(expected_active_fraction(n, E, k))
    # heavily skewed: the first experts are picked by every token (probability capped at 1)
    w = np.arange(1, E + 1, dtype=float) ** -3.0
    q = np.minimum(w / w.sum() * k, 1.0)
    assert q[0] == 1.0
    n = 1000
    assert float(expected_active_fraction(n, E, k, skew=3.0)) == pytest.approx(float(np.mean(1 - (1 - q) ** n)))

#!/usr/bin/env bash
# The H200 run for the new architectures (one device call): transformers cross-check, then profiles of
# Qwen3-30B-A3B (128 fine-grained experts, top-8), Qwen1.5-MoE-A2.7B (shared expert with its gate) and
# OLMoE-1B-7B (64 experts, top-8), real shapes, random weights, CUDA-graph timing. Outputs to $OUT.
# Run from the repository root on the GPU machine:   OUT=/some/dir bash calibration/run_models_h200.sh
# MODELS="name:budget_s ..." calibrates a subset. The device tool returns at most 8 files a call: the call
# packs $OUT into one archive (see calibration/NOTES.md for the exact command).
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:?set OUT to the output folder}
nvidia-smi --query-gpu=name,memory.total,memory.used,mig.mode.current,clocks.sm,clocks.max.sm --format=csv
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
timeout ${HF_TIMEOUT_S:-110} python3 calibration/hf_check.py --json "$OUT/hf_check.h200.json" \
  --models qwen3-30b-a3b,qwen1.5-moe-a2.7b,olmoe-1b-7b,gpt-oss-20b,deepseek-v2-lite,mixtral-8x7b,phi-3.5-moe \
  --forward qwen3-30b-a3b,qwen1.5-moe-a2.7b,olmoe-1b-7b 2>&1 | grep -v -i warn | tee "$OUT/hf_check.log"
for spec in ${MODELS:-qwen3-30b-a3b:120 qwen1.5-moe-a2.7b:70 olmoe-1b-7b:60}; do
  m=${spec%%:*}; b=${spec##*:}
  timeout $((b + 60)) python3 -m moesim.calibrate device=cuda model=$m out="$OUT" tenants=3 graphs=true \
    budget_s=$b 2>&1 | tee "$OUT/$m.log"
done
ls -la "$OUT"

#!/usr/bin/env bash
# Issue 10, mixed steps (one device call): on top of the committed op tables (resume=true), time what a
# multi-tenant or mixed prefill+decode step adds (concat_qkv, concat_route, attn_mixed, attn_mixed_parts,
# step_mixed), re-time the first held-out set (balanced routing, now with independent routing per tenant)
# and a second held-out set drawn from a new seed (heldout_seed). Outputs to $OUT, one log per model.
# Run from the repository root on the GPU machine:   OUT=/some/dir bash calibration/rerun_mixed_h200.sh
# MODELS="name:cap_s:balanced:base ..." picks models (base=false: only the drawn held-out set, the first set's
# earlier measurement standing); DEVICE=cpu MODELS="tiny:120:true:true" runs the same path on a CPU.
# The whole script stops itself DEADLINE_S seconds after it started (each model gets what is left, at most its cap).
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:?set OUT to the output folder}
DEVICE=${DEVICE:-cuda}
DEADLINE_S=${DEADLINE_S:-180}
SEED=${HELDOUT_SEED:-1}
mkdir -p "$OUT"
start=$(date +%s)
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,mig.mode.current,clocks.max.sm --format=csv
python3 -c 'import torch; print("torch", torch.__version__)'
for spec in ${MODELS:-qwen3-30b-a3b:75:true:true olmoe-1b-7b:45:true:true qwen1.5-moe-a2.7b:55:true:true mixtral-8x7b:70:false:false}; do
  IFS=: read -r m cap bal base <<< "$spec"
  left=$(( DEADLINE_S - ($(date +%s) - start) ))
  t=$(( cap < left ? cap : left ))
  if [ "$t" -lt 25 ]; then echo "skip $m: ${left}s left"; continue; fi
  for f in calibration/profiles/h200__$m.parquet calibration/profiles/h200__$m.json; do
    [ -f "$f" ] && cp "$f" "$OUT/"
  done
  echo "== $m: ${t}s (balanced_routing=$bal) at $(( $(date +%s) - start ))s"
  timeout "$t" python3 -m moesim.calibrate device="$DEVICE" model="$m" out="$OUT" tenants=3 graphs=true resume=true \
    balanced_routing="$bal" validate_base="${base:-true}" heldout_seed="$SEED" budget_s=$(( t / 2 )) 2>&1 | grep --line-buffered -v "it/s\]$" | tee "$OUT/$m.mixed.log"
  echo "== $m: exit ${PIPESTATUS[0]} at $(( $(date +%s) - start ))s" | tee -a "$OUT/$m.mixed.log"
done
ls -la "$OUT"

#!/usr/bin/env bash
# Second call: the held-out whole steps again with balanced routing (MoEEngine balanced_routing=true), the
# op tables resumed from the first call's profiles (calibration/profiles/h200__<model>.*). Outputs to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:?set OUT to the output folder}
for m in ${MODELS:-qwen3-30b-a3b qwen1.5-moe-a2.7b olmoe-1b-7b}; do
  cp calibration/profiles/h200__$m.parquet calibration/profiles/h200__$m.json "$OUT/"
  timeout 150 python3 -m moesim.calibrate device=cuda model=$m out="$OUT" tenants=3 graphs=true resume=true \
    balanced_routing=true budget_s=60 2>&1 | tee "$OUT/$m.balanced.log"
done

#!/usr/bin/env bash
# The H200 calibration run (one device call): Mixtral-8x7B, then Switch-Base-8, profiles and logs to $OUT.
# Run from the repository root on the GPU machine (torch there; no simpy/hydra needed):
#   OUT=/some/dir bash calibration/run_h200.sh            # CUDA-graph timing (default)
#   OUT=/some/dir GRAPHS=false bash calibration/run_h200.sh  # eager PyTorch timing (*.eager profiles)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:?set OUT to the output folder}
nvidia-smi --query-gpu=name,memory.total,memory.used,mig.mode.current,clocks.sm,clocks.max.sm --format=csv
timeout ${MIXTRAL_TIMEOUT_S:-330} python3 -m moesim.calibrate device=cuda model=mixtral-8x7b out="$OUT" tenants=3 \
  graphs=${GRAPHS:-true} budget_s=${MIXTRAL_BUDGET_S:-240} 2>&1 | tee "$OUT/mixtral.log"
timeout ${SWITCH_TIMEOUT_S:-120} python3 -m moesim.calibrate device=cuda model=switch-base-8 out="$OUT" tenants=3 \
  graphs=${GRAPHS:-true} validate=false budget_s=${SWITCH_BUDGET_S:-60} 2>&1 | tee "$OUT/switch.log"

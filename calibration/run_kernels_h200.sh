#!/usr/bin/env bash
# The kernel benchmark on the H200 (one device call; moesim/kernels/bench.py), then, when enough time is left,
# a calibration of Mixtral-8x7B with moe_kernel=triton (no host-link or slice sections: the kernels change
# neither), tarred into $OUT. Run from the repository root on the GPU machine:
#   OUT=/some/dir bash calibration/run_kernels_h200.sh
#   OUT=/tmp/k DEVICE=cpu bash calibration/run_kernels_h200.sh     # the same steps on CPU (tiny model, seconds)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=. TRITON_DEFAULT_FP_FUSION=1
OUT=${OUT:?set OUT to the output folder}
DEVICE=${DEVICE:-cuda}
TOTAL_S=${TOTAL_S:-350}
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,memory.used,mig.mode.current,clocks.sm,clocks.max.sm,driver_version \
    --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
  MODEL=mixtral-8x7b; EXTRA=""
else
  MODEL=tiny; EXTRA="hf=false batches=1,3 prefills=16 reps=2"
fi
timeout "${BENCH_TIMEOUT_S:-335}" python3 -m moesim.kernels.bench device="$DEVICE" out="$OUT" \
  deadline_s="${BENCH_DEADLINE_S:-320}" $EXTRA 2>&1 | tee "$OUT/bench.log"
LEFT=$(( TOTAL_S - SECONDS ))
echo "[run] bench ended at ${SECONDS}s; ${LEFT}s left"
if [ "$LEFT" -gt "${CAL_MIN_S:-100}" ]; then
  mkdir -p /tmp/cal_triton
  timeout $(( LEFT - 5 )) python3 -m moesim.calibrate device="$DEVICE" model="$MODEL" moe_kernel=triton \
    out=/tmp/cal_triton tenants=3 host=false slices=false budget_s=$(( LEFT - 45 )) 2>&1 | tee /tmp/cal_triton/calibrate.log
  tar czf "$OUT/calibrate_triton.tgz" -C /tmp/cal_triton .
else
  echo "[run] no time for the moe_kernel=triton calibration"
fi

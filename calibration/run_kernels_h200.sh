#!/usr/bin/env bash
# The kernel benchmark on the H200 (one device call; moesim/kernels/bench.py), then, when enough time is left,
# a calibration of Mixtral-8x7B with moe_kernel=triton run with the tiles, crossover and prompt attention the
# benchmark just picked (engine_tuning.json), and its held-out validation. Time-boxed (TOTAL_S, default 285 s);
# every file lands under $OUT as soon as it exists (at most 7 files: the device tool returns 8). From the
# repository root on the GPU machine:
#   OUT=/some/dir bash calibration/run_kernels_h200.sh
#   OUT=/tmp/k DEVICE=cpu bash calibration/run_kernels_h200.sh     # the same steps on CPU (tiny model, seconds)
# Environment: TOTAL_S (whole script), BENCH_DEADLINE_S / BENCH_TIMEOUT_S (the benchmark), CAL_MIN_S (least
# time left for the calibration to start), BENCH_ARGS (replaces the benchmark's default arguments below).
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=. TRITON_DEFAULT_FP_FUSION=1
OUT=${OUT:?set OUT to the output folder}
DEVICE=${DEVICE:-cuda}
TOTAL_S=${TOTAL_S:-285}
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,memory.used,mig.mode.current,clocks.sm,clocks.max.sm,driver_version \
    --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
  MODEL=mixtral-8x7b; PROFILE=h200__mixtral-8x7b.triton.parquet
  # no HF and no tenant switch (both measured on 2026-11-30, reports/kernels/2026-11-30-0645/); regime 0
  # (≤ 32 tokens: every candidate within 3 %) keeps its tiles
  ARGS=${BENCH_ARGS:-"hf=false switch=false tune_regimes=1,2,3,4 batches=1,32,64,128 prefills=512,2048,4096 variants=grouped,triton+fused,hybrid,tuned"}
else
  MODEL=tiny; PROFILE=cpu__tiny.eager.triton.parquet
  ARGS=${BENCH_ARGS:-"hf=false batches=1,3 prefills=16 reps=2"}
fi
# shellcheck disable=SC2086
timeout "${BENCH_TIMEOUT_S:-165}" python3 -m moesim.kernels.bench device="$DEVICE" out="$OUT" \
  deadline_s="${BENCH_DEADLINE_S:-150}" $ARGS 2>&1 | tee "$OUT/bench.log"
LEFT=$(( TOTAL_S - SECONDS ))
echo "[run] bench ended at ${SECONDS}s; ${LEFT}s left"
CAL=/tmp/cal_triton
rm -rf "$CAL"; mkdir -p "$CAL"
if [ "$LEFT" -gt "${CAL_MIN_S:-90}" ]; then
  TUNING=""
  [ -f "$OUT/engine_tuning.json" ] && TUNING="moe_tuning=$OUT/engine_tuning.json"
  # budget: the tables stop LEFT-55 s in; the held-out steps (always timed) and the write take the rest
  timeout $(( LEFT - 8 )) python3 -m moesim.calibrate device="$DEVICE" model="$MODEL" moe_kernel=triton \
    balanced_routing=true tenants=3 host=false slices=false out="$CAL" budget_s=$(( LEFT - 55 )) $TUNING \
    2>&1 | tee "$CAL/calibrate.log"
  echo "[run] calibration ended at ${SECONDS}s (rc ${PIPESTATUS[0]})"
  if [ -f "$CAL/$PROFILE" ]; then
    python3 -m moesim.calibrate.validate profile="$CAL/$PROFILE" 2>&1 | tee "$CAL/validation.txt"
  fi
else
  echo "[run] no time for the moe_kernel=triton calibration"
fi
tar czf "$OUT/calibrate_triton.tgz" -C "$CAL" .
echo "[run] done at ${SECONDS}s"

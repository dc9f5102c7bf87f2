#!/usr/bin/env bash
# The H200 validation run (one device call). Run from the repository root on the GPU machine, with the
# simpy wheel carried in .whl (see docs/validation.md): OUT=$OUT bash reports/validation/run_h200.sh
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.max.sm,mig.mode.current --format=csv
ARGS=${ARGS:-"device=cuda model=mixtral-8x7b gpu=h200 tenants=4 workload=azure_conv rate=0.4 max_requests=40 max_prompt=1024 max_output=64 policies=reconfig:1,reconfig_fast:16,multiplex:16 budget_s=330"}
python3 -m moesim.executor $ARGS out=/tmp/val 2>&1 | tee "$OUT/run.log"
rc=$?
cp /tmp/val/validation.csv /tmp/val/validation.json "$OUT/" 2>/dev/null
tar czf "$OUT/validation_tables.tar.gz" -C /tmp val 2>/dev/null
exit $rc

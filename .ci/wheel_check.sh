#!/usr/bin/env bash
# The library install, as a user gets it: `pip install .` (not editable) into a fresh venv with no torch,
# run from another directory: a sweep, its report, a single run and a small capacity search must work from
# the wheel's own data.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check "$src"
cd "$work"
py="$work/venv/bin/python"
if "$py" -c "import torch" 2>/dev/null; then
  echo "wheel check: torch got installed by 'pip install .'; the simulator must not need it" >&2; exit 1
fi
"$py" -m moesim.simulate -m hydra.sweep.dir=sweep policy=reconfig,multiplex workload.rate=0.05,0.2 \
  workload.duration_s=60 sweep.seeds=0
test -s sweep/report.html && test -s sweep/summary.csv
"$py" -m moesim.report sweep
"$py" -m moesim.simulate hydra.mode=RUN hydra.run.dir=one policy=mig workload=azure_code workload.duration_s=60
test -s one/summary.json
# the capacity search without ray (an extra): trials in a local pool, same outputs
"$py" -m moesim.search workload=poisson workload.tenants=2 workload.rate=0.2 workload.duration_s=30 \
  search.gpus=h200 search.strategies=per_variant search.policies=multiplex search.max_batch=32 \
  search.max_gpus=2 search.seeds=0 search.verify_seeds=1000 search.progress=false search.out=search
test -s search/best_placement.yaml && test -s search/report.html
"$py" -c "import sys, moesim.simulate, moesim.report, moesim.sweep; assert 'torch' not in sys.modules"
if find "$work/venv" -path '*site-packages/moesim*' -newer "$work/venv/bin/python" \( -name 'summary.json' -o -name '*.html' \) | grep -q .; then
  echo "wheel check: a run wrote into the installed package" >&2; exit 1
fi
echo "wheel check: torch-free non-editable install OK"

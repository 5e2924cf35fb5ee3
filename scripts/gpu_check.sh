#!/usr/bin/env bash
# Everything that needs a GPU, in one call of the device tool (README, "GPU check"):
#   bash scripts/gpu_check.sh [--quick] [--only STAGE,...] [--budget SECONDS]
#
# 1. Installs what this Python lacks from the carried wheels (.gpu-bundle/wheels, built by
#    `make gpu-bundle`) into $GPU_CHECK_SITE, with pip or, without pip, by unzipping.
# 2. Runs `python -m benchmarks gpu_check`: eleven stages, each in its own process under its own
#    time limit, within a 450 s budget. Every section is written line by line to
#    benchmarks/results/gpu_check/ and, when $OUT is set, to $OUT/gpu_check.md and .jsonl, with
#    the section files packed into $OUT/gpu_check_results.tar after each stage.
#
# Estimate on an H100 (benchmarks/gpu_check.py gives it per stage): about 330 s of stages plus
# 10-20 s to install the bundle; the budget stops the stages at 450 s and `timeout` below stops
# everything at GPU_CHECK_LIMIT (470 s), so one call with timeout_s=480 always returns.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUNDLE=${GPU_BUNDLE:-.gpu-bundle}
export GPU_CHECK_SITE=${GPU_CHECK_SITE:-${TMPDIR:-/tmp}/crossentropy-gpu-site}
LOG=${OUT:+$OUT/gpu_check.log}
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; fi

{
  echo "gpu_check: $(date -u '+%Y-%m-%d %H:%M:%S') UTC, $($PY --version 2>&1), in $(pwd)"
  if [ -d "$BUNDLE/wheels" ]; then
    timeout 120 "$PY" -m benchmarks._gpu_bundle install "$BUNDLE/wheels" "$GPU_CHECK_SITE" \
      || echo "gpu_check: installing the bundle failed; going on with what this machine has"
  else
    echo "gpu_check: no $BUNDLE/wheels (make gpu-bundle, then carry $BUNDLE); using this machine's packages"
  fi
} 2>&1 | tee ${LOG:+-a "$LOG"}

export PYTHONPATH="src:.:$GPU_CHECK_SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
timeout -k 10 "${GPU_CHECK_LIMIT:-470}" "$PY" -m benchmarks gpu_check "$@" 2>&1 | tee ${LOG:+-a "$LOG"}
status=${PIPESTATUS[0]}
echo "gpu_check: exit status $status" | tee ${LOG:+-a "$LOG"}
exit "$status"

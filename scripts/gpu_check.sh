#!/usr/bin/env bash
# Everything that needs a GPU, in one call (for the device machine): the CUDA tests, then every
# GPU benchmark. Results land in benchmarks/results/ (commit them); the pytest log goes there too.
#   PYTHONPATH=src bash scripts/gpu_check.sh [--quick]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p benchmarks/results
python -m pytest -m cuda -q -p no:cacheprovider tests 2>&1 | tee benchmarks/results/pytest_cuda.txt
status=${PIPESTATUS[0]}
python -m benchmarks gpu_kernels hf_gpu "$@" || status=1
exit "$status"

#!/usr/bin/env bash
# The GPU device check (see benchmarks/gpu_check.py): runs from the checkout,
# installs nothing, writes gpu_check_out/gpu_check.{json,md} (or --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m benchmarks.gpu_check "$@"

#!/usr/bin/env bash
# The GPU device check (see benchmarks/gpu_check.py): runs from the checkout,
# installs nothing, writes gpu_check_out/gpu_check.{json,md} (or --out DIR).
set -euo pipefail
# --out is relative to the caller's directory: make it absolute before the cd
args=()
while (($#)); do
  case "$1" in
    --out|--out=*)
      if [[ "$1" == --out ]]; then d="${2-}"; shift $(($# < 2 ? 1 : 2)); else d="${1#--out=}"; shift; fi
      if [[ -z "$d" ]]; then echo "gpu_check.sh: error: --out needs a directory" >&2; exit 2; fi
      args+=(--out "$(realpath -m -- "$d")") ;;
    *) args+=("$1"); shift ;;
  esac
done
set -- ${args[@]+"${args[@]}"}
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m benchmarks.gpu_check "$@"

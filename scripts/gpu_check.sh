#!/usr/bin/env bash
# One table of GPU figures (MAE ViT-B/16 step and MFU, LoRA engines, file loader, rank callbacks).
# Needs only the README install; prints "no GPU" and exits 0 on a machine without one.
#   bash scripts/gpu_check.sh [--workers N]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"
python="${PYTHON:-python}"
# torch alone answers quickly; the check itself imports the whole bench stack
if [[ " $* " != *" --cpu-smoke "* ]]; then
  status=0
  "${python}" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)" || status=$?
  if [[ ${status} -eq 3 ]]; then
    echo "no GPU: scripts/gpu_check.sh measures GPU figures only; nothing to do"
    exit 0
  elif [[ ${status} -ne 0 ]]; then
    exit "${status}"
  fi
fi
exec "${python}" "${repo}/scripts/benchmarks/gpu_check.py" "$@"

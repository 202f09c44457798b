#!/usr/bin/env bash
# One table of GPU figures (MAE ViT-B/16 step and MFU, LoRA engines, file loader, rank callbacks).
# Needs only the README install; prints "no GPU" and exits 0 on a machine without one.
#   bash scripts/gpu_check.sh [--workers N]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"
exec "${PYTHON:-python}" "${repo}/scripts/gpu_check.py" "$@"

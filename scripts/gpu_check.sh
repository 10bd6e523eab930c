#!/usr/bin/env bash
# One GPU check: every step of scripts/gpu_check.py (gpu tests, bench engine, 3-step GRPO under FSDP
# per rollout backend, flex vs dense Unseen forward, bench rollout) into one JSON file.
#   scripts/gpu_check.sh OUT.json             # a CUDA machine: about 8 minutes on one GPU
#   scripts/gpu_check.sh OUT.json --profile cpu   # the same steps at tiny shapes (CI: make gpu-check-cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then echo "usage: scripts/gpu_check.sh OUT.json [--profile auto|gpu|cpu] [--steps a,b]" >&2; exit 2; fi
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" scripts/gpu_check.py "$@"

#!/usr/bin/env bash
# Single-run launch example. Usage:
#   scripts/train.sh STORE RUN_DIR [METHOD] [CONFIG] [extra --set overrides...]
# e.g. scripts/train.sh /data/c4_store runs/kd_lr4e-4 kd trainer/configs/gemma3_270m.py \
#          --set optim.lr=4e-4 --set budget.value=4
# Multi-host: add --set distributed=True and set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
# JAX_PROCESS_ID on every host (or run under Slurm/Open MPI); README "Scaling out".
set -euo pipefail
STORE=${1:?store path or URL}
RUN_DIR=${2:?run directory}
METHOD=${3:-kd}
CONFIG=${4:-trainer/configs/tiny.py}
shift $(( $# < 4 ? $# : 4 ))
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" -m trainer --config "${CONFIG}:${METHOD}" \
    --set store.url="$STORE" --set run_dir="$RUN_DIR" "$@"

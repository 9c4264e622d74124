#!/usr/bin/env bash
# Single-run launch example; works from any directory (paths are relative to it).
# Usage:
#   scripts/train.sh STORE RUN_DIR [METHOD] [CONFIG] [extra --set overrides...]
# e.g. scripts/train.sh data/c4_store runs/kd_lr4e-4 kd gemma3_270m \
#          --set optim.lr=4e-4 --set budget.value=4
# CONFIG: a shipped config name (tiny, gemma3_270m, ...) or a get_config() file.
# Runs `hd-train` (the installed command) next to $PYTHON, else the checkout's .venv python,
# else python3 on PATH; `python -m trainer` with that Python where the command is missing.
# Multi-host: add --set distributed=True and set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
# JAX_PROCESS_ID on every host (or run under Slurm/Open MPI); README "Scaling out".
set -euo pipefail
STORE=${1:?store path or URL}
RUN_DIR=${2:?run directory}
METHOD=${3:-kd}
CONFIG=${4:-tiny}
shift $(( $# < 4 ? $# : 4 ))
VENV_PY="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python"
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x "$VENV_PY" ]]; then PY=$VENV_PY
else PY=python3; fi
CMD=("$PY" -m trainer)
if [[ "$PY" == */* && -x "$(dirname "$PY")/hd-train" ]]; then CMD=("$(dirname "$PY")/hd-train"); fi
exec "${CMD[@]}" --config "${CONFIG}:${METHOD}" \
    --set store.url="$STORE" --set run_dir="$RUN_DIR" "$@"

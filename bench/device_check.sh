#!/usr/bin/env bash
# The device check (bench/device_check.py) on a lent GPU/TPU host, bounded to 8 minutes.
#   bash bench/device_check.sh [--tiny] [--sections topk,extract,encode,train] [--out PATH]
# PYTHON picks the interpreter (default python3). WHEELS, if set, is a folder of wheels
# the host lacks (zarr, grain, ml_collections, ...: the lent GPU hosts have JAX but not
# these), installed offline first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [[ -n "${WHEELS:-}" ]]; then
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" "$WHEELS"/*.whl
fi
# 480 s hard stop; the driver plans its sections for 450 s and writes what it has.
exec timeout 480 "$PY" bench/device_check.py "$@"

#!/usr/bin/env bash
# Train on one machine with NVIDIA GPUs: one process drives every local GPU (no jax.distributed needed).
#
#   SETUP=1 bash launch/gpu_single_node.sh                     # once: $VENV with jax[$CUDA] and this package
#   CONFIG=configs/videomae_finetune.py:vit_b WORKDIR=runs/ft ARGS="--config.batch_size=64" \
#       bash launch/gpu_single_node.sh
#
# The mesh takes every visible GPU (CUDA_VISIBLE_DEVICES limits them): --config.mesh.data=-1 is data parallel,
# --config.mesh.fsdp=-1 --config.mesh.data=1 shards parameters and optimiser state over the GPUs.
# Not run in this repository's CI (no GPU there).
set -euo pipefail

REPO=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-$REPO/.venv-gpu}
CUDA=${CUDA:-cuda12}                              # or cuda13 (the jax extra matching the driver)
SETUP=${SETUP:-0}
CONFIG=${CONFIG:-configs/demo.py}
WORKDIR=${WORKDIR:-$REPO/runs/gpu}
ARGS=${ARGS:-}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}

if [[ "$SETUP" == 1 ]]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q "jax[$CUDA]==0.10.2" -e "$REPO"
    exit 0
fi
cd "$REPO"
# shellcheck disable=SC2086  # ARGS holds several flags
exec "$VENV/bin/python" -m invideo_jax.main --config="$CONFIG" --workdir="$WORKDIR" $ARGS

#!/usr/bin/env bash
#SBATCH --job-name=invideo
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
# Train on a Slurm GPU cluster. Default: one process per node driving its GPUs; one process per GPU with
# `sbatch --ntasks-per-node=8 --cpus-per-task=4`. jax.distributed takes the coordinator (first node of the job),
# the process count and each process's id from the SLURM_* variables of `srun` (invideo_jax/distributed.py).
#
#   CONFIG=configs/videomae_pretrain.py:vit_b WORKDIR=/shared/runs/pt sbatch --nodes=4 launch/gpu_slurm.sh
#
# Submit from the repository root, with $VENV made by `SETUP=1 bash launch/gpu_single_node.sh` on a filesystem
# every node sees. WORKDIR must be shared too (NFS, Lustre, a GCS/S3 fuse mount): Orbax writes every process's
# shards there; process 0 alone writes metrics.jsonl, TensorBoard, summary.json and report.md.
# Not run in this repository's CI (no Slurm cluster there).
set -euo pipefail

REPO=${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}          # sbatch runs a copy of this script: $0 is not in the repository
VENV=${VENV:-$REPO/.venv-gpu}
CONFIG=${CONFIG:-configs/videomae_pretrain.py:vit_b}
WORKDIR=${WORKDIR:?set WORKDIR to a directory on a filesystem shared by all nodes}
ARGS=${ARGS:-}                                    # e.g. "--config.mesh.fsdp=8 --config.mesh.data=-1"
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}

if [[ "${SLURM_NTASKS_PER_NODE:-1}" == 1 ]]; then
    # One process per node: give it every GPU of its node (jax's Slurm detection would give it only GPU 0).
    JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((GPUS_PER_NODE - 1)))
    export JAX_LOCAL_DEVICE_IDS
fi
# One process per GPU: jax picks GPU $SLURM_LOCALID of the node; if the site binds one GPU per task
# (CUDA_VISIBLE_DEVICES of one id), export JAX_LOCAL_DEVICE_IDS=0 instead.
cd "$REPO"
# shellcheck disable=SC2086  # ARGS holds several flags
srun --kill-on-bad-exit=1 "$VENV/bin/python" -m invideo_jax.main --config="$CONFIG" --workdir="$WORKDIR" $ARGS

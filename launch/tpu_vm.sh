#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (one host or a pod slice): every worker runs the same command.
#
#   BUCKET=my-bucket ACCELERATOR=v4-32 CONFIG=configs/videomae_pretrain.py:vit_b bash launch/tpu_vm.sh [STEP...]
#
# STEPs: create (TPU VM, or a queued resource with QUEUED=1), setup (Python 3.11 venv with jax[tpu] and this
# package, and the bucket mounted with gcsfuse, on all workers), run, cmd (runs $COMMAND on all workers, e.g.
# COMMAND="tail -n 5 ~/invideo_run.log"), delete. Default: create setup run.
# The workdir must be one directory every worker sees: the GCS bucket mounted at $MOUNT by gcsfuse
# (checkpoints, metrics and the report end up in gs://$BUCKET/$RUN). Orbax writes each host's shards into it;
# process 0 writes metrics.jsonl, TensorBoard, summary.json and report.md. jax.distributed finds the other hosts
# itself (INVIDEO_DISTRIBUTED=1 below). Data: point --config.data.* at files under $MOUNT or on each worker's disk.
# Not run in this repository's CI (it needs a Google Cloud project); gcloud commands as documented for TPU VMs.
# This script drives one slice. Multi-slice runs (several slices joined over the data-centre network, e.g. a
# queued resource with --node-count) are not scripted here: run the same command on every worker of every
# slice and split the mesh between slices with --config.mesh.dcn_data=<slices> (docs/scale.md, Multi-slice).
set -euo pipefail

TPU_NAME=${TPU_NAME:-invideo}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-32}             # v4-8 is one host; v4-32 is 4 hosts; v5litepod-16 is 4 hosts
VERSION=${VERSION:-tpu-ubuntu2204-base}
QUEUED=${QUEUED:-0}                           # 1: create through a queued resource (waits for capacity)
SPOT=${SPOT:-0}                               # 1: spot capacity (queued resources only)
BUCKET=${BUCKET:-}                            # GCS bucket name, without gs:// (setup mounts it)
MOUNT=${MOUNT:-/mnt/gcs}
RUN=${RUN:-invideo_run}
CONFIG=${CONFIG:-configs/videomae_pretrain.py:vit_b}
ARGS=${ARGS:-}                                # extra flags, e.g. "--config.mesh.fsdp=-1 --config.mesh.data=1"
REPO=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}

on_all() {
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}

create() {
    if [[ "$QUEUED" == 1 ]]; then
        local spot=()
        if [[ "$SPOT" == 1 ]]; then spot=(--spot); fi
        gcloud compute tpus queued-resources create "$TPU_NAME" --zone="$ZONE" --node-id="$TPU_NAME" \
            --accelerator-type="$ACCELERATOR" --runtime-version="$VERSION" "${spot[@]}"
        until gcloud compute tpus queued-resources describe "$TPU_NAME" --zone="$ZONE" \
            --format='value(state.state)' | grep -q ACTIVE; do sleep 30; done
    else
        gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
            --version="$VERSION"
    fi
}

setup() {
    : "${BUCKET:?set BUCKET to a GCS bucket name}"
    local tarball=/tmp/invideo_jax.tar.gz apt_key=/usr/share/keyrings/cloud.google.asc
    git -C "$REPO" archive --format=tar.gz -o "$tarball" HEAD   # the committed tree, without .venv or runs
    gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME": --zone="$ZONE" --worker=all
    on_all "set -e
        rm -rf ~/invideo_jax && mkdir ~/invideo_jax && tar xzf ~/invideo_jax.tar.gz -C ~/invideo_jax
        python3 -m pip install -q --user uv && ~/.local/bin/uv venv -q --python 3.11 ~/venv
        ~/.local/bin/uv pip install -q --python ~/venv/bin/python 'jax[tpu]==0.10.2' -e ~/invideo_jax
        if ! command -v gcsfuse >/dev/null; then
            curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee $apt_key >/dev/null
            echo \"deb [signed-by=$apt_key] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" \
                | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
            sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
        fi
        sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT
        mountpoint -q $MOUNT || gcsfuse --implicit-dirs --rename-dir-limit=1000000 $BUCKET $MOUNT"
}

run() {
    on_all "set -o pipefail; cd ~/invideo_jax && INVIDEO_DISTRIBUTED=1 ~/venv/bin/python -m invideo_jax.main \
        --config=$CONFIG --workdir=$MOUNT/$RUN $ARGS 2>&1 | tee -a ~/$RUN.log"
}

cmd() {
    on_all "${COMMAND:?set COMMAND}"
}

delete() {
    if [[ "$QUEUED" == 1 ]]; then
        gcloud compute tpus queued-resources delete "$TPU_NAME" --zone="$ZONE" --force --quiet
    else
        gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
    fi
}

[[ $# -gt 0 ]] || set -- create setup run
for step in "$@"; do
    case "$step" in
        create | setup | run | cmd | delete) "$step" ;;
        *) echo "unknown step '$step' (create setup run cmd delete)" >&2; exit 2 ;;
    esac
done

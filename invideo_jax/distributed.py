"""Multi-process start-up: `jax.distributed.initialize()` when (and only when) launched as several processes.

A run is multi-process when one of these says so (checked in order):
  JAX_NUM_PROCESSES > 1     explicit: with JAX_COORDINATOR_ADDRESS (host:port of process 0) and JAX_PROCESS_ID
  Slurm, SLURM_NTASKS > 1   inside `srun`: jax derives the coordinator, count and id from the SLURM_* variables
  INVIDEO_DISTRIBUTED=1     any other cluster jax detects by itself: Cloud TPU VM pod slices (set by
                            launch/tpu_vm.sh), GKE TPU, Open MPI
Otherwise nothing is called, so a laptop or single-host run behaves as before. Cross-process collectives on CPU
use gloo (jax's default `jax_cpu_collectives_implementation`).
"""
import os

import jax
from absl import logging
from jax.experimental import multihost_utils

_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


def launch_kind(env=os.environ) -> str:
    """'env', 'slurm', 'auto' or '' (single process) from the environment, as described above."""
    if int(env.get("JAX_NUM_PROCESSES", "1")) > 1:
        return "env"
    if all(v in env for v in _SLURM_VARS) and int(env["SLURM_NTASKS"]) > 1:
        return "slurm"
    if env.get("INVIDEO_DISTRIBUTED", "0") not in ("", "0"):
        return "auto"
    return ""


def initialize() -> None:
    """Connects this process to the others if launched multi-process; call before any JAX computation."""
    kind = launch_kind()
    if not kind or jax.distributed.is_initialized():
        return
    if kind == "env":
        if not os.environ.get("JAX_COORDINATOR_ADDRESS") or "JAX_PROCESS_ID" not in os.environ:
            raise ValueError("JAX_NUM_PROCESSES > 1 needs JAX_COORDINATOR_ADDRESS (host:port) and JAX_PROCESS_ID")
        jax.distributed.initialize(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                                   num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                                   process_id=int(os.environ["JAX_PROCESS_ID"]),
                                   cluster_detection_method="deactivate")
    else:
        jax.distributed.initialize()
    logging.info("process %d of %d (%s launch): %d local / %d global devices", jax.process_index(),
                 jax.process_count(), kind, jax.local_device_count(), jax.device_count())


def is_main() -> bool:
    """Whether this is process 0, the one that writes logs, metrics and reports."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process gets here (a no-op in a single-process run)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)

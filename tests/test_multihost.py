"""Multi-process runs (two CPU processes, coordinator on localhost), when to start jax.distributed, the launchers."""
import glob
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from invideo_jax import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_PROCESSES = 2
TIMEOUT_S = 300
# One CPU device per process; cheaper LLVM code generation (compiling dominates these few tiny steps).
XLA_FLAGS = ("--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0 "
             "--xla_llvm_disable_expensive_passes=true")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(workdir, logdir) -> list:
    """Starts the processes of one run, each in its own session (so its whole group can be killed)."""
    port, procs = _free_port(), []
    for i in range(NUM_PROCESSES):
        env = dict(os.environ, XLA_FLAGS=XLA_FLAGS, JAX_PLATFORMS="cpu", JAX_NUM_PROCESSES=str(NUM_PROCESSES),
                   JAX_PROCESS_ID=str(i), JAX_COORDINATOR_ADDRESS=f"localhost:{port}")
        cmd = [sys.executable, "-m", "invideo_jax.main", "--config=tests/tiny_config.py:fsdp=2",
               f"--workdir={workdir}"]
        with open(os.path.join(logdir, f"process_{i}.log"), "w") as log:
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    return procs


def _wait_all(procs, timeout_s: float) -> list:
    """Exit codes; on timeout (or any error) every process group still running is killed."""
    deadline = time.monotonic() + timeout_s
    try:
        return [p.wait(timeout=max(deadline - time.monotonic(), 0)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_two_processes_train_checkpoint_and_evaluate_together(tmp_path):
    workdir, logdir = str(tmp_path / "run"), str(tmp_path)
    codes = _wait_all(_start(workdir, logdir), TIMEOUT_S)
    logs = [open(os.path.join(logdir, f"process_{i}.log")).read() for i in range(NUM_PROCESSES)]
    assert codes == [0] * NUM_PROCESSES, "\n\n".join(f"process {i}: ...{log[-3000:]}" for i, log in enumerate(logs))
    for i, name in enumerate(["log.txt"] + [f"log.{i}.txt" for i in range(1, NUM_PROCESSES)]):
        with open(os.path.join(workdir, name)) as f:  # each process's INFO lines, from distributed.initialize on
            assert f"process {i} of {NUM_PROCESSES}" in f.read()
    stage = os.path.join(workdir, "classify")
    with open(os.path.join(stage, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    train_steps = [r["step"] for r in rows if "loss" in r]
    assert train_steps == [2, 4]  # written once, by process 0
    assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
    final = os.path.join(stage, "checkpoints", "4")
    assert os.path.isdir(os.path.join(final, "state"))
    assert sorted(os.listdir(os.path.join(final, "data"))) == [
        "commit_success.txt", *(f"process_{i}-of-{NUM_PROCESSES}.json" for i in range(NUM_PROCESSES))]
    with open(os.path.join(stage, "summary.json")) as f:
        assert json.load(f)["eval"]["num_videos"] == 8  # each held-out video once, over both processes' shards
    assert os.path.exists(os.path.join(workdir, "report.md"))


@pytest.mark.parametrize("env, kind", [
    ({}, ""),
    ({"JAX_NUM_PROCESSES": "1"}, ""),
    ({"JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "1", "JAX_COORDINATOR_ADDRESS": "h:1"}, "env"),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2", "SLURM_PROCID": "0",
      "SLURM_LOCALID": "0"}, "slurm"),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
      "SLURM_LOCALID": "0"}, ""),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"}, ""),  # the batch script itself, outside srun
    ({"INVIDEO_DISTRIBUTED": "1"}, "auto"),
    ({"INVIDEO_DISTRIBUTED": "0"}, ""),
])
def test_launch_kind(env, kind):
    assert distributed.launch_kind(env) == kind


def test_launchers_parse():
    scripts = sorted(glob.glob(os.path.join(REPO, "launch", "*.sh")))
    assert len(scripts) == 3
    for script in scripts:
        out = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
        assert out.returncode == 0, f"{script}: {out.stderr}"
    with open(os.path.join(REPO, "launch", "colab_demo.ipynb")) as f:
        notebook = json.load(f)
    assert notebook["nbformat"] == 4 and notebook["cells"]

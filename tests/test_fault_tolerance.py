"""A run that survives faults (docs/fault_tolerance.md): kill -9 and SIGTERM mid-run, then a restart, end with
exactly the state of an uninterrupted run; half-written checkpoints are never restored; a non-finite step is
skipped and counted, or stops the run with its last good checkpoint intact; an unwritable or full checkpoint
directory is named.

The runs are real processes: this file is also the training script (`python tests/test_fault_tolerance.py DATA
WORKDIR [options]`). They share a persistent XLA compilation cache, so only the first one compiles.
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6
ENCODER = dict(width=16, depth=1, num_heads=2, mlp_dim=32, patch_size=8, tubelet_size=2, num_frames=4,
               image_size=16, final_norm=False, pool="mean", num_classes=8)
RUN_TIMEOUT = 300


def tiny_config(data_dir: str, checkpoint_every: int = 1, nonfinite: str = "skip"):
    """A 1-layer classifier on 16 generated videos; every checkpoint kept, so any two steps can be compared."""
    c = common.train_config("classification", ENCODER)
    c.data.update(dict(train_annotations=f"{data_dir}/train.csv", eval_annotations=f"{data_dir}/val.csv",
                       root=data_dir, num_frames=4, sampling_rate=2, crop_size=16, short_side=16,
                       train_crop="resize_crop", flip=False, num_classes=8, workers=0))
    c.batch_size = c.eval_batch_size = 4
    c.total_steps, c.log_every, c.checkpoint_every, c.keep_checkpoints = STEPS, 1, checkpoint_every, STEPS
    c.nonfinite = nonfinite
    c.mesh.data = 1
    c.optim.update(dict(base_lr=1e-3, lr_batch_denom=0, warmup_steps=2))
    return c


def _train_main(argv):
    """The training process: trains `tiny_config` in WORKDIR; --nan-at K feeds a NaN video at the K-th step."""
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir")
    parser.add_argument("workdir")
    parser.add_argument("--checkpoint-every", type=int, default=1)
    parser.add_argument("--nonfinite", default="skip")
    parser.add_argument("--nan-at", type=int, default=0)
    args = parser.parse_args(argv)
    sys.modules["torch"] = None  # tensorboardX imports torch when it can: seconds per process, not needed here
    from absl import logging

    from invideo_jax.data import pipeline
    from invideo_jax.train import trainer

    logging.set_verbosity(logging.WARNING)
    if args.nan_at:
        make_global, calls = pipeline.make_global, [0]

        def poisoned(batch, sharding):
            calls[0] += 1
            if calls[0] == args.nan_at:
                batch = dict(batch, video=np.full_like(batch["video"], np.nan))
            return make_global(batch, sharding)

        pipeline.make_global = poisoned
    trainer.train(tiny_config(args.data_dir, args.checkpoint_every, args.nonfinite), args.workdir)


# ------------------------------------------------------------------------------------------------ helpers

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from invideo_jax.data import synthetic
    root = str(tmp_path_factory.mktemp("data"))
    synthetic.write_dataset(root, num_train=16, num_val=4, num_frames=8, size=16, seed=0)
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("xla_cache"))


class Run:
    """A training process writing its output to WORKDIR.log."""

    def __init__(self, data_dir, workdir, cache_dir, *options):
        self.workdir, self.log_path = str(workdir), f"{workdir}.log"
        env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
                   XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_COMPILATION_CACHE_DIR=cache_dir,
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), data_dir, self.workdir,
                                          *map(str, options)], cwd=REPO, env=env, stdout=log, stderr=log)

    @property
    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def wait(self) -> int:
        try:
            return self.proc.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"training run timed out:\n{self.log[-3000:]}")

    def finish(self):
        """Waits; fails with the log unless the process exits 0."""
        assert self.wait() == 0, self.log[-3000:]
        return self

    def wait_for_checkpoint(self, step: int = 1) -> list:
        """Polls until a checkpoint at `step` or later is committed; returns the committed steps."""
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            steps = committed_steps(self.workdir)
            if steps and steps[-1] >= step:
                return steps
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended (code {self.proc.returncode}) before a checkpoint:\n{self.log[-3000:]}")
            time.sleep(0.02)
        self.proc.kill()
        pytest.fail("no checkpoint appeared")


def committed_steps(workdir) -> list:
    from invideo_jax.train.checkpoint import COMMIT_MARKER
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory)
                  if name.isdigit() and os.path.exists(os.path.join(directory, name, COMMIT_MARKER)))


def saved_state(workdir, step) -> dict:
    return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))


def metric_rows(workdir) -> list:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "clips_per_s"} for line in f]


def assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_same_run(workdir, reference):
    """The final state (params, optimiser, step, RNG) bitwise, and every logged loss, as the uninterrupted run."""
    assert os.path.exists(os.path.join(workdir, "summary.json"))
    assert_bitwise_equal(saved_state(workdir, STEPS), saved_state(reference, STEPS))
    assert metric_rows(workdir) == metric_rows(reference)


@pytest.fixture(scope="module")
def reference(data_dir, cache_dir, tmp_path_factory):
    """The uninterrupted run (it also fills the compilation cache)."""
    return Run(data_dir, tmp_path_factory.mktemp("runs") / "reference", cache_dir).finish().workdir


# ------------------------------------------------------------------------------------------------ kill -9, SIGTERM

def test_kill_9_at_a_random_step_then_restart_ends_bitwise_equal(tmp_path, data_dir, cache_dir, reference):
    target = random.randint(1, STEPS - 2)
    run = Run(data_dir, tmp_path / "run", cache_dir)
    run.wait_for_checkpoint(target)
    time.sleep(random.uniform(0, 0.05))  # in the next step or its asynchronous save
    run.proc.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    steps = committed_steps(run.workdir)
    assert target <= steps[-1] < STEPS, f"killed after step {target}: too late, {steps}"
    assert not os.path.exists(os.path.join(run.workdir, "summary.json"))
    # What a kill on another file system could leave as well: a later step without its commit marker (here a copy
    # of the last one, which would end the run differently if restored), and a temporary directory.
    checkpoints = os.path.join(run.workdir, "checkpoints")
    half_written = os.path.join(checkpoints, str(steps[-1] + 1))
    shutil.copytree(os.path.join(checkpoints, str(steps[-1])), half_written)
    os.remove(os.path.join(half_written, "commit_success.txt"))
    os.makedirs(os.path.join(checkpoints, f"{STEPS}.orbax-checkpoint-tmp-1234567890"))

    Run(data_dir, run.workdir, cache_dir).finish()
    assert_same_run(run.workdir, reference)
    assert any(name.startswith(f"{steps[-1] + 1}.uncommitted-") for name in os.listdir(checkpoints))


def test_sigterm_checkpoints_the_current_step_and_exits_143(tmp_path, data_dir, cache_dir, reference):
    from invideo_jax.train import trainer

    run = Run(data_dir, tmp_path / "run", cache_dir, "--checkpoint-every", 3)
    run.wait_for_checkpoint()
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait() == trainer.PREEMPTED_EXIT_CODE, run.log[-3000:]
    stopped = committed_steps(run.workdir)[-1]
    assert 3 <= stopped < STEPS, "SIGTERM came too late to test anything"
    assert f"SIGTERM: step {stopped} checkpointed" in run.log
    assert "Traceback" not in run.log
    assert not os.path.exists(os.path.join(run.workdir, "summary.json"))
    Run(data_dir, run.workdir, cache_dir, "--checkpoint-every", 3).finish()
    assert_same_run(run.workdir, reference)


def test_sigterm_handler_is_installed_for_the_loop_only():
    from invideo_jax.train.trainer import StopOnSigterm

    before = signal.getsignal(signal.SIGTERM)
    with StopOnSigterm() as sigterm:
        assert not sigterm.agreed()
        os.kill(os.getpid(), signal.SIGTERM)  # handled: sets the flag, the process goes on
        time.sleep(0.01)
        assert sigterm.requested and sigterm.agreed()
    assert signal.getsignal(signal.SIGTERM) is before


# ------------------------------------------------------------------------------------------------ half-written

def test_half_written_step_directories_are_never_latest(tmp_path):
    from test_checkpoint import abstract, make_state

    from invideo_jax.train import checkpoint

    ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
    for step in (1, 2, 3):
        ckpt.save(step, make_state(step, seed=step))
    ckpt.close()
    os.remove(tmp_path / "3" / checkpoint.COMMIT_MARKER)  # a step directory without its commit marker
    (tmp_path / "4.orbax-checkpoint-tmp-1700000000").mkdir()  # a save cut short by a kill
    (tmp_path / "4.orbax-checkpoint-tmp-1700000000" / "state").mkdir()

    restarted = checkpoint.Checkpointer(tmp_path, async_save=False)
    assert restarted.latest_step() == 2
    assert_bitwise_equal(restarted.restore(abstract(make_state())), make_state(2, seed=2))
    assert restarted.save(3, make_state(3, seed=7))  # the step is written afresh
    assert restarted.latest_step() == 3
    assert_bitwise_equal(restarted.restore(abstract(make_state())), make_state(3, seed=7))
    restarted.close()
    names = os.listdir(tmp_path)
    assert any(n.startswith("3.uncommitted-") for n in names)  # set aside, not deleted
    assert not any(".orbax-checkpoint-tmp" in n for n in names)


# ------------------------------------------------------------------------------------------------ non-finite

def test_nonfinite_step_is_skipped_counted_and_never_checkpointed(tmp_path, data_dir, cache_dir):
    run = Run(data_dir, tmp_path / "run", cache_dir, "--nan-at", 3).finish()
    rows = [r for r in metric_rows(run.workdir) if "skipped" in r]
    assert [r["skipped"] for r in rows] == [0, 0, 1, 0, 0, 0]
    assert not np.isfinite(rows[2]["loss"])
    assert "1 step(s) up to step 3 skipped" in run.log
    with open(os.path.join(run.workdir, "summary.json")) as f:
        assert json.load(f)["skipped_steps"] == 1
    states = {step: saved_state(run.workdir, step) for step in range(1, STEPS + 1)}
    for state in states.values():
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))
    assert_bitwise_equal(states[3]["params"], states[2]["params"])  # the NaN step was not applied
    assert_bitwise_equal(states[3]["opt_state"], states[2]["opt_state"])
    assert not np.array_equal(states[4]["params"]["head"]["kernel"], states[3]["params"]["head"]["kernel"])


def test_nonfinite_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, data_dir, cache_dir,
                                                                          reference):
    run = Run(data_dir, tmp_path / "run", cache_dir, "--nan-at", 3, "--nonfinite", "stop")
    assert run.wait() == 1
    assert "FloatingPointError: step 3: non-finite loss or gradient" in run.log
    assert f"Last good checkpoint: step 2 in {run.workdir}/checkpoints" in run.log
    assert committed_steps(run.workdir) == [1, 2]
    assert_bitwise_equal(saved_state(run.workdir, 2), saved_state(reference, 2))  # intact: the clean run's step 2


def test_nonfinite_setting_is_checked_before_anything_runs(tmp_path, data_dir):
    from invideo_jax.train import trainer

    assert common.train_config("classification", ENCODER).nonfinite == "skip"
    with pytest.raises(ValueError, match=r"config.nonfinite='ignore': expected one of \('skip', 'stop'\)"):
        trainer.train(tiny_config(data_dir, nonfinite="ignore"), str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


# ------------------------------------------------------------------------------------------------ unwritable, full

def test_unwritable_workdir_is_named(tmp_path, data_dir):
    from invideo_jax.train import trainer

    blocker = tmp_path / "file"
    blocker.write_text("")
    # A path under a regular file: unwritable even for root (for whom chmod changes nothing).
    with pytest.raises(OSError, match=re.escape(f"{blocker}/run")):
        trainer.train(tiny_config(data_dir), str(blocker / "run"))
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "checkpoints").write_text("")
    message = f"cannot create or write the checkpoint directory: {workdir}/checkpoints"
    with pytest.raises(OSError, match=re.escape(message)):
        trainer.train(tiny_config(data_dir), str(workdir))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories anyway")
def test_read_only_checkpoint_directory_is_named(tmp_path):
    from invideo_jax.train import checkpoint

    directory = tmp_path / "checkpoints"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        message = f"cannot create or write the checkpoint directory: {directory}"
        with pytest.raises(OSError, match=re.escape(message)):
            checkpoint.Checkpointer(directory)
    finally:
        directory.chmod(0o700)


DISK_FULL = textwrap.dedent("""
    import resource, signal, sys
    sys.path.insert(0, "tests")
    import jax.numpy as jnp, numpy as np
    from test_checkpoint import make_state
    from invideo_jax.train import checkpoint
    state = make_state(params={"w": jnp.asarray(np.random.default_rng(0).normal(size=(256, 1024)), jnp.float32)})
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
    for mode in ("sync", "async"):
        directory = f"{sys.argv[1]}/{mode}"
        ckpt = checkpoint.Checkpointer(directory, async_save=mode == "async")
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
        try:
            ckpt.save(1, state)
            ckpt.wait()
        except OSError as e:
            print(mode, "OSError", e.errno, e.strerror)
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        print(mode, "latest", ckpt.latest_step())
""")


def test_full_disk_is_named_not_an_orbax_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-c", DISK_FULL, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=RUN_TIMEOUT, env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stderr[-3000:]
    for mode in ("sync", "async"):  # a synchronous save fails in save(), an asynchronous one in wait()
        message = (f"{mode} OSError 27 cannot write checkpoint step 1 (disk full or read-only?): {tmp_path}/{mode}: "
                   "File too large")
        assert message in out.stdout, out.stdout + out.stderr[-3000:]
        assert f"{mode} latest None" in out.stdout  # the half-written step does not count as a checkpoint


if __name__ == "__main__":
    _train_main(sys.argv[1:])

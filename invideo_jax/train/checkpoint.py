"""Orbax checkpoints: the train state with the grain iterator position (stage-to-stage restore: init_from.py).

A step directory holds two items: 'state' (the TrainState pytree) and 'data' (the grain iterator state, one
JSON file per process, written by grain's own Orbax handler). Orbax writes each step into
`<step>.orbax-checkpoint-tmp` and renames it when complete, so an interrupted save is never listed as a step;
a finished step holds Orbax's commit marker, and a step directory without one (a copy or a file system that cut a
save short) is set aside as `<step>.uncommitted-<time>` and never restored. See docs/fault_tolerance.md.
"""
import contextlib
import os
import re
import time

import grain.checkpoint
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from invideo_jax import distributed

COMMIT_MARKER = "commit_success.txt"  # Orbax writes it into a step directory as the last part of a save
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")  # how tensorstore reports an OS error in a ValueError


class Checkpointer:
    """Keeps the last `max_to_keep` checkpoints of a run in `directory`, saving every `save_interval_steps`."""

    def __init__(self, directory, *, max_to_keep: int = 3, save_interval_steps: int = 1, async_save: bool = True):
        self.directory, self._last_step = epath.Path(directory), None
        with _io_errors(self.directory, "cannot create or write the checkpoint directory"):
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".write_probe_{jax.process_index()}"
            probe.write_text("")
            probe.unlink()
            self._set_aside_uncommitted()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state, data_iterator=None, force: bool = False) -> bool:
        """Saves unless the interval says no (or `step` exists); raises on non-finite params. True if saving."""
        step = int(step)
        if not (force or self._manager.should_save(step)) or step in self._manager.all_steps():
            return False
        self.wait()  # Orbax waits for the previous save anyway; if that failed, the error names its step
        bad = non_finite_paths(state.params)
        if bad:
            raise ValueError(f"refusing to checkpoint step {step} to {self.directory}: non-finite values in "
                             f"params {', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}")
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self._last_step = step
        with _io_errors(self.directory, f"cannot write checkpoint step {step} (disk full or read-only?)"):
            return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def latest_step(self):
        """The newest finished step (its directory holds the commit marker), or None."""
        for step in sorted(self._manager.all_steps(), reverse=True):
            if (self.directory / str(step) / COMMIT_MARKER).exists():
                return step
        return None

    def restore(self, abstract_state, data_iterator=None, step=None):
        """Restores into `abstract_state`'s shapes, dtypes and shardings; sets `data_iterator`'s position.

        A checkpoint of another model (or size) raises a ValueError listing the first paths that differ."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no finished checkpoint in {self.directory}")
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**items)).state
        except ValueError as e:
            problems = self._mismatches(step, abstract_state)
            if not problems:
                raise
            raise ValueError(
                f"checkpoint step {step} in {self.directory} does not fit this model (another model or size in "
                f"this workdir?); {len(problems)} difference(s), first:\n  " + "\n  ".join(problems[:10])) from e

    def _mismatches(self, step: int, abstract_state) -> list:
        """'path: model shape vs checkpoint shape' lines (parameters first) between the state and a saved step."""
        saved = {tree_path(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(
            self._manager.item_metadata(step)["state"].tree) if hasattr(m, "shape")}
        model = {tree_path(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)}
        lines = []
        for path in sorted(set(saved) | set(model), key=lambda p: (not p.startswith("params/"), p)):
            if path not in saved:
                lines.append(f"{path}: model {model[path]}, missing in the checkpoint")
            elif path not in model:
                lines.append(f"{path}: checkpoint {saved[path]}, not in the model")
            elif saved[path] != model[path]:
                lines.append(f"{path}: model {model[path]} vs checkpoint {saved[path]}")
        return lines

    def _set_aside_uncommitted(self):
        """Renames step directories without the commit marker to `<step>.uncommitted-<time>` (kept for inspection,
        never listed, restored or counted against `max_to_keep`). Process 0 renames; every process then waits."""
        if jax.process_index() == 0:
            for path in self.directory.iterdir():
                if path.name.isdigit() and path.is_dir() and not (path / COMMIT_MARKER).exists():
                    aside = path.parent / f"{path.name}.uncommitted-{time.strftime('%Y%m%d-%H%M%S')}"
                    logging.warning("checkpoint %s has no commit marker (%s): half written, set aside as %s",
                                    path, COMMIT_MARKER, aside.name)
                    path.rename(aside)
        distributed.barrier(f"checkpointer_set_aside:{self.directory}")

    def wait(self):
        """Blocks until an asynchronous save has been committed."""
        with _io_errors(self.directory, f"cannot write checkpoint step {self._last_step} (disk full or read-only?)"):
            self._manager.wait_until_finished()

    def close(self):
        """Waits for pending saves and releases Orbax's resources."""
        self.wait()
        self._manager.close()


@contextlib.contextmanager
def _io_errors(directory, what: str):
    """Re-raises storage errors as one OSError naming the checkpoint directory and what was being done: OSErrors,
    and the ValueErrors in which Orbax's tensorstore reports a failed write (`... os_error_code=28`: disk full)."""
    try:
        yield
    except OSError as e:
        raise OSError(e.errno, f"{what}: {directory}: {e}") from None
    except ValueError as e:
        code = _OS_ERROR_CODE.search(str(e))
        if code is None:
            raise
        errno = int(code.group(1))
        detail = str(e).strip().splitlines()[0]
        raise OSError(errno, f"{what}: {directory}: {os.strerror(errno)} (storage error: {detail[:500]})") from None


_all_finite = jax.jit(lambda leaves: [jnp.all(jnp.isfinite(x)) for x in leaves])


def non_finite_paths(tree) -> list:
    """'/'-joined paths of floating-point leaves of `tree` that hold a NaN or an infinity."""
    leaves = [(p, x) for p, x in jax.tree_util.tree_leaves_with_path(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    finite = jax.device_get(_all_finite([x for _, x in leaves]))
    return [tree_path(p) for (p, _), ok in zip(leaves, finite) if not ok]


def tree_path(key_path) -> str:
    """Tree key path -> 'params/encoder/pos_embed'."""
    return jax.tree_util.keystr(key_path, simple=True, separator="/")

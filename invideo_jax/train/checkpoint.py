"""Orbax checkpoints: the train state with the grain iterator position, and stage-to-stage subtree restore.

A step directory holds two items: 'state' (the TrainState pytree) and 'data' (the grain iterator state, one
JSON file per process, written by grain's own Orbax handler). Orbax writes each step into
`<step>.orbax-checkpoint-tmp` and renames it when complete, so an interrupted save is never listed as a step;
a finished step holds Orbax's commit marker, and a step directory without one (a copy or a file system that cut a
save short) is set aside as `<step>.uncommitted-<time>` and never restored. See docs/fault_tolerance.md.
"""
import contextlib
import math
import os
import re
import time

import grain.checkpoint
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from invideo_jax import distributed

POS_EMBED_NAMES = ("pos_embed", "positional_embedding")
_CUBIC_A = -0.75  # PyTorch's bicubic kernel, as used by the original pos_embed interpolation
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
        saved = {_path(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(
            self._manager.item_metadata(step)["state"].tree) if hasattr(m, "shape")}
        model = {_path(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)}
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
    return [_path(p) for (p, _), ok in zip(leaves, finite) if not ok]


def init_sources(init_from) -> dict:
    """`config.init_from` as {name: source}: one source (it has a `checkpoint` field; named '') or named sources,
    e.g. `init_from.masked` and `init_from.multimodal` for a model built from two earlier stages."""
    if "checkpoint" in init_from:
        return {"": init_from}
    for name, source in init_from.items():
        if not hasattr(source, "items") or "checkpoint" not in source:
            raise ValueError(f"config.init_from.{name} must be a source with fields checkpoint and mapping "
                             "(config.init_from is one source, or named sources)")
    return dict(init_from)


def restore_subtrees(params, init_from, *, only_present: bool = False):
    """`params` with the subtrees named by `init_from.mapping` (target path -> source path) read from a checkpoint.

    With `only_present`, mapping entries whose target or source subtree does not exist at all are skipped (used for
    BatchNorm statistics, which only some models and checkpoints have); partly present subtrees still raise.

    `init_from.checkpoint` is a run's checkpoint directory (latest step), one step directory, or a bare pytree
    checkpoint. `params` holds arrays or ShapeDtypeStructs with shardings; restored leaves take their shardings
    and dtypes, unmapped leaves are returned as given. A differing `pos_embed` is resampled when `init_from` gives
    `pos_embed_grid_src` and `pos_embed_grid_dst` (t, h, w); any other difference raises, listing every path.
    """
    source_dir = _pytree_dir(epath.Path(init_from["checkpoint"]))
    saved = {_path(p): m.shape for p, m in jax.tree_util.tree_leaves_with_path(
        ocp.PyTreeCheckpointer().metadata(source_dir).item_metadata.tree)}
    grids = init_from.get("pos_embed_grid_src"), init_from.get("pos_embed_grid_dst")
    mapping = dict(init_from["mapping"])
    if only_present:
        mapping = {t: src for t, src in mapping.items() if _has(params, t)
                   and any(k == src or k.startswith(src + "/") for k in saved)}
        if not mapping:
            return params
    pairs, problems = match_leaves(params, saved, dict(init_from, mapping=mapping))
    if problems:
        raise ValueError(f"cannot restore from {source_dir}:\n  " + "\n  ".join(problems))

    item, restore_args, resampled = {}, {}, []
    for src, leaf in pairs:
        if tuple(saved[src]) == leaf.shape:
            _set(item, src, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding))
            _set(restore_args, src, ocp.ArrayRestoreArgs(sharding=leaf.sharding, dtype=leaf.dtype))
        else:
            _set(item, src, jax.ShapeDtypeStruct(tuple(saved[src]), leaf.dtype))
            _set(restore_args, src, ocp.RestoreArgs(restore_type=np.ndarray))
            resampled.append((src, leaf))
    restored = ocp.PyTreeCheckpointer().restore(source_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
    for src, leaf in resampled:
        pe = resample_pos_embed(_subtree(restored, src), *grids).astype(leaf.dtype)
        _set(restored, src, jax.make_array_from_callback(leaf.shape, leaf.sharding, lambda index: pe[index]))
    for target, source in mapping.items():  # leaf by leaf: two targets may read overlapping sources
        values = jax.tree_util.tree_map_with_path(
            lambda key_path, _: _subtree(restored, "/".join(filter(None, (source, _path(key_path))))),
            _subtree(params, target))
        params = _replace(params, target, values)
    return params


def match_leaves(params, saved: dict, init_from) -> tuple:
    """(pairs, problems) for restoring `init_from.mapping`'s subtrees of `params` from a checkpoint whose leaves
    have the shapes `saved` ({'/'-joined path: shape}): (source path, target leaf) per leaf that restores (same shape,
    or a resamplable pos_embed), and a line per leaf that is missing or of another shape."""
    grids = init_from.get("pos_embed_grid_src"), init_from.get("pos_embed_grid_dst")
    pairs, problems = [], []
    for target, source in init_from["mapping"].items():
        if not _has(params, target):
            problems.append(f"{target}: not in the model (mapping target)")
            continue
        for key_path, leaf in jax.tree_util.tree_leaves_with_path(_subtree(params, target)):
            rel = _path(key_path)
            src = "/".join(filter(None, (source, rel)))
            tgt = "/".join(filter(None, (target, rel)))
            shape = saved.get(src)
            if shape is None:
                problems.append(f"{tgt}: missing in checkpoint as {src}")
            elif tuple(shape) == leaf.shape or _resamplable(rel, tuple(shape), leaf.shape, *grids):
                pairs.append((src, leaf))
            else:
                problems.append(f"{tgt}: target {leaf.shape} vs checkpoint {src} {tuple(shape)}")
    return pairs, problems


def restore_batch_stats(batch_stats, init_from):
    """BatchNorm statistics for the params `init_from.mapping` restores: each `params/...` source is read as
    `batch_stats/...` where the model and the checkpoint both have statistics there (else they stay as given)."""
    mapping = {target: "batch_stats" + source[len("params"):] for target, source in init_from["mapping"].items()
               if source == "params" or source.startswith("params/")}
    return restore_subtrees(batch_stats, dict(init_from, mapping=mapping), only_present=True)


def resample_pos_embed(pe, src_grid, dst_grid) -> np.ndarray:
    """(..., prefix + t*h*w, D) -> (..., prefix + t'*h'*w', D): temporal linear, then spatial bicubic.

    Matches PyTorch's `interpolate(align_corners=False)` ('linear' over time, 'bicubic' over space), as the
    original code uses; leading tokens (cls) beyond the grid are kept.
    """
    pe = np.asarray(pe)
    (t, h, w), (t2, h2, w2) = src_grid, dst_grid
    prefix = pe.shape[-2] - t * h * w
    if prefix < 0:
        raise ValueError(f"pos_embed with {pe.shape[-2]} tokens cannot hold a {src_grid} grid")
    grid = pe[..., prefix:, :].astype(np.float64).reshape(*pe.shape[:-2], t, h, w, pe.shape[-1])
    grid = np.einsum("Tt,...thwd->...Thwd", _interp_matrix(t, t2, cubic=False), grid)
    grid = np.einsum("Hh,...thwd->...tHwd", _interp_matrix(h, h2, cubic=True), grid)
    grid = np.einsum("Ww,...thwd->...thWd", _interp_matrix(w, w2, cubic=True), grid)
    grid = grid.reshape(*pe.shape[:-2], t2 * h2 * w2, pe.shape[-1]).astype(pe.dtype)
    return np.concatenate([pe[..., :prefix, :], grid], axis=-2)


def _interp_matrix(n_in: int, n_out: int, cubic: bool) -> np.ndarray:
    """(n_out, n_in) weights of PyTorch's 1-D linear or cubic (a=-0.75) interpolation, border clamped."""
    x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(x).astype(int)
    f = x - base
    if cubic:
        a = _CUBIC_A
        near = lambda d: ((a + 2) * d - (a + 3)) * d * d + 1
        far = lambda d: ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        weights = np.stack([far(f + 1), near(f), near(1 - f), far(2 - f)], axis=-1)
        taps = base[:, None] + np.arange(-1, 3)
    else:
        weights = np.stack([1 - f, f], axis=-1)
        taps = base[:, None] + np.arange(2)
    matrix = np.zeros((n_out, n_in))
    np.add.at(matrix, (np.arange(n_out)[:, None], np.clip(taps, 0, n_in - 1)), weights)
    return matrix


def _resamplable(rel: str, src_shape: tuple, dst_shape: tuple, src_grid, dst_grid) -> bool:
    """Whether a pos_embed of `src_shape` resamples from `src_grid` to `dst_grid` into `dst_shape`."""
    if rel.rsplit("/", 1)[-1] not in POS_EMBED_NAMES or not src_grid or not dst_grid:
        return False
    prefix = src_shape[-2] - math.prod(src_grid)
    return (prefix >= 0 and src_shape[:-2] == dst_shape[:-2] and src_shape[-1] == dst_shape[-1]
            and dst_shape[-2] == prefix + math.prod(dst_grid))


def _pytree_dir(path: epath.Path) -> epath.Path:
    """The pytree directory behind a run's checkpoint directory, a step directory or a bare pytree."""
    if (path / "state").is_dir():
        return path / "state"
    if (path / "_METADATA").exists():
        return path
    latest = ocp.path.step.latest_step_metadata(path, ocp.path.step.standard_name_format())
    if latest is None:
        raise FileNotFoundError(f"no finished checkpoint in {path}")
    return latest.path / "state"


def _path(key_path) -> str:
    """Tree key path -> 'params/encoder/pos_embed'."""
    return jax.tree_util.keystr(key_path, simple=True, separator="/")


def _parts(path: str) -> list:
    return [p for p in path.split("/") if p]


def _subtree(tree, path: str):
    """tree['a']['b'] for path 'a/b'; the whole tree for ''."""
    for i, key in enumerate(_parts(path)):
        if not isinstance(tree, dict) or key not in tree:
            have = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
            raise KeyError(f"no {'/'.join(_parts(path)[:i + 1])!r} in the tree (have {have})")
        tree = tree[key]
    return tree


def _has(tree, path: str) -> bool:
    try:
        _subtree(tree, path)
        return True
    except KeyError:
        return False


def _set(tree: dict, path: str, value):
    """In place: tree['a']['b'] = value for path 'a/b', creating dicts on the way."""
    *parents, last = _parts(path)
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[last] = value


def _replace(tree, path: str, value):
    """A copy of `tree` with the subtree at `path` replaced (the original is left as it was)."""
    parts = _parts(path)
    if not parts:
        return value
    return {**tree, parts[0]: _replace(tree[parts[0]], "/".join(parts[1:]), value)}

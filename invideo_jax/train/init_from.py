"""Stage-to-stage restore (`config.init_from`): subtrees of an earlier run's checkpoint read into a new model's params,
with a differing pos_embed resampled to the new token grid, and optionally a classifier head started from some of
the saved head's classes (`head_rows`: K710 -> K400/600/700 fine-tuning, as the official)."""
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from invideo_jax.evaluate import label_map
from invideo_jax.models import posembed
from invideo_jax.train.checkpoint import tree_path

HEAD = "head"  # the mapping target that `head_rows` selects classes of


def head_rows(init_from, classes: int):
    """The saved head's classes that `init_from.head_rows` gives a head of `classes` (None: no selection):
    'first' (the first `classes`: the official K400 from a K710 head, whose first 400 classes are K400's) or a JSON
    index list (entry j: the saved class of class j; the official `label_mixto600.json` / `label_mixto700.json`)."""
    spec = init_from.get("head_rows", "")
    if not spec:
        return None
    rows = np.arange(classes) if spec == "first" else label_map.read_index_map(spec)
    if len(rows) != classes:
        raise ValueError(f"config.init_from.head_rows={spec!r} selects {len(rows)} classes but the head has {classes}")
    return rows


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
    `pos_embed_grid_src` and `pos_embed_grid_dst` (t, h, w); with `init_from.head_rows` the leaves of the mapping
    target `head` (kernel (..., classes), bias (classes,)) take the saved head's entries of those classes on their
    last axis (`head_rows`); any other difference raises, listing every path.
    """
    source_dir = _pytree_dir(epath.Path(init_from["checkpoint"]))
    saved = {tree_path(p): m.shape for p, m in jax.tree_util.tree_leaves_with_path(
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
    head_source = mapping.get(HEAD)
    for src, leaf in resampled:
        saved_value = _subtree(restored, src)
        if head_source is not None and _within(src, head_source):
            value = np.take(saved_value, head_rows(init_from, leaf.shape[-1]), axis=-1).astype(leaf.dtype)
        else:
            value = posembed.resample_pos_embed(saved_value, *grids).astype(leaf.dtype)
        _set(restored, src, jax.make_array_from_callback(leaf.shape, leaf.sharding, lambda index, v=value: v[index]))
    for target, source in mapping.items():  # leaf by leaf: two targets may read overlapping sources
        values = jax.tree_util.tree_map_with_path(
            lambda key_path, _: _subtree(restored, "/".join(filter(None, (source, tree_path(key_path))))),
            _subtree(params, target))
        params = _replace(params, target, values)
    return params


def match_leaves(params, saved: dict, init_from) -> tuple:
    """(pairs, problems) for restoring `init_from.mapping`'s subtrees of `params` from a checkpoint whose leaves
    have the shapes `saved` ({'/'-joined path: shape}): (source path, target leaf) per leaf that restores (same shape,
    or a resamplable pos_embed), and a line per leaf that is missing or of another shape."""
    grids = init_from.get("pos_embed_grid_src"), init_from.get("pos_embed_grid_dst")
    pairs, problems = [], []
    if init_from.get("head_rows") and HEAD not in init_from["mapping"]:
        problems.append(f"init_from.head_rows={init_from['head_rows']!r} but the mapping has no target {HEAD!r}")
    for target, source in init_from["mapping"].items():
        if not _has(params, target):
            problems.append(f"{target}: not in the model (mapping target)")
            continue
        for key_path, leaf in jax.tree_util.tree_leaves_with_path(_subtree(params, target)):
            rel = tree_path(key_path)
            src = "/".join(filter(None, (source, rel)))
            tgt = "/".join(filter(None, (target, rel)))
            shape = saved.get(src)
            if shape is None:
                problems.append(f"{tgt}: missing in checkpoint as {src}")
            elif tuple(shape) == leaf.shape or posembed.resamplable(tgt, tuple(shape), leaf.shape, *grids):
                pairs.append((src, leaf))
            elif target == HEAD and init_from.get("head_rows"):
                rows = head_rows(init_from, leaf.shape[-1])
                if tuple(shape[:-1]) == leaf.shape[:-1] and rows.max() < shape[-1]:
                    pairs.append((src, leaf))
                else:
                    problems.append(f"{tgt}: target {leaf.shape} vs checkpoint {src} {tuple(shape)}: head_rows "
                                    f"needs the same leading axes and a class axis above {rows.max()}")
            else:
                problems.append(f"{tgt}: target {leaf.shape} vs checkpoint {src} {tuple(shape)}")
    return pairs, problems


def restore_batch_stats(batch_stats, init_from):
    """BatchNorm statistics for the params `init_from.mapping` restores: each `params/...` source is read as
    `batch_stats/...` where the model and the checkpoint both have statistics there (else they stay as given)."""
    mapping = {target: "batch_stats" + source[len("params"):] for target, source in init_from["mapping"].items()
               if source == "params" or source.startswith("params/")}
    return restore_subtrees(batch_stats, dict(init_from, mapping=mapping, head_rows=""), only_present=True)


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


def _within(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


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

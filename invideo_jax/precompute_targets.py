"""Pre-computes InternVideo2 stage-1 teacher targets to disk, for training without running the teachers.

  python -m invideo_jax.precompute_targets --config=configs/internvideo2_distill.py:1B --workdir=$TARGETS \
      [--views=K] [--shard_size=64] --config.data.train_annotations=... \
      --config.init_from.teacher_image.checkpoint=$INTERNVIT_6B --config.init_from.teacher_video.checkpoint=$VMAEV2_G
  python -m invideo_jax.main --config=configs/internvideo2_distill.py:1B,targets=$TARGETS --workdir=$WORKDIR \
      --config.data.train_annotations=...

--config and its overrides are invideo_jax.main's. For every training example i and view k < K, the clip is the one
the training pipeline builds from the seed [config.seed, i, k] (`target_cache.ReplayExample`); the frozen teachers
(`Distiller(parts='teachers')`, restored by the config's teacher `init_from` sources, which must name checkpoints) run
on it, jitted and batched (`config.batch_size` clips a step, split over the batch axes of the trainer's mesh), and
draw its visible tokens as training does, with the key `mask_key(config.seed, i, k)`. Written per (i, k): the visible
indices and each target on them, in `config.teacher_targets_dtype` (float16 or float32), into shards of
`--shard_size` examples (invideo_jax/data/target_cache.py). Resumable: a rerun skips complete shards and refuses a
directory written with other settings, naming them. Processes share the shards, each writing its own.
"""
import functools
import sys
import time

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import app, flags, logging
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from invideo_jax import config_files, console, distributed, paths, run_flags, sharding
from invideo_jax.data import pipeline, target_cache
from invideo_jax.train import init_from
from invideo_jax.train.tasks import get_task
from invideo_jax.train.tasks.distill import swap_layer_axis

flags.adopt_module_key_flags(run_flags)  # --help lists --config and --workdir
_VIEWS = flags.DEFINE_integer("views", 1, "Augmented clips (views) per training example.")
_SHARD_SIZE = flags.DEFINE_integer("shard_size", 64, "Training examples per shard (each with all its views).")


def mask_key(seed: int, index, view):
    """The key of the mask drawn for view `view` of example `index`."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), index), view)


def teacher_step(model, seed: int, dtype):
    """(params, video, index, view) -> per clip: 'visible_idx' and each target on those tokens, in `dtype`."""

    def step(params, video, index, view):
        keys = jax.vmap(functools.partial(mask_key, seed))(index, view)
        out = model.apply({"params": params}, video, train=True, mask_keys=keys)
        target = {name: x.astype(dtype) for name, x in swap_layer_axis(out["target"]).items()}
        return {"visible_idx": out["visible_idx"], **target}

    return step


def teacher_sources(config, teachers) -> list:
    """The `init_from` sources that restore `teachers` (params subtree names); each teacher needs one with a
    checkpoint. Sources of other subtrees (the student of an earlier stage) are left out."""
    sources, restored = [], set()
    for name, source in init_from.init_sources(config.init_from).items():
        targets = set(dict(source.get("mapping") or {}))
        if not targets or not targets <= set(teachers):
            continue
        field = f"config.init_from{'.' + name if name else ''}.checkpoint"
        if not source["checkpoint"]:
            raise ValueError(f"{field} is empty: pre-computing targets needs the weights of "
                             f"{', '.join(sorted(targets))}")
        if not epath.Path(source["checkpoint"]).exists():
            raise FileNotFoundError(f"{field}={source['checkpoint']}: no such checkpoint")
        sources.append(dict(source))
        restored |= targets
    missing = sorted(set(teachers) - restored)
    if missing:
        raise ValueError(f"config.init_from: no source restores {', '.join(missing)}; pre-computing targets needs "
                         f"the teachers' weights (e.g. --config.init_from.{missing[0]}.checkpoint=DIR)")
    return sources


def restored_params(boxed, sources, mesh, rule_table):
    """Params shaped and sharded as the abstract `boxed` (with logical axis names), all read from `sources`."""
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          sharding.strip_boxes(boxed), sharding.logical_shardings(boxed, mesh, rule_table))
    for source in sources:
        params = init_from.restore_subtrees(params, source)
    return params


def precompute(config, directory: str, views: int = 1, shard_size: int = 64) -> list:
    """Writes the teachers' targets of every (training example, view) into `directory`; returns the shards this
    process wrote (complete ones are skipped)."""
    if views < 1 or shard_size < 1:
        raise ValueError(f"--views={views} and --shard_size={shard_size} must be >= 1")
    dtype = config.get("teacher_targets_dtype", "float16")
    if dtype not in target_cache.STORAGE_DTYPES:
        raise ValueError(f"config.teacher_targets_dtype={dtype!r}: expected one of {target_cache.STORAGE_DTYPES}")
    task = get_task(config)
    if task.targets_dir:
        raise ValueError("config.teacher_targets is set: pre-computing runs the teachers; leave it empty")
    pipeline.check_data_config(config.data)
    source = pipeline.make_source(config.data, "train")
    mesh = sharding.make_mesh(config.mesh)
    rule_table = sharding.rules(config.sharding_rules)
    local_batch = sharding.local_batch_size(config.batch_size, mesh)
    batch_sh = sharding.batch_sharding(mesh)
    d = config.data
    video = jax.ShapeDtypeStruct((config.batch_size, d.num_frames, d.crop_size, d.crop_size, 3), jnp.float32)
    ids = jax.ShapeDtypeStruct((config.batch_size,), jnp.int32)
    step = teacher_step(task.teachers, config.seed, jnp.dtype(dtype))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rule_table):
        boxed = jax.eval_shape(task.teachers.init, jax.random.PRNGKey(0), video)["params"]
        sources = teacher_sources(config, list(boxed))
        fields = jax.eval_shape(step, sharding.strip_boxes(boxed), video, ids, ids)
        manifest = target_cache.new_manifest(
            task.targets_fingerprint(), num_examples=len(source), views=views, shard_size=shard_size, dtype=dtype,
            fields={k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in fields.items()})
        target_cache.prepare(directory, manifest)
        pending = target_cache.pending_shards(directory, manifest)
        distributed.barrier("precompute_targets_start")  # every process saw the same pending shards
        if not pending:
            logging.info("%s: all %d shards are complete", directory, manifest["num_shards"])
            return []
        params = restored_params(boxed, sources, mesh, rule_table)
        step = jax.jit(step, in_shardings=(jax.tree.map(lambda p: p.sharding, params), batch_sh, batch_sh, batch_sh),
                       out_shardings=batch_sh)
        replay = target_cache.ReplayExample(source, config.data, config.seed, views)
        written = _run(functools.partial(step, params), pending, manifest, directory, replay, config.data,
                       local_batch, batch_sh, mesh)
    distributed.barrier("precompute_targets_end")
    return written


def _run(step, pending, manifest, directory, replay, cfg, local_batch, batch_sh, mesh) -> list:
    """Computes and writes this process's share of the `pending` shards (in round r, process p takes pending shard
    r * processes + p); a process without a shard in a round computes padding, as every step involves every
    process."""
    count, index = jax.process_count(), jax.process_index()
    mine = pending[index::count]
    rounds = -(-len(pending) // count)
    views = manifest["views"]
    steps = -(-manifest["shard_size"] * views // local_batch)
    plan = [target_cache.shard_entries(manifest, shard) for shard in mine]
    padded = [np.resize(entries, steps * local_batch) for entries in plan]  # repeats entries up to whole steps
    padded += [np.zeros(steps * local_batch, np.int64)] * (rounds - len(mine))
    clips = _batches(padded, replay, cfg, local_batch)
    start, written = time.perf_counter(), []
    with tqdm.tqdm(total=sum(map(len, plan)), unit="clip", dynamic_ncols=True,
                   disable=not distributed.is_main()) as bar:
        for r, entries in enumerate(padded):
            outputs = []
            for chunk in entries.reshape(steps, local_batch):
                batch = pipeline.make_global({"video": next(clips)["video"], "index": (chunk // views).astype(np.int32),
                                              "view": (chunk % views).astype(np.int32)}, batch_sh)
                outputs.append(step(batch["video"], batch["index"], batch["view"]))
            if r >= len(mine):
                continue
            outputs = multihost_utils.global_array_to_host_local_array(outputs, mesh, P(sharding.BATCH_AXES))
            rows = len(plan[r])
            target_cache.write_shard(directory, mine[r], {
                field: np.concatenate([np.asarray(out[field]) for out in outputs])[:rows] for field in outputs[0]})
            written.append(mine[r])
            bar.update(rows)
    logging.info("wrote %d shard(s) in %.0f s; %d were complete before", len(written), time.perf_counter() - start,
                 manifest["num_shards"] - len(pending))
    return written


def _batches(plan, replay, cfg, batch_size):
    """Batches of the clips of the entries in `plan` (a list of entry arrays), in order."""
    dataset = grain.MapDataset.source(np.concatenate(plan)).map(replay)
    dataset = dataset.to_iter_dataset(pipeline.read_options(cfg, batch_size)).batch(batch_size, drop_remainder=True)
    return iter(pipeline.with_workers(dataset, cfg))


def main(argv):
    del argv
    console.quiet()
    distributed.initialize()
    workdir = paths.resolve(run_flags.WORKDIR.value)
    print(f"logs: {console.log_to_file(workdir)}", flush=True)
    precompute(paths.resolve_config(run_flags.CONFIG.value), workdir, _VIEWS.value, _SHARD_SIZE.value)


if __name__ == "__main__":
    app.run(main, argv=config_files.resolve_flag(sys.argv))

"""Per-clip teacher targets on disk (InternVideo2 stage 1) and the training batches read back from them.

No clip is stored. Entry e = example * views + view stands for the training clip that `pipeline.TrainExample` builds
for `example` with `np.random.default_rng([seed, example, view])`: decoding, sampling and augmentation are replayed
from that seed, and the cache holds what the teachers gave for the clip. A cache directory holds

  manifest.json   the fingerprint (what the targets depend on: the data config, the teachers' settings, the seed),
                  views, storage dtype, shard size, counts, the shard names and each field's per-clip shape and dtype
  shard-00000/    the entries of examples [0, shard_size) x every view, in entry order: one `<field>.npy` per field
  ...             (`visible_idx` and each target), read by memory map, one row at a time

A shard is written as `<name>.tmp` and renamed once complete, so a shard directory is always whole; readers open only
the shards the manifest names and refuse a cache with any of them missing. Training batches carry the stored fields
as `teacher/<field>`.
"""
import json
import os
import shutil

import jax
import numpy as np

from invideo_jax import distributed
from invideo_jax.data import pipeline
from invideo_jax.files import atomic_write

MANIFEST = "manifest.json"
BATCH_PREFIX = "teacher/"
STORAGE_DTYPES = ("float16", "float32")
# Data fields that do not change a training clip: left out of the fingerprint.
CLIP_INDEPENDENT = ("workers", "threads", "prefetch", "cache_videos", "eval_annotations", "eval_split", "eval_clips",
                    "eval_crops")


def make_fingerprint(data_cfg, teachers: dict, seed: int) -> dict:
    """What stored targets depend on, JSON-normalised: the data config (but CLIP_INDEPENDENT), the teachers' settings
    and the seed."""
    data = {k: v for k, v in data_cfg.to_dict().items() if k not in CLIP_INDEPENDENT}
    return _json({"data": data, "teachers": teachers, "seed": seed})


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


def new_manifest(fingerprint: dict, *, num_examples: int, views: int, shard_size: int, dtype: str,
                 fields: dict) -> dict:
    """The manifest of a cache; `fields`: {field: ShapeDtypeStruct of one clip's value}."""
    num_shards = -(-num_examples // shard_size)
    return _json({"fingerprint": fingerprint, "num_examples": num_examples, "views": views, "shard_size": shard_size,
                  "dtype": dtype, "num_entries": num_examples * views, "num_shards": num_shards,
                  "shards": [shard_name(s) for s in range(num_shards)],
                  "fields": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in fields.items()}})


def shard_entries(manifest: dict, shard: int) -> np.ndarray:
    """The entries (example * views + view) that `shard` holds, in order."""
    per_shard = manifest["shard_size"] * manifest["views"]
    return np.arange(shard * per_shard, min((shard + 1) * per_shard, manifest["num_entries"]))


class ReplayExample:
    """Entry -> the training clip TrainExample builds for its example from the seed [seed, example, view] (a grain
    map)."""

    def __init__(self, source, cfg, seed: int, views: int):
        self.example, self.seed, self.views = pipeline.TrainExample(source, cfg), seed, views

    def __call__(self, entry: int) -> dict:
        index, view = divmod(int(entry), self.views)
        return self.example(index, np.random.default_rng([self.seed, index, view]))


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------


def prepare(directory: str, manifest: dict) -> dict:
    """Makes `directory` a cache for `manifest` (process 0 writes it), or checks the one there against it. Raises an
    OSError naming the directory when it cannot be written, a ValueError naming the fields that differ."""
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".write_probe_{jax.process_index()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise OSError(e.errno, f"cannot write the teacher-targets directory {directory}: {e.strerror}") from None
    path = os.path.join(directory, MANIFEST)
    if os.path.exists(path):
        problems = differences(read_manifest(directory), manifest)
        if problems:
            raise ValueError(f"{directory} holds targets of other settings; differing: " + "; ".join(problems)
                             + ". Resume with the same config and flags, or write to another directory")
    elif distributed.is_main():
        atomic_write(path, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
    return manifest


def pending_shards(directory: str, manifest: dict) -> list:
    """The shards not yet complete (no shard directory; a `.tmp` one is unfinished)."""
    return [s for s, name in enumerate(manifest["shards"]) if not os.path.isdir(os.path.join(directory, name))]


def write_shard(directory: str, shard: int, arrays: dict) -> None:
    """Writes `arrays` ({field: (entries, ...)}) as shard `shard`: into `<name>.tmp`, renamed once complete."""
    final = os.path.join(directory, shard_name(shard))
    partial = final + ".tmp"
    shutil.rmtree(partial, ignore_errors=True)  # left by a run that was cut short
    os.makedirs(partial)
    for field, array in arrays.items():
        np.save(os.path.join(partial, f"{field}.npy"), array)
    os.rename(partial, final)


# ----------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------


class TargetCache:
    """The stored fields of each entry of a complete cache, read by memory map."""

    def __init__(self, directory: str, manifest: dict):
        self.directory, self.manifest = directory, manifest
        self.per_shard = manifest["shard_size"] * manifest["views"]

    def __len__(self) -> int:
        return self.manifest["num_entries"]

    def __getitem__(self, entry: int) -> dict:
        shard, row = divmod(int(entry), self.per_shard)
        folder = os.path.join(self.directory, self.manifest["shards"][shard])
        return {field: np.array(np.load(os.path.join(folder, f"{field}.npy"), mmap_mode="r")[row])
                for field in self.manifest["fields"]}


def open_cache(directory: str, fingerprint: dict) -> TargetCache:
    """The complete cache in `directory`, computed for `fingerprint`; errors name what is missing or differs."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"teacher-targets cache {directory}: no such directory (write it with "
                                f"`python -m invideo_jax.precompute_targets --config=... --workdir={directory}`)")
    manifest = read_manifest(directory)
    problems = differences(manifest["fingerprint"], fingerprint)
    if problems:
        raise ValueError(f"teacher-targets cache {directory} was computed for another config; differing: "
                         + "; ".join(problems))
    missing = pending_shards(directory, manifest)
    if missing:
        raise ValueError(f"teacher-targets cache {directory} is incomplete: {len(missing)} of "
                         f"{manifest['num_shards']} shards missing ({', '.join(shard_name(s) for s in missing[:5])}"
                         f"{', ...' if len(missing) > 5 else ''}); rerun precompute_targets, which resumes")
    return TargetCache(directory, manifest)


def read_manifest(directory: str) -> dict:
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(f"teacher-targets cache {directory}: no {MANIFEST} (not a cache, or its "
                                "pre-computation never started)")
    with open(path) as f:
        return json.load(f)


class CachedExample:
    """Entry -> its replayed training clip with its stored fields as `teacher/<field>` (a grain map)."""

    def __init__(self, replay: ReplayExample, cache: TargetCache):
        self.replay, self.cache = replay, cache

    def __call__(self, entry: int) -> dict:
        stored = {BATCH_PREFIX + field: value for field, value in self.cache[entry].items()}
        return {**self.replay(entry), **stored}


def train_iterator(directory: str, cfg, fingerprint: dict, *, seed: int, batch_size: int,
                   process_index: int | None = None, process_count: int | None = None):
    """An endless iterator of this host's training batches from the cache: the cache's entries shuffled, repeated,
    sliced per process and batched as `pipeline.train_iterator` does with examples (its fields, `pipeline.batch_spec`,
    and the stored ones); resumable with get_state/set_state."""
    pipeline.check_data_config(cfg)
    if cfg.mixup or cfg.cutmix:
        raise ValueError("data.mixup/cutmix: stored teacher targets belong to unmixed clips; set both to 0")
    if cfg.num_sample != 1:
        raise ValueError(f"data.num_sample={cfg.num_sample}: stored teacher targets hold one clip per video; set 1")
    cache = open_cache(directory, fingerprint)
    source = pipeline.make_source(cfg, "train")
    if len(source) != cache.manifest["num_examples"]:
        raise ValueError(f"teacher-targets cache {directory} holds {cache.manifest['num_examples']} examples; "
                         f"data.train_annotations lists {len(source)}")
    replay = ReplayExample(source, cfg, fingerprint["seed"], cache.manifest["views"])
    entries, host_seed = pipeline.shuffled_examples(len(cache), seed=seed, process_index=process_index,
                                                    process_count=process_count)
    return pipeline.training_batches([(entries.map(CachedExample(replay, cache)), len(cache))], cfg, source,
                                     batch_size=batch_size, host_seed=host_seed)


# ----------------------------------------------------------------------------------------------------------
# Manifest helpers
# ----------------------------------------------------------------------------------------------------------


def differences(saved: dict, current: dict) -> list:
    """'path: cache X, run Y' for each leaf of the (nested) dicts that differs."""
    flat_saved, flat_current = _flatten(saved), _flatten(current)
    return [f"{path}: cache {flat_saved.get(path, '(absent)')!r}, run {flat_current.get(path, '(absent)')!r}"
            for path in sorted(set(flat_saved) | set(flat_current)) if flat_saved.get(path) != flat_current.get(path)]


def _flatten(tree, path: str = "") -> dict:
    if not isinstance(tree, dict) or not tree:
        return {path: tree}
    return {k: v for key, value in tree.items() for k, v in _flatten(value, f"{path}.{key}" if path else key).items()}


def _json(value):
    """`value` as JSON would give it back (tuples as lists, dtypes as strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))

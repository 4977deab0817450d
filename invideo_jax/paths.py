"""Paths a user gives (flags, config fields) made absolute once, where they enter the program.

Orbax refuses relative checkpoint paths, and a relative path means something else after a `chdir`; remote paths
(`gs://...`, anything with a scheme) are left as they are. Strings holding an unfilled `{workdir}` stay too: they
are resolved after `stages.stage_config` fills them.
"""
import os
import re

from invideo_jax.train import init_from

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
DATA_FIELDS = ("root", "train_annotations", "eval_annotations", "tfds_dir", "tokenizer_path")


def resolve(path: str) -> str:
    """A local path -> absolute (`~` expanded); '' and remote or placeholder paths unchanged."""
    if not path or _SCHEME.match(path) or "{workdir}" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def resolve_config(config):
    """`config` (a ConfigDict) with its path fields resolved in place: `data.{DATA_FIELDS}`, `teacher_targets` and
    every `init_from` checkpoint. Returns `config`."""
    locked = config.is_locked
    config.unlock()
    for field in DATA_FIELDS:
        if field in config.get("data", {}):
            config.data[field] = resolve(config.data[field])
    if "teacher_targets" in config:
        config.teacher_targets = resolve(config.teacher_targets)
    for source in init_from.init_sources(config.get("init_from", {})).values():
        source.checkpoint = resolve(source.checkpoint)
    if locked:
        config.lock()
    return config

"""Class-index maps: a head trained on one label set (Kinetics-710) evaluated on, or fine-tuned from for, another
that it covers (Kinetics-400/600/700), by picking the head's rows of the target classes.

For evaluation the map is built from two class-name files, one name per line in class-index order (line i names
class i): `config.label_map.source` (the head's classes) and `.target` (the evaluation labels' classes). Names match
after lower-casing, dropping quotes, and reading '_' as a space. Fine-tuning from a K710 head reads the official
index lists instead (`read_index_map`: InternVideo2's `label_mixto{600,700}.json`; train/init_from.py).
"""
import json
import re

import numpy as np


def normalize_name(name: str) -> str:
    return re.sub(r"\s+", " ", name.lower().replace("_", " ").replace('"', "").replace("'", "")).strip()


def read_class_names(path: str) -> list[str]:
    """The class names of a file, in class-index order; an empty line or a repeated name raises, naming the line."""
    with open(path) as f:
        names = [line.rstrip("\r\n") for line in f]
    while names and not names[-1].strip():  # trailing newlines
        names.pop()
    seen = {}
    for number, name in enumerate(names, 1):
        key = normalize_name(name)
        if not key:
            raise ValueError(f"{path}:{number}: empty class name (line i must name class i - 1)")
        if key in seen:
            raise ValueError(f"{path}:{number}: class {name!r} repeats line {seen[key]}")
        seen[key] = number
    if not names:
        raise ValueError(f"{path}: no class names")
    return names


def label_map(source_path: str, target_path: str) -> np.ndarray:
    """int (target classes,): for target class j, the index of the same class in the source list."""
    source = {normalize_name(name): i for i, name in enumerate(read_class_names(source_path))}
    target = read_class_names(target_path)
    missing = [name for name in target if normalize_name(name) not in source]
    if missing:
        raise ValueError(f"{len(missing)} class(es) of {target_path} are not in {source_path}: "
                         + ", ".join(repr(name) for name in missing[:10]) + (" ..." if len(missing) > 10 else ""))
    return np.asarray([source[normalize_name(name)] for name in target], np.int32)


def from_config(config, head_classes: int) -> np.ndarray | None:
    """The map of `config.label_map` (None when its files are not set); checks it against the head's size."""
    files = config.get("label_map")
    if not files or not (files.source or files.target):
        return None
    if not (files.source and files.target):
        raise ValueError("config.label_map needs both files: source (the head's class names) and target")
    rows = label_map(files.source, files.target)
    source_count = len(read_class_names(files.source))
    if source_count != head_classes:
        raise ValueError(f"config.label_map.source {files.source} names {source_count} classes but the head has "
                         f"{head_classes} (config.model.kwargs.num_classes)")
    return rows


def read_index_map(path: str) -> np.ndarray:
    """int (target classes,) of a JSON list of class indices (entry j: the source class of target class j), the
    official `label_mixto600.json` / `label_mixto700.json`; anything else raises, naming the file."""
    try:
        with open(path) as f:
            rows = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such label-map file (a JSON list of source class indices)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not (isinstance(rows, list) and rows and all(isinstance(i, int) and i >= 0 for i in rows)):
        raise ValueError(f"{path}: expected a non-empty JSON list of class indices >= 0")
    if len(set(rows)) != len(rows):
        raise ValueError(f"{path}: a class index repeats")
    return np.asarray(rows, np.int64)

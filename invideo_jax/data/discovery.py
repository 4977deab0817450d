"""Which videos a command works on: a folder (searched recursively), one video file, or a list file, each with an
output name for the features written for it."""
import os

from invideo_jax.data.annotations import read_annotations

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".wmv", ".3gp",
                    ".ts", ".gif")


def find_videos(spec: str, root: str = "") -> list:
    """[(video path, output name without extension)] from a folder, one video file, or a list file."""
    if os.path.isdir(spec):
        found = sorted(os.path.join(d, f) for d, _, files in os.walk(spec) for f in files
                       if f.lower().endswith(VIDEO_EXTENSIONS))
        if not found:
            raise ValueError(f"--videos={spec}: no video files ({', '.join(VIDEO_EXTENSIONS)}) in the folder")
        return _named(found, spec)
    if not os.path.exists(spec):
        raise FileNotFoundError(f"--videos={spec}: no such folder or file")
    if spec.lower().endswith(VIDEO_EXTENSIONS):
        return _named([spec], os.path.dirname(spec))
    root = root or os.path.dirname(spec)
    if spec.lower().endswith((".json", ".jsonl")):
        paths = [record.path for record in read_annotations(spec, "json", root)]
    else:
        with open(spec) as f:
            lines = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        paths = [_list_path(line, root) for line in lines]
    if not paths:
        raise ValueError(f"--videos={spec} lists no videos")
    return _named(paths, os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]))


def _list_path(line: str, root: str) -> str:
    """A list line's video: the whole line if it names a file, else its first field (`path label` lists)."""
    full = os.path.join(root, line)
    if os.path.exists(full):
        return full
    return os.path.join(root, line.replace(",", " ").split()[0])


def _named(paths: list, base: str) -> list:
    """Output names: the path under `base` without extension (with it where two videos would collide)."""
    rel = [os.path.relpath(os.path.abspath(p), os.path.abspath(base)) for p in paths]
    stems = [os.path.splitext(r)[0] for r in rel]
    taken = {s for s in stems if stems.count(s) > 1}
    return [(p, r if s in taken else s) for p, r, s in zip(paths, rel, stems)]

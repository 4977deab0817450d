"""Annotation readers: VideoMAE, UniFormerV2, VideoMAE V2 pre-train, rawframe and InternVideo JSON lists."""
import dataclasses
import json
import os

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FORMATS = ("videomae", "uniformer", "videomae_v2", "rawframes", "json")


@dataclasses.dataclass(frozen=True)
class VideoRecord:
    """One annotated example: a video (or image) path, its class (-1 if none) and captions.

    `frame_count` > 0: `path` is a directory of that many numbered frame images (rawframes). `frame_window`
    (first, last frame, both included) or `time_window` (start, end seconds) restricts sampling to part of a video.
    """

    path: str
    label: int = -1
    captions: tuple[str, ...] = ()
    is_image: bool = False
    frame_count: int = 0
    frame_window: tuple[int, int] | None = None
    time_window: tuple[float, float] | None = None


def is_image_path(path: str) -> bool:
    """Whether a path names a still image (decided by its extension)."""
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def make_record(path: str, root: str = "", label: int = -1, captions=(), **fields) -> VideoRecord:
    """A record with `path` joined to `root` (absolute paths are kept); `fields`: other VideoRecord fields."""
    full_path = os.path.join(root, path) if root else path
    return VideoRecord(full_path, label, tuple(captions), is_image_path(path), **fields)


def _fields(line: str, separator: str | None, count: int, where: str) -> list[str]:
    """Splits a line into exactly `count` fields."""
    fields = line.split(separator)
    if len(fields) != count:
        raise ValueError(f"{where}: expected {count} fields, got {len(fields)}: {line!r}")
    return [f.strip() for f in fields]


def _integer(text: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{where}: expected an integer, got {text!r}") from None


def _videomae(line: str, where: str, root: str) -> VideoRecord:
    path, label = _fields(line, None, 2, where)
    return make_record(path, root, _integer(label, where))


def _uniformer(line: str, where: str, root: str) -> VideoRecord:
    path, label = _fields(line, ",", 2, where)
    return make_record(path, root, _integer(label, where))


def _videomae_v2(line: str, where: str, root: str) -> VideoRecord:
    path, start, total = _fields(line, None, 3, where)
    for number in (start, total):
        _integer(number, where)
    return make_record(path, root)


def _rawframes(line: str, where: str, root: str) -> VideoRecord:
    path, count, label = _fields(line, None, 3, where)
    frame_count = _integer(count, where)
    if frame_count < 1:
        raise ValueError(f"{where}: frame count must be >= 1, got {frame_count}: {line!r}")
    return make_record(path, root, _integer(label, where), frame_count=frame_count)


def _window(entry, where: str) -> dict:
    """The record fields of an entry's `video_start_frame`/`video_end_frame` or `start`/`end` (seconds) window."""
    windows = {}
    for first, last, field, kinds in (("video_start_frame", "video_end_frame", "frame_window", (int,)),
                                      ("start", "end", "time_window", (int, float))):
        if first not in entry and last not in entry:
            continue
        low, high = entry.get(first), entry.get(last)
        numbers = all(isinstance(v, kinds) and not isinstance(v, bool) for v in (low, high))
        if not numbers or not 0 <= low <= high or (field == "time_window" and low == high):
            order = "<=" if field == "frame_window" else "<"
            raise ValueError(f"{where}: {first!r} and {last!r} must both be given with 0 <= {first} {order} {last}"
                             f" ({'frame indices' if field == 'frame_window' else 'seconds'}): {low!r}, {high!r}")
        windows[field] = (low, high) if field == "frame_window" else (float(low), float(high))
    if len(windows) > 1:
        raise ValueError(f"{where}: give a frame window or a window in seconds, not both")
    return windows


def _json_entry(entry, where: str, root: str) -> VideoRecord:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    path = entry.get("video", entry.get("image"))
    if not isinstance(path, str):
        raise ValueError(f"{where}: needs a 'video' or 'image' path: {entry!r}")
    captions = entry.get("caption", [])
    captions = [captions] if isinstance(captions, str) else captions
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise ValueError(f"{where}: 'caption' must be a string or a list of strings")
    label = entry.get("label", -1)
    if not isinstance(label, int):
        raise ValueError(f"{where}: 'label' must be an integer, got {label!r}")
    return make_record(path, root, label, captions, **_window(entry, where))


def read_json_file(path: str, text: str | None = None):
    """The JSON value of file `path` (or of its already read `text`); invalid JSON is an error naming file and line."""
    if text is None:
        with open(path) as f:
            text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None


def _read_json(path: str, root: str) -> list[VideoRecord]:
    """A JSON array of entries, or JSON Lines (one entry per line)."""
    with open(path) as f:
        text = f.read()
    if text.lstrip().startswith("["):
        entries = read_json_file(path, text)
        return [_json_entry(e, f"{path}: entry {i}", root) for i, e in enumerate(entries)]
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: invalid JSON: {e.msg}") from None
            records.append(_json_entry(entry, f"{path}:{number}", root))
    return records


_LINE_PARSERS = {"videomae": _videomae, "uniformer": _uniformer, "videomae_v2": _videomae_v2,
                 "rawframes": _rawframes}


def read_annotations(path: str, format: str, root: str = "") -> list[VideoRecord]:
    """Reads an annotation file; relative video paths are joined to `root`."""
    if format == "json":
        records = _read_json(path, root)
    elif format in _LINE_PARSERS:
        parse = _LINE_PARSERS[format]
        with open(path) as f:
            records = [parse(line, f"{path}:{number}", root)
                       for number, line in enumerate(f, 1) if line.strip()]
    else:
        raise ValueError(f"Unknown annotation format {format!r}; expected one of {FORMATS}")
    if not records:
        raise ValueError(f"Annotation file {path} ({format} format) contains no examples")
    return records

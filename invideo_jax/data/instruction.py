"""VideoChat2 instruction data: the VideoChat2-IT JSON, the conversation templates, label masks and grain batches.

Records (`read_instruction_json`): a JSON list of {"video" | "image": path, "QA": [{"i", "q", "a"}, ...],
optional "start" / "end" seconds}; `caption_records` turns our caption annotations (stage 2) into records whose one
QA has no question and the caption as its answer. A record without a media path, with a QA entry that is not
{"i"?, "q"?, "a": str} or with bad bounds is an error naming the file and entry; a record with an empty QA list is
skipped and counted (logged).

Templates (`conversation`; the official `process_qa` strings, cut into pieces at the places the official masking
measures them; the first QA's `i`, when not empty, is the system prefix):
  mistral       {i }[INST] <Video>|</Video>{msg} [/INST]|[INST] {q} [/INST]|{a} </s>|...
                supervised: each `{a} </s>`
  vicuna        {i }###Human: <Video>|</Video>{msg}|###Human:|{q}|###Assistant: {a}|...|###
                supervised: everything after the video but the questions (role tags and `###` included)
  internvideo2  {i}[INST] <Video>|</Video>{msg}[/INST]|[INST] {q} [/INST]|{a}</s>|...   (InternVideo2-Chat-8B's
                `chat` layout; its training code is not public, so the Mistral masking is assumed: supervised
                `{a}</s>`; like its chat, the text after the visual tokens starts with its own BOS)
A QA without a question (captions) has no question piece. The Q-Former instruction (P7): mistral `i`; vicuna
`i + " " + q` of the first QA (empty without `i`); internvideo2 none.

Token layout (`encode_conversation`, pieces tokenized one by one without BOS, pitfall P8), of static length L:
  [BOS] tokens(before) [visual slots x Q] tokens(after pieces) [PAD ...]
`label_mask` marks the supervised tokens (logits at position t predict the token at t + 1). Content longer than
L - 1 is cut at the end, as the official does; a record left with no supervised token is skipped and counted
(`TooLong`). Position 0 holds the real BOS embedding: the official stage-3 training writes the integer BOS id into
every channel of position 0 instead (pitfall P1, AA PR #264); we train with the proper embedding, which inference
uses too, and say so rather than reproduce the bug.

Batches (`train_iterator`): each step is all-video or all-image (pitfall P14) and, when the task gives each record
a length bucket, of one sequence length: step i draws its group (kind, length) with probability proportional to
the number of records in it (the same on every host), then the examples at positions [i B, (i + 1) B) of that
group's own shuffled endless order. A still image is repeated over the clip's frames. A video that does not decode,
or a record that does not fit, is replaced by another record of its group (`bad` = 1 in the batch, summed in the
training metrics as `bad_videos`). With `data.cache_videos`, each video is decoded whole once and kept in memory (as
the other pipelines do)."""
import collections
import dataclasses
import functools
import os

import grain
import numpy as np
from absl import logging

from invideo_jax.data import pipeline, transforms
from invideo_jax.data.annotations import is_image_path, read_annotations, read_json_file
from invideo_jax.data.video import BadVideo, cached_frames, decode_frames, frame_rate, segment_indices

TEMPLATES = ("mistral", "vicuna", "internvideo2")
VIDEO_START, VIDEO_END = "<Video>", "</Video>"
MAX_REPLACEMENTS = 10
KINDS = ("image", "video")


class TooLong(ValueError):
    """A conversation whose supervised tokens do not fit the sequence length."""


@dataclasses.dataclass(frozen=True)
class QA:
    i: str
    q: str
    a: str


@dataclasses.dataclass(frozen=True)
class InstructionRecord:
    path: str
    is_image: bool
    qa: tuple
    start: float | None = None
    end: float | None = None


# ----------------------------------------------------------------------------------------------------------
# Templates
# ----------------------------------------------------------------------------------------------------------


def conversation(template: str, qa, msg: str = "") -> tuple:
    """(before, pieces): the text before the visual tokens (ending with `<Video>`), and the pieces after them as
    (text, supervised) pairs; see the module docstring. `msg` follows `</Video>` (e.g. a stage-2 prompt)."""
    if template not in TEMPLATES:
        raise ValueError(f"template={template!r}: expected one of {TEMPLATES}")
    system = qa[0].i.strip() if qa and qa[0].i.strip() else ""
    msg = msg.rstrip()
    if template == "vicuna":
        before = (f"{system} " if system else "") + f"###Human: {VIDEO_START}"
        pieces = [(VIDEO_END + msg, False)]
        for turn in qa:
            if turn.q:
                pieces += [("###Human:", True), (turn.q, False)]
            pieces.append((f"###Assistant: {turn.a}", True))
        return before, pieces + [("###", True)]
    if template == "mistral":
        before = (f"{system} " if system else "") + f"[INST] {VIDEO_START}"
        pieces = [(f"{VIDEO_END}{msg} [/INST]", False)]
        answer = "{} </s>"
    else:
        before = system + f"[INST] {VIDEO_START}"
        pieces = [(f"{VIDEO_END}{msg}[/INST]", False)]
        answer = "{}</s>"
    for turn in qa:
        if turn.q:
            pieces.append((f"[INST] {turn.q} [/INST]", False))
        pieces.append((answer.format(turn.a), True))
    return before, pieces


def qformer_instruction(template: str, qa) -> str:
    """The Q-Former's instruction text of a conversation (pitfall P7)."""
    if template == "internvideo2" or not qa or not qa[0].i.strip():
        return ""
    if template == "vicuna":
        return f"{qa[0].i.strip()} {qa[0].q}".strip()
    return qa[0].i.strip()


def bos_after_visual(template: str) -> bool:
    return template == "internvideo2"


def encode_conversation(tokenizer, before: str, pieces, num_visual: int, length: int,
                        bos_after: bool = False) -> dict:
    """int32 `ids`, bool `visual_mask`, `mask` (1 = token) and `label_mask` of length `length` (module docstring).
    Raises TooLong when no supervised token fits."""
    ids = tokenizer.encode(before, bos=True)
    visual_start = len(ids)
    ids += [tokenizer.pad_id] * num_visual
    supervised = [False] * len(ids)
    if bos_after:
        ids.append(tokenizer.bos_id)
        supervised.append(False)
    for text, label in pieces:
        piece = tokenizer.encode(text)
        ids += piece
        supervised += [label] * len(piece)
    if len(ids) > length:
        ids, supervised = ids[:length], supervised[:length]
    if visual_start + num_visual > length or not any(supervised):
        raise TooLong(f"no supervised token within {length} positions ({len(ids)} tokens before cutting)")
    out = {"ids": np.full(length, tokenizer.pad_id, np.int32), "visual_mask": np.zeros(length, bool),
           "mask": np.zeros(length, np.int32), "label_mask": np.zeros(length, bool)}
    out["ids"][:len(ids)] = ids
    out["visual_mask"][visual_start:visual_start + num_visual] = True
    out["mask"][:len(ids)] = 1
    out["label_mask"][:len(ids)] = supervised
    return out


# ----------------------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------------------


def _qa(entry, where: str) -> QA:
    if not isinstance(entry, dict) or not isinstance(entry.get("a"), str):
        raise ValueError(f"{where}: a QA entry must be an object with a string 'a' (and optional 'i', 'q'): "
                         f"{entry!r}")
    for key in ("i", "q"):
        if not isinstance(entry.get(key, ""), str):
            raise ValueError(f"{where}: QA field {key!r} must be a string: {entry!r}")
    return QA(entry.get("i", ""), entry.get("q", ""), entry["a"])


def _record(entry, where: str, root: str):
    """An InstructionRecord, or None for an empty QA list."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    kind = "video" if "video" in entry else "image"
    path = entry.get(kind)
    if not isinstance(path, str) or not path:
        raise ValueError(f"{where}: needs a 'video' or 'image' path: {str(entry)[:200]}")
    qa = entry.get("QA")
    if not isinstance(qa, list):
        raise ValueError(f"{where}: 'QA' must be a list of {{i, q, a}} objects")
    if not qa:
        return None
    start, end = entry.get("start"), entry.get("end")
    if (start is None) != (end is None) or (start is not None and not (
            isinstance(start, (int, float)) and isinstance(end, (int, float)) and 0 <= start < end)):
        raise ValueError(f"{where}: 'start' and 'end' must both be given, in seconds, with 0 <= start < end")
    is_image = kind == "image" or is_image_path(path)
    return InstructionRecord(os.path.join(root, path) if root else path, is_image,
                             tuple(_qa(e, f"{where}: QA {k}") for k, e in enumerate(qa)),
                             None if start is None else float(start), None if end is None else float(end))


def read_instruction_json(path: str, root: str = "") -> tuple:
    """(records, skipped): the VideoChat2-IT records of a JSON file; `skipped` counts those with an empty QA."""
    entries = read_json_file(path)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    records = [_record(e, f"{path}: entry {k}", root) for k, e in enumerate(entries)]
    kept = [r for r in records if r is not None]
    if len(kept) < len(records):
        logging.warning("%s: %d record(s) with an empty QA list skipped", path, len(records) - len(kept))
    if not kept:
        raise ValueError(f"{path}: no record with a QA list")
    return kept, len(records) - len(kept)


def caption_records(path: str, root: str = "") -> list:
    """Stage-2 records from a caption annotation file (the 'json' format): one per caption, the caption as the
    answer to no question."""
    records = []
    for video in read_annotations(path, "json", root):
        if not video.captions:
            raise ValueError(f"{path}: {video.path} has no caption")
        records += [InstructionRecord(video.path, video.is_image, (QA("", "", c),)) for c in video.captions]
    return records


# ----------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------


def clip_indices(video_frames: int, num_frames: int, rng, bounds=None) -> np.ndarray:
    """One random frame in each of `num_frames` equal segments ("rand"), within `bounds` (first, last) frames."""
    first, last = (0, video_frames - 1) if bounds is None else (max(0, bounds[0]), min(bounds[1], video_frames - 1))
    last = max(first, last)
    return first + segment_indices(last - first + 1, num_frames, rng=rng)


class InstructionBatches:
    """Step index -> one batch of a single group: media kind and sequence length (a grain random-access map)."""

    def __init__(self, groups: dict, totals: dict, cfg, encode, batch_size: int, seed: int, host_seed: int):
        """`groups` and `totals`: (kind, length) -> this host's records, all hosts' count. `seed` picks each step's
        group (the same on every host), `host_seed` this host's examples."""
        self.groups, self.cfg, self.encode, self.batch_size = groups, cfg, encode, batch_size
        self.seed, self.host_seed = seed, host_seed
        self.keys = sorted(totals)
        self.weights = np.asarray([totals[k] for k in self.keys], float) / sum(totals.values())
        self.videos = {} if cfg.get("cache_videos") else None

    def group(self, step: int) -> tuple:
        return self.keys[int(np.random.default_rng([self.seed, step]).choice(len(self.keys), p=self.weights))]

    @functools.lru_cache(maxsize=8)
    def _order(self, group: tuple, epoch: int) -> np.ndarray:
        kind, length = group
        seed = [self.host_seed, epoch, KINDS.index(kind)] + ([] if length is None else [length])
        return np.random.default_rng(seed).permutation(len(self.groups[group]))

    def _example(self, record, rng, length) -> dict:
        cfg = self.cfg
        bounds = None
        if record.start is not None and not record.is_image:
            fps = frame_rate(record.path)
            bounds = (round(record.start * fps), round(record.end * fps)) if fps > 0 else None
        indices_for = lambda n: clip_indices(n, cfg.num_frames, rng, bounds)
        if self.videos is None:
            frames = decode_frames(record.path, indices_for)
        else:
            frames = cached_frames(self.videos, record.path, lambda: decode_frames(record.path, np.arange), indices_for)
        box = transforms.random_resized_crop_box(frames.shape[1], frames.shape[2], rng, cfg.rrc_scale, cfg.rrc_ratio)
        clip = transforms.resize_box(frames, box, cfg.crop_size)
        if cfg.flip and rng.random() < 0.5:
            clip = clip[:, :, ::-1]
        return {"video": transforms.normalize(clip, cfg.normalize), **self.encode(record, rng, length)}

    def __call__(self, step: int) -> dict:
        group = self.group(step)
        kind, length = group
        records = self.groups[group]
        rng = np.random.default_rng([self.host_seed, step])
        examples, bad = [], []
        for j in range(self.batch_size):
            position = step * self.batch_size + j
            index = int(self._order(group, position // len(records))[position % len(records)])
            for attempt in range(MAX_REPLACEMENTS + 1):
                try:
                    examples.append(self._example(records[index], rng, length))
                    bad.append(int(attempt > 0))
                    break
                except (BadVideo, TooLong) as e:
                    logging.warning("%s: %s; replaced by another %s record", records[index].path, e, kind)
                    index = int(rng.integers(len(records)))
            else:
                raise RuntimeError(f"{MAX_REPLACEMENTS + 1} bad {kind} records in a row: check the data (see the log)")
        batch = {key: np.stack([e[key] for e in examples]) for key in examples[0]}
        return dict(batch, bad=np.asarray(bad, np.int32), label=np.full(self.batch_size, -1, np.int32))


def train_iterator(records, cfg, encode, *, seed: int, batch_size: int, lengths=None, process_index=None,
                   process_count=None):
    """This host's endless, resumable iterator of instruction batches (module docstring). `encode(record, rng,
    length)` -> the token fields of one record, `length` positions long (the task's template and tokenizers; may
    raise TooLong). `lengths`: each record's length (None: the task's one length, passed to `encode` as None); a
    batch then holds records of one length only."""
    process_index, process_count = pipeline.process_slice(process_index, process_count)
    keys = [("image" if r.is_image else "video", n) for r, n in zip(records, lengths or [None] * len(records))]
    totals = collections.Counter(keys)
    groups = {k: [r for r, key in zip(records, keys) if key == k][process_index::process_count] for k in totals}
    for (kind, length), records_here in groups.items():
        if not records_here:
            of_length = "" if length is None else f" of length {length}"
            raise ValueError(f"no {kind} records{of_length} for host {process_index} of {process_count}")
    batches = InstructionBatches(groups, totals, cfg, encode, batch_size, seed, pipeline.host_seed(seed, process_index))
    steps = grain.MapDataset.range(2 ** 62).map(batches)
    return iter(steps.to_iter_dataset(grain.ReadOptions(num_threads=cfg.threads, prefetch_buffer_size=cfg.prefetch)))

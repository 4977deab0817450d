"""grain pipelines: endless shuffled training batches, padded multi-view evaluation batches.

Configuration (`default_data_config()`, locked: unknown fields fail):
  train_annotations, eval_annotations  annotation files (any format but 'tfds')
  format             'videomae' (`path label`), 'uniformer' (`path,label`), 'videomae_v2'
                     (`path 0 -1`), 'rawframes' (`frame_dir num_frames label`), 'json' (InternVideo lists,
                     optionally with a `video_start_frame`/`video_end_frame` or `start`/`end` seconds window) or
                     'tfds' (packed ArrayRecord)
  root               directory joined to relative video paths
  frame_template, frame_start_index   file names of 'rawframes' folders: frame i is
                     frame_template.format(i + frame_start_index) (official: 'img_{:05}.jpg' from 1)
  train_examples     train on the first N examples of the training list only (0: all), e.g. few labels
  tfds_dir, tfds_name, train_split, eval_split   where a 'tfds' dataset lives and its splits
  num_frames         frames per clip (T)
  sampling           'dense' (T frames `sampling_rate` apart) or 'segment' (one per T equal parts)
  sampling_rate      frame stride of dense clips
  image_batches      still images (records whose path has an image extension) form training batches of their own,
                     one frame each ('video' (B, 1, H, W, 3): InternVideo2 runs them as images), mixed with the video
                     batches in proportion to the two counts, as the official separate image and video loaders; off:
                     an image is a clip of its one frame repeated num_frames times (evaluation always does that)
  num_sample         repeated augmentation: each decoded training video gives this many independently augmented
                     clips, next to each other in the batch (batch_size counts clips and must divide by it)
  crop_size          output height and width
  short_side         evaluation frames (and 'resize_crop' training frames) are resized to this short
                     side before cropping; must be >= crop_size
  train_crop         'multiscale' (VideoMAE pre-training), 'rrc' (random resized crop) or
                     'resize_crop' (resize short side, random crop)
  rrc_scale, rrc_ratio   area fraction and aspect ratio ranges of 'rrc'
  flip               random horizontal flip in training (off for left/right-sensitive labels, SSv2)
  randaug            '' or a timm spec such as 'rand-m7-n4-mstd0.5-inc1' (same ops on every frame)
  random_erase       probability of erasing one box (same on every frame) with noise
  mixup, cutmix      Beta alphas of batch mixup / cutmix (0 = off; both on: switch with p 0.5)
  label_smoothing    smoothing of the soft 'targets'
  num_classes        size of 'targets'; 0 for unlabelled data (no 'targets')
  normalize          'imagenet', 'clip' or 'uniformer' mean/std
  eval_clips, eval_crops   temporal clips x spatial crops per evaluation video
  min_frames         videos with fewer frames count as bad
  workers            grain worker processes (0: in the calling process)
  threads            reading threads per process
  prefetch           batches to prefetch per process
  cache_videos       keep whole decoded videos in memory (per process): for small datasets (the demo)
  tokenizer          '' (captions stay strings) or a `tokenizer.load_tokenizer` kind: 'clip', 'bert',
                     'words'; batches then carry 'text' token ids
  tokenizer_path     its vocabulary ('' = the packaged one, where a kind has one)
  text_length        token ids per caption (CLIP: 77)
  audio              add each clip's audio track as a log-mel spectrogram ('audio', 'audio_mask'; data/audio.py)
  audio_mel_bins, audio_frames   its mel bins and filterbank frames (InternVideo2-6B: 64 and 998, 10 s)

Batches are dicts of numpy arrays: a training batch's fields are `batch_spec`'s (shapes, dtypes and meaning), with
'caption' strings when the annotations have captions. An evaluation batch holds the same fields for each view (its
'targets' one-hot, its 'caption' the video's first) and adds 'video_index' and 'mask' (0 for padding and for bad
videos, which evaluation skips).
"""
import math

import grain
import jax
import ml_collections
import numpy as np
from absl import logging

from invideo_jax.data import audio, transforms
from invideo_jax.data.annotations import FORMATS, read_annotations
from invideo_jax.data.video import (BadVideo, cached_frames, decode_frames, dense_indices, frame_rate,
                                    read_frame_folder, segment_indices, within)

MAX_REPLACEMENTS = 10
_CHOICES = {
    "format": FORMATS + ("tfds",),
    "sampling": ("dense", "segment"),
    "train_crop": ("multiscale", "rrc", "resize_crop"),
    "normalize": tuple(transforms.NORMALIZATION),
}


def default_data_config() -> ml_collections.ConfigDict:
    """Every data field with its default (see the module docstring); locked."""
    config = ml_collections.ConfigDict(dict(
        train_annotations="", eval_annotations="", format="videomae", root="", train_examples=0,
        frame_template="img_{:05}.jpg", frame_start_index=1,
        tfds_dir="", tfds_name="", train_split="train", eval_split="validation",
        num_frames=16, sampling="dense", sampling_rate=4, num_sample=1, image_batches=False,
        crop_size=224, short_side=224, train_crop="rrc", rrc_scale=(0.08, 1.0),
        rrc_ratio=(3 / 4, 4 / 3), flip=True, randaug="", random_erase=0.0,
        mixup=0.0, cutmix=0.0, label_smoothing=0.0, num_classes=0, normalize="imagenet",
        eval_clips=1, eval_crops=1, min_frames=1, workers=0, threads=4, prefetch=2, cache_videos=False,
        tokenizer="", tokenizer_path="", text_length=77,
        audio=False, audio_mel_bins=audio.NUM_MEL_BINS, audio_frames=audio.TARGET_FRAMES,
    ))
    config.lock()
    return config


def check_data_config(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first invalid field."""
    for field, choices in _CHOICES.items():
        if cfg[field] not in choices:
            raise ValueError(f"data.{field}={cfg[field]!r}: expected one of {choices}")
    for field in ("num_frames", "sampling_rate", "crop_size", "eval_clips", "eval_crops",
                  "min_frames", "prefetch", "text_length", "audio_mel_bins", "audio_frames", "num_sample"):
        if cfg[field] < 1:
            raise ValueError(f"data.{field}={cfg[field]} must be >= 1")
    for field in ("num_classes", "workers", "threads", "mixup", "cutmix", "frame_start_index", "train_examples"):
        if cfg[field] < 0:
            raise ValueError(f"data.{field}={cfg[field]} must be >= 0")
    for field in ("random_erase", "label_smoothing"):
        if not 0 <= cfg[field] < 1:
            raise ValueError(f"data.{field}={cfg[field]} must be in [0, 1)")
    if cfg.short_side < cfg.crop_size:
        raise ValueError(f"data.short_side={cfg.short_side} must be >= crop_size={cfg.crop_size}")
    for field in ("rrc_scale", "rrc_ratio"):
        low, high = cfg[field]
        if not 0 < low <= high:
            raise ValueError(f"data.{field}={cfg[field]} must be an increasing positive pair")
    if (cfg.mixup or cfg.cutmix) and not cfg.num_classes:
        raise ValueError("data.mixup/cutmix need data.num_classes > 0")
    if cfg.format == "rawframes" and cfg.audio:
        raise ValueError("data.audio needs video files; data.format='rawframes' has no audio track")
    if cfg.image_batches and (cfg.audio or cfg.format == "tfds"):
        raise ValueError("data.image_batches needs annotation files (not 'tfds') and no data.audio")
    if cfg.randaug:
        try:
            transforms.parse_rand_augment(cfg.randaug)
        except ValueError as e:
            raise ValueError(f"data.randaug: {e}") from None


class FileVideoSource:
    """Annotated video files or frame folders: item i is (VideoRecord, path). With `cache`, whole decoded videos
    stay in memory."""

    def __init__(self, records, cache: bool = False, frame_template: str = "img_{:05}.jpg",
                 frame_start_index: int = 1):
        self.records = records
        self.has_captions = any(record.captions for record in records)
        self.cache = {} if cache else None
        self.frame_template, self.frame_start_index = frame_template, frame_start_index

    def _read(self, record, indices_for, min_frames: int) -> np.ndarray:
        if record.frame_count:
            return read_frame_folder(record.path, record.frame_count, indices_for, template=self.frame_template,
                                     start_index=self.frame_start_index, min_frames=min_frames)
        return decode_frames(record.path, indices_for, min_frames=min_frames)

    def decode(self, record, indices_for, min_frames: int) -> np.ndarray:
        if self.cache is None:
            return self._read(record, indices_for, min_frames)
        return cached_frames(self.cache, record.path, lambda: self._read(record, np.arange, min_frames), indices_for)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        return record, record.path


def make_source(cfg: ml_collections.ConfigDict, split: str):
    """The examples of split 'train' or 'eval' as a random-access source of (record, video)."""
    if cfg.format == "tfds":
        if not (cfg.tfds_dir and cfg.tfds_name):
            raise ValueError("data.format='tfds' needs data.tfds_dir and data.tfds_name")
        # Imported here: TFDS is slow to import and only this format needs it.
        from invideo_jax.data.tfds_builder import TfdsVideoSource
        return TfdsVideoSource(cfg.tfds_dir, cfg.tfds_name, cfg[f"{split}_split"])
    path = cfg[f"{split}_annotations"]
    if not path:
        raise ValueError(f"data.{split}_annotations is empty: name an annotation file")
    return FileVideoSource(read_annotations(path, cfg.format, cfg.root), cache=cfg.cache_videos,
                           frame_template=cfg.frame_template, frame_start_index=cfg.frame_start_index)


def clip_indices(cfg, video_frames: int, *, rng=None, view: int = 0) -> np.ndarray:
    """Frame indices of one clip: random with rng (training), else evaluation clip `view`."""
    if cfg.sampling == "dense":
        return dense_indices(video_frames, cfg.num_frames, cfg.sampling_rate, rng=rng, view=view,
                             num_views=cfg.eval_clips)
    return segment_indices(video_frames, cfg.num_frames, rng=rng, view=view,
                           num_views=cfg.eval_clips)


def windowed(record, media, indices_for):
    """`indices_for` restricted to the record's frame window, or to the frames of its window in seconds (frames
    round(start * fps) to round(end * fps)); unchanged for a record without a window."""
    if record.frame_window is not None:
        return within(indices_for, *record.frame_window)
    if record.time_window is not None:
        fps = frame_rate(media)
        if fps <= 0:
            raise BadVideo("no frame rate in the header: cannot place the window given in seconds")
        start, end = record.time_window
        return within(indices_for, round(start * fps), round(end * fps))
    return indices_for


def _decode_example(source, index: int, indices_for, min_frames: int):
    record, video = source[index]
    try:
        indices_for, picked = recorded(windowed(record, video, indices_for))
        if isinstance(source, FileVideoSource):
            frames = source.decode(record, indices_for, min_frames)
        else:
            frames = decode_frames(video, indices_for, min_frames=min_frames)
        return record, video, frames, picked[-1]
    except BadVideo as e:
        raise BadVideo(f"{record.path}: {e}") from e


def load_clips(source, index: int, rng: np.random.Generator, indices_for, min_frames: int):
    """Decodes example `index`; a bad video is logged and replaced by a random other example.

    Returns (record, media, frames, indices, bad): `media` is the decoded example's path or bytes, `indices` the
    frames decoded (in the whole video), bad = 1 when a replacement was used.
    """
    for attempt in range(MAX_REPLACEMENTS + 1):
        try:
            return *_decode_example(source, index, indices_for, min_frames), int(attempt > 0)
        except BadVideo as e:
            logging.warning("Bad video, replaced by another example: %s", e)
            index = int(rng.integers(len(source)))
    raise RuntimeError(f"{MAX_REPLACEMENTS + 1} bad videos in a row: check the data (see the log)")


def recorded(indices_for):
    """(indices_for, calls): the same function, which also appends each result to the list `calls`."""
    calls = []

    def indices_and_record(video_frames: int) -> np.ndarray:
        calls.append(indices_for(video_frames))
        return calls[-1]

    return indices_and_record, calls


def clip_audio(cfg, video, indices, *, rng=None) -> dict:
    """'audio' and 'audio_mask' of the seconds that frames `indices` of `video` cover (zeros and mask 0 without an
    audio track or a frame rate); rng picks the window of audio longer than `audio_frames` (else its start)."""
    fps = frame_rate(video)
    if fps <= 0:
        fields = audio.silent_example(cfg.audio_mel_bins, cfg.audio_frames)
    else:
        fields = audio.audio_example(video, *audio.clip_seconds(indices, fps), num_mel_bins=cfg.audio_mel_bins,
                                     target_frames=cfg.audio_frames, rng=rng)
    return {"audio": fields["audio"], "audio_mask": fields["audio_mask"]}


def _checked_label(record, num_classes: int) -> int:
    if num_classes and not 0 <= record.label < num_classes:
        raise ValueError(f"{record.path}: label {record.label} outside [0, {num_classes})")
    return record.label


class TrainExample:
    """Example index -> augmented training clip (a grain random map)."""

    def __init__(self, source, cfg):
        self.source, self.cfg = source, cfg
        self.rand_augment = transforms.parse_rand_augment(cfg.randaug) if cfg.randaug else None

    def _crop_box(self, height: int, width: int, rng):
        cfg = self.cfg
        if cfg.train_crop == "rrc":
            return transforms.random_resized_crop_box(height, width, rng, cfg.rrc_scale,
                                                      cfg.rrc_ratio)
        if cfg.train_crop == "multiscale":
            return transforms.multiscale_crop_box(height, width, rng, cfg.crop_size)
        return transforms.short_side_crop_box(height, width, cfg.short_side, cfg.crop_size, rng=rng)

    def _augment(self, frames: np.ndarray, rng) -> np.ndarray:
        cfg = self.cfg
        box = self._crop_box(frames.shape[1], frames.shape[2], rng)
        clip = transforms.resize_box(frames, box, cfg.crop_size)
        if cfg.flip and rng.random() < 0.5:
            clip = clip[:, :, ::-1]
        if self.rand_augment:
            clip = transforms.rand_augment(clip, rng, self.rand_augment)
        return transforms.random_erase(transforms.normalize(clip, cfg.normalize), rng, cfg.random_erase)

    def __call__(self, index: int, rng: np.random.Generator) -> dict:
        """One clip's fields; with num_sample = n > 1, n clips of the video decoded once, stacked (n, ...)."""
        cfg = self.cfg
        record, media, frames, indices, bad = load_clips(self.source, index, rng,
                                                         lambda n: clip_indices(cfg, n, rng=rng), cfg.min_frames)
        examples = []
        for _ in range(cfg.num_sample):
            example = {"video": self._augment(frames, rng), "label": np.int32(_checked_label(record, cfg.num_classes)),
                       "bad": np.int32(bad)}
            if self.source.has_captions:
                example["caption"] = str(rng.choice(record.captions)) if record.captions else ""
            examples.append(example)
        if cfg.audio:
            sound = clip_audio(cfg, media, indices, rng=rng)
            for example in examples:
                example.update(sound)
        if cfg.num_sample == 1:
            return examples[0]
        return {key: np.stack([example[key] for example in examples]) for key in examples[0]}


def one_frame(cfg):
    """A copy of the data config whose clips have one frame (image batches)."""
    cfg = cfg.copy_and_resolve_references()
    cfg.num_frames = 1
    return cfg


def flatten_samples(batch: dict) -> dict:
    """(videos, num_sample, ...) fields -> (videos * num_sample, ...): a video's clips next to each other."""
    return {key: value.reshape((-1,) + value.shape[2:]) for key, value in batch.items()}


class MixTargets:
    """Batch -> batch with soft 'targets' (label smoothing, mixup/cutmix) (a grain random map)."""

    def __init__(self, cfg):
        self.cfg = cfg

    def __call__(self, batch: dict, rng: np.random.Generator) -> dict:
        cfg = self.cfg
        batch["video"], batch["targets"] = transforms.mix_batch(
            batch["video"], batch["label"], rng, num_classes=cfg.num_classes, mixup=cfg.mixup,
            cutmix=cfg.cutmix, smoothing=cfg.label_smoothing)
        return batch


class TokenizeCaptions:
    """Batch with 'caption' strings -> the same batch with 'text' token ids (a grain map)."""

    def __init__(self, cfg, source):
        if not getattr(source, "has_captions", False):
            raise ValueError(f"data.tokenizer={cfg.tokenizer!r} but the annotations have no captions "
                             "(use the 'json' format with a 'caption' field)")
        self.kind, self.path, self.length = cfg.tokenizer, cfg.tokenizer_path, cfg.text_length
        self.tokenizer = self._load()  # fails here, before any worker starts, if the vocabulary is missing

    def _load(self):
        from invideo_jax.data.tokenizer import load_tokenizer
        return load_tokenizer(self.kind, self.path, context_length=self.length)

    def __getstate__(self):  # worker processes load their own copy
        return dict(self.__dict__, tokenizer=None)

    def __call__(self, batch: dict) -> dict:
        if self.tokenizer is None:
            self.tokenizer = self._load()
        batch["text"] = self.tokenizer.encode([str(c) for c in batch["caption"]])
        return batch


def _tokenized(dataset, cfg, source):
    return dataset.map(TokenizeCaptions(cfg, source)) if cfg.tokenizer else dataset


def process_slice(process_index, process_count) -> tuple[int, int]:
    """(process_index, process_count), this process's where not given."""
    return (jax.process_index() if process_index is None else process_index,
            jax.process_count() if process_count is None else process_count)


def host_seed(seed: int, process_index: int) -> int:
    """The seed of process `process_index`'s examples, drawn from the run's `seed`."""
    return int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])


def read_options(cfg, batch_size: int) -> grain.ReadOptions:
    """grain reading threads and prefetch buffer from the data config."""
    return grain.ReadOptions(num_threads=cfg.threads,
                             prefetch_buffer_size=cfg.prefetch * batch_size)


def with_workers(dataset, cfg):
    """`dataset` prefetched by `cfg.workers` grain worker processes (0: as it is)."""
    if not cfg.workers:
        return dataset
    return dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.workers,
                                                            per_worker_buffer_size=cfg.prefetch))


def batch_spec(cfg, batch_size: int) -> dict:
    """{field: jax.ShapeDtypeStruct} of a training batch of `batch_size` clips as `train_iterator` yields it: its
    numeric fields, the ones `make_global` places on devices.

      video       float32 (B, T, crop, crop, 3), normalised; with num_sample = n > 1, rows k n .. k n + n - 1 are
                  clips of one video
      label       int32 (B,), -1 if none
      bad         int32 (B,), 1 where a bad video was replaced by another example
      targets     float32 (B, num_classes), soft (label smoothing, mixup / cutmix); only with num_classes > 0
      text        int32 (B, text_length), the caption's token ids; only with a tokenizer
      audio       float32 (B, audio_frames, audio_mel_bins), the log-mel of the seconds the clip's frames cover, and
      audio_mask  int32 (B,), 0 for a video without an audio track (its audio zeros, left out of the audio-visual
                  losses); only with `audio`
    """
    shapes = {"video": ((batch_size, cfg.num_frames, cfg.crop_size, cfg.crop_size, 3), np.float32),
              "label": ((batch_size,), np.int32), "bad": ((batch_size,), np.int32)}
    if cfg.num_classes:
        shapes["targets"] = ((batch_size, cfg.num_classes), np.float32)
    if cfg.tokenizer:
        shapes["text"] = ((batch_size, cfg.text_length), np.int32)
    if cfg.audio:
        shapes["audio"] = ((batch_size, cfg.audio_frames, cfg.audio_mel_bins), np.float32)
        shapes["audio_mask"] = ((batch_size,), np.int32)
    return {key: jax.ShapeDtypeStruct(*spec) for key, spec in shapes.items()}


def shuffled_examples(indices, *, seed: int, process_index: int | None = None, process_count: int | None = None,
                      stream: int = 0):
    """(this host's share of `indices` (an int n: range(n)) -- every process_count-th from process_index -- shuffled
    anew each epoch without end, seeded with the host's seed (+ `stream`, one per group of a run's examples), which
    later random maps draw from; that host seed)."""
    process_index, process_count = process_slice(process_index, process_count)
    seed = host_seed(seed, process_index)
    indices = np.arange(indices) if isinstance(indices, int) else np.asarray(indices)
    mine = indices[process_index::process_count]
    if not len(mine):
        raise ValueError(f"No training examples for host {process_index} of {process_count}")
    return grain.MapDataset.source(mine.tolist()).seed(seed + stream).shuffle().repeat(), seed


def training_batches(groups, cfg, source, *, batch_size: int, host_seed: int):
    """An iterator of training batches of `batch_size` clips (`batch_spec`) from `groups`, [(a grain MapDataset of
    what `TrainExample` gives, its global example count), ...]: each group batched on its own, the groups' batches
    mixed by their counts (the same kind of batch at each step on every host), a video's num_sample clips flattened,
    soft targets, caption token ids, worker processes; resumable with get_state/set_state."""
    if batch_size % cfg.num_sample:
        raise ValueError(f"data.num_sample={cfg.num_sample}: the batch of {batch_size} clips on this host does not "
                         f"divide into videos of {cfg.num_sample} clips")
    videos = batch_size // cfg.num_sample
    datasets = [examples.to_iter_dataset(read_options(cfg, videos)).batch(videos, drop_remainder=True)
                for examples, _ in groups]
    dataset = datasets[0] if len(datasets) == 1 else grain.IterDataset.mix(datasets, [count for _, count in groups])
    if cfg.num_sample > 1:
        dataset = dataset.map(flatten_samples)
    if cfg.num_classes:
        dataset = dataset.random_map(MixTargets(cfg), seed=host_seed)
    return iter(with_workers(_tokenized(dataset, cfg, source), cfg))


def train_iterator(cfg, *, seed: int, batch_size: int, process_index: int | None = None,
                   process_count: int | None = None):
    """An endless iterator of this host's training batches (`batch_spec`); with `image_batches`, still images in
    one-frame batches of their own; resumable with get_state/set_state."""
    check_data_config(cfg)
    source = make_source(cfg, "train")
    examples = np.arange(min(cfg.train_examples or len(source), len(source)))
    if cfg.image_batches:
        is_image = np.array([source.records[i].is_image for i in examples], bool)
        kinds = [(examples[~is_image], cfg), (examples[is_image], one_frame(cfg))]
    else:
        kinds = [(examples, cfg)]
    groups = []
    for stream, (indices, kind_cfg) in enumerate([kind for kind in kinds if len(kind[0])]):
        shuffled, seed_of_host = shuffled_examples(indices, seed=seed, process_index=process_index,
                                                   process_count=process_count, stream=stream)
        groups.append((shuffled.random_map(TrainExample(source, kind_cfg)), len(indices)))
    return training_batches(groups, cfg, source, batch_size=batch_size, host_seed=seed_of_host)


class EvalViews:
    """Example index (-1: padding) -> its eval_clips x eval_crops views, stacked (a grain map)."""

    def __init__(self, source, cfg):
        self.source, self.cfg = source, cfg
        self.num_views = cfg.eval_clips * cfg.eval_crops

    def _views(self, frames: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        height, width = frames.shape[2:4]
        boxes = [transforms.short_side_crop_box(height, width, cfg.short_side, cfg.crop_size,
                                                index=crop, count=cfg.eval_crops)
                 for crop in range(cfg.eval_crops)]
        return np.stack([transforms.resize_box(clip, box, cfg.crop_size)
                         for clip in frames for box in boxes])

    def __call__(self, index: int) -> dict:
        cfg, count = self.cfg, self.num_views
        sounds = [audio.silent_example(cfg.audio_mel_bins, cfg.audio_frames)] * cfg.eval_clips if cfg.audio else []
        if index < 0:
            size = cfg.crop_size
            clips = np.zeros((count, cfg.num_frames, size, size, 3), np.float32)
            label, bad, caption = -1, 0, ""
        else:
            indices_for = lambda n: np.stack([clip_indices(cfg, n, view=k) for k in range(cfg.eval_clips)])
            record, media, frames, indices, bad = load_clips(self.source, index, np.random.default_rng(index),
                                                             indices_for, cfg.min_frames)
            clips = transforms.normalize(self._views(frames), cfg.normalize)
            label = _checked_label(record, cfg.num_classes)
            caption = record.captions[0] if record.captions else ""
            if cfg.audio:
                sounds = [clip_audio(cfg, media, clip) for clip in indices]
        views = {"video": clips, "label": np.full(count, label, np.int32),
                 "bad": np.full(count, bad, np.int32),
                 "video_index": np.full(count, index, np.int32),
                 "mask": np.full(count, int(index >= 0 and not bad), np.int32)}
        if cfg.num_classes:
            targets = np.zeros((count, cfg.num_classes), np.float32)
            if label >= 0:
                targets[:, label] = 1
            views["targets"] = targets
        if self.source.has_captions:
            views["caption"] = np.full(count, caption)
        if cfg.audio:  # views are clip-major: each clip's sound serves its eval_crops views
            for key in ("audio", "audio_mask"):
                views[key] = np.repeat(np.stack([sound[key] for sound in sounds]), cfg.eval_crops, axis=0)
        return views


class SplitViews(grain.experimental.FlatMapTransform):
    """Stacked views -> one element per view."""

    def __init__(self, num_views: int):
        self.max_fan_out = num_views

    def flat_map(self, views: dict) -> list[dict]:
        return [{key: value[i] for key, value in views.items()} for i in range(self.max_fan_out)]


def eval_iterator(cfg, *, batch_size: int, process_index: int | None = None,
                  process_count: int | None = None):
    """This host's evaluation batches: every (video, clip, crop) view of its shard once, then
    padding (mask 0) so that every host yields the same number of full batches."""
    check_data_config(cfg)
    source = make_source(cfg, "eval")
    process_index, process_count = process_slice(process_index, process_count)
    views = EvalViews(source, cfg)
    num_batches = math.ceil(math.ceil(len(source) / process_count) * views.num_views / batch_size)
    indices = list(range(len(source)))[process_index::process_count]
    indices += [-1] * (math.ceil(num_batches * batch_size / views.num_views) - len(indices))
    dataset = grain.MapDataset.source(indices).map(views).to_iter_dataset(
        read_options(cfg, math.ceil(batch_size / views.num_views)))
    dataset = grain.experimental.FlatMapIterDataset(with_workers(dataset, cfg),
                                                    SplitViews(views.num_views))
    return iter(_tokenized(dataset.batch(batch_size, drop_remainder=True), cfg, source))


def make_global(batch: dict, sharding) -> dict:
    """Host-local numpy batch -> global jax.Arrays (string fields are left out)."""
    return {key: jax.make_array_from_process_local_data(sharding, value)
            for key, value in batch.items() if np.asarray(value).dtype.kind in "biuf"}

"""Features of whole videos, clip by clip: for temporal action localisation, retrieval indexes, linear probes.

  python -m invideo_jax.extract --model=videomae_vit_b_k400 --checkpoint=vit_b_k400_ft.pth \
      --videos=videos/ --output=features/ [--mode=clips] [--clip_frames=64 --stride_frames=16] [--batch=32]

--model is a preset name (`python -m invideo_jax.registry list`) or a config file; --checkpoint its weights (see
invideo_jax/inference.py). --videos is a folder (searched recursively), one video, a text file of paths (one per
line; `path label` lines of VideoMAE lists work) or an InternVideo JSON list; relative paths in a list are taken
from --root (default: the list's folder).

Clips slide over each video at a fixed stride: clip j covers source frames [j*S, j*S + L) (L = --clip_frames,
default the config's T x sampling_rate; S = --stride_frames, default L) and the model sees frames
j*S + floor(k*L/T), k < T (L = T x rate is VideoMAE's dense sampling). A clip exists while its last sampled frame
is in the video: floor((N - 1 - floor((T-1)*L/T)) / S) + 1 clips for N frames; a shorter video gives one clip
with its last frame repeated. Timestamps: [j*S / fps, min(j*S + L, N) / fps] seconds, fps from the container
(a constant frame rate is assumed).
Frames are resized to the config's short side and centre-cropped, as in evaluation. Each video is decoded once, in
order, by --workers threads; clips of several videos share a batch, split over every local device.

Writes OUTPUT/<path under the videos folder, extension replaced by .npz> holding
  features       --mode pooled: (D,), the mean of the clips' features | clips: (n, D) | tokens: (n, t, m, D)
  timestamps     (n, 2) start and end of each clip, seconds        frame_indices  (n, T) the frames sampled
  fps, num_frames, duration (= num_frames / fps; NaN timestamps when the container gives no frame rate)
and OUTPUT/index.json and index.csv: every video with its output file, status (done, failed, pending), number
of clips, fps, duration and error. Resumable: a video whose output exists is skipped; outputs are written to a
temporary file and renamed, so a killed run never leaves half a file; failed videos are tried again. A corrupt or
empty video is reported and listed as failed; the others go on. OUTPUT/settings.json keeps the settings: another
run with different settings refuses the folder (take a new --output, or --overwrite). Exit status 1 when some
video failed.
"""
import argparse
import concurrent.futures
import csv
import dataclasses
import io
import json
import math
import os
import queue
import sys
import threading

import numpy as np
from absl import logging
from tqdm import tqdm

from invideo_jax import paths as user_paths
from invideo_jax.data.discovery import find_videos
from invideo_jax.data.video import BadVideo, frame_rate, iter_frames
from invideo_jax.files import PARTIAL, atomic_write

MODES = ("pooled", "clips", "tokens")
INDEX_FIELDS = ("video", "output", "status", "num_clips", "num_frames", "fps", "duration", "error")


# ----------------------------------------------------------------------------------------------------------
# Clips
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClipPlan:
    """Sliding clips of `clip_frames` source frames every `stride_frames`, `num_frames` (T) sampled in each."""

    num_frames: int
    clip_frames: int
    stride_frames: int

    def __post_init__(self):
        for field in ("num_frames", "clip_frames", "stride_frames"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field}={getattr(self, field)} must be >= 1")
        object.__setattr__(self, "_offsets", tuple(k * self.clip_frames // self.num_frames
                                                   for k in range(self.num_frames)))

    @property
    def offsets(self) -> np.ndarray:
        """(T,) frames of a clip relative to its start."""
        return np.array(self._offsets)

    def num_clips(self, video_frames: int) -> int:
        last = int(self.offsets[-1])
        return (video_frames - 1 - last) // self.stride_frames + 1 if video_frames - 1 >= last else 1

    def frame_indices(self, video_frames: int) -> np.ndarray:
        """(n, T) sampled frames of every clip (a short video's clip repeats its last frame)."""
        starts = np.arange(self.num_clips(video_frames)) * self.stride_frames
        return np.minimum(starts[:, None] + self.offsets, video_frames - 1)

    def timestamps(self, video_frames: int, fps: float) -> np.ndarray:
        """(n, 2) start and end seconds of every clip."""
        starts = np.arange(self.num_clips(video_frames)) * self.stride_frames
        bounds = np.stack([starts, np.minimum(starts + self.clip_frames, video_frames)], axis=1)
        return bounds / fps if fps > 0 else np.full(bounds.shape, np.nan)

    def wanted(self, index: int) -> bool:
        """Whether some clip samples frame `index`."""
        return any(index >= o and (index - o) % self.stride_frames == 0 for o in self._offsets)

    def clips(self, frames):
        """(frame indices (T,), stacked frames) for each clip of an in-order stream of (index, frame) that holds at
        least the wanted frames and the last one (`video.iter_frames`); the clips are known before the end."""
        offsets, buffer, clip, index = self.offsets, {}, 0, -1
        for index, frame in frames:
            buffer[index] = frame
            while index >= clip * self.stride_frames + offsets[-1]:
                indices = clip * self.stride_frames + offsets
                yield indices, np.stack([buffer[i] for i in indices.tolist()])
                clip += 1
                for i in [i for i in buffer if i < clip * self.stride_frames]:
                    del buffer[i]
        if clip == 0 and index >= 0:  # shorter than one clip: its last frame repeated
            indices = np.minimum(offsets, index)
            yield indices, np.stack([buffer[i] for i in indices.tolist()])


def _read(path: str, plan: ClipPlan, crop, out: queue.Queue, stop: threading.Event):
    """Worker thread: ('clip', indices, uint8 crops) items, then ('end', num_frames, fps) or ('error', message)."""

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    last = -1

    def cropped():
        nonlocal last
        for last, frame in iter_frames(path, plan.wanted):
            yield last, crop(frame[None])[0]

    try:
        fps = frame_rate(path)
        for indices, clip in plan.clips(cropped()):
            if not put(("clip", indices, clip)):
                return
        put(("end", last + 1, fps))
    except BadVideo as e:
        put(("error", str(e)))
    except Exception as e:  # noqa: BLE001 -- one odd video must not stop the others; it is reported
        put(("error", f"{type(e).__name__}: {e}"))


# ----------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Job:
    entry: dict
    path: str
    output: str
    indices: list = dataclasses.field(default_factory=list)
    features: dict = dataclasses.field(default_factory=dict)  # clip number -> {'features': ..., ['tokens']}
    num_frames: int = -1  # known at the end of decoding
    fps: float = 0.0
    error: str = ""


def extract(model, videos: list, output_dir: str, *, mode: str = "clips", clip_frames: int = 0,
            stride_frames: int = 0, batch_size: int = 16, workers: int = 2, overwrite: bool = False,
            dtype: str = "float32", checkpoint: str = "", progress: bool = True) -> list:
    """Writes features of `videos` ([(path, output name)], `find_videos`) with a loaded `inference.InferenceModel`
    into `output_dir` (see the module docstring); returns the index entries."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    plan = ClipPlan(model.num_frames, clip_frames or model.num_frames * model.data.sampling_rate,
                    stride_frames or clip_frames or model.num_frames * model.data.sampling_rate)
    settings = dict(model=model.preset.name, checkpoint=os.path.abspath(checkpoint) if checkpoint else "",
                    mode=mode, num_frames=plan.num_frames, clip_frames=plan.clip_frames,
                    stride_frames=plan.stride_frames, crop_size=model.data.crop_size, dtype=dtype)
    _check_settings(output_dir, settings, overwrite)
    batch = math.ceil(batch_size / model.batch_multiple) * model.batch_multiple
    if batch != batch_size:
        logging.info("batch %d -> %d (a multiple of the %d devices)", batch_size, batch, model.batch_multiple)

    jobs, entries = [], []
    for path, name in videos:
        output = os.path.join(output_dir, name + ".npz")
        entry = dict(video=path, output=os.path.relpath(output, output_dir), status="pending", num_clips=0,
                     num_frames=0, fps=0.0, duration=0.0, error="")
        entries.append(entry)
        if not overwrite and _read_done(output, entry):
            continue
        jobs.append(_Job(entry, path, output))
    bar = tqdm(total=len(entries), initial=len(entries) - len(jobs), unit="video", disable=not progress,
               dynamic_ncols=True, mininterval=1.0)
    try:
        _run(model, jobs, plan, mode, batch, workers, dtype, bar)
    finally:
        bar.close()
        write_index(output_dir, entries, settings)
    return entries


def _check_settings(output_dir: str, settings: dict, overwrite: bool):
    path = os.path.join(output_dir, "settings.json")
    if os.path.exists(path) and not overwrite:
        with open(path) as f:
            old = json.load(f)
        if old != settings:
            changed = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v)
            raise ValueError(f"{output_dir} holds features made with other settings ({changed}); choose another "
                             "--output, or --overwrite to recompute every video")
    atomic_write(path, lambda f: f.write(json.dumps(settings, indent=1).encode()))


def _read_done(output: str, entry: dict) -> bool:
    """Fills `entry` from an existing output; False if there is none (or it cannot be read)."""
    if not os.path.exists(output):
        return False
    try:
        with np.load(output) as data:
            entry.update(status="done", num_clips=int(len(data["timestamps"])), num_frames=int(data["num_frames"]),
                         fps=float(data["fps"]), duration=float(data["duration"]))
        return True
    except Exception as e:  # noqa: BLE001 -- unreadable: computed again
        logging.warning("%s cannot be read (%s): computing it again", output, e)
        return False


def _run(model, jobs, plan, mode, batch, workers, dtype, bar):
    stop = threading.Event()
    queues = [queue.Queue(maxsize=max(batch, 2)) for _ in jobs]
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="decode")
    submitted = 0

    def submit_upto(n):
        nonlocal submitted
        while submitted < min(n, len(jobs)):
            executor.submit(_read, jobs[submitted].path, plan, model.crop, queues[submitted], stop)
            submitted += 1

    pending, waiting = [], []  # clips of the next batch: (job, clip number, uint8 clip); jobs with clips in flight
    tokens = mode == "tokens"

    def run_batch():
        clips = [clip for _, _, clip in pending]
        clips += clips[-1:] * (batch - len(clips))  # pad the last batch; the copies' outputs are dropped
        out = model.encode_video(model.normalize(np.stack(clips)), tokens=tokens)
        for i, (job, number, _) in enumerate(pending):
            job.features[number] = {k: v[i] for k, v in out.items()}
        pending.clear()
        for job in list(waiting):
            if _finish(job, plan, mode, dtype, bar):
                waiting.remove(job)

    try:
        for i, job in enumerate(jobs):
            submit_upto(i + max(workers, 1))
            while True:
                item = queues[i].get()
                if item[0] == "clip":
                    pending.append((job, len(job.indices), item[2]))
                    job.indices.append(item[1])
                    if len(pending) == batch:
                        run_batch()
                elif item[0] == "end":
                    job.num_frames, job.fps = item[1], item[2]
                    break
                else:
                    job.error = item[1]
                    break
            queues[i] = None  # its items are consumed
            if not _finish(job, plan, mode, dtype, bar):
                waiting.append(job)
        if pending:
            run_batch()
    finally:
        stop.set()
        executor.shutdown(wait=True, cancel_futures=True)


def _finish(job: _Job, plan: ClipPlan, mode: str, dtype: str, bar) -> bool:
    """Writes a job whose clips are all computed (or records its failure); False while clips are in flight."""
    entry = job.entry
    if job.error:
        entry.update(status="failed", error=job.error, output="")
        bar.write(f"failed: {job.path}: {job.error}")
    elif len(job.features) < len(job.indices):
        return False
    else:
        n = len(job.indices)  # = plan.num_clips(job.num_frames)
        features = np.stack([job.features[j]["tokens" if mode == "tokens" else "features"] for j in range(n)])
        if mode == "pooled":
            features = features.mean(axis=0)
        duration = job.num_frames / job.fps if job.fps > 0 else float("nan")
        arrays = dict(features=features.astype(dtype), timestamps=plan.timestamps(job.num_frames, job.fps),
                      frame_indices=np.stack(job.indices).astype(np.int32), fps=np.float64(job.fps),
                      num_frames=np.int64(job.num_frames), duration=np.float64(duration))
        atomic_write(job.output, lambda f: np.savez(f, **arrays))
        entry.update(status="done", num_clips=n, num_frames=job.num_frames, fps=job.fps, duration=duration)
        job.features.clear()
    bar.update(1)
    return True


def write_index(output_dir: str, entries: list, settings: dict):
    """OUTPUT/index.json ({'settings', 'videos'}) and OUTPUT/index.csv, each written atomically."""
    atomic_write(os.path.join(output_dir, "index.json"),
                 lambda f: f.write(json.dumps({"settings": settings, "videos": entries}, indent=1).encode()))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=INDEX_FIELDS)
    writer.writeheader()
    writer.writerows(entries)
    atomic_write(os.path.join(output_dir, "index.csv"), lambda f: f.write(text.getvalue().encode()))


def remove_partial_files(output_dir: str) -> int:
    """Deletes temporary files a killed run left behind; returns how many."""
    removed = 0
    for folder, _, files in os.walk(output_dir):
        for name in files:
            if PARTIAL in name:
                os.remove(os.path.join(folder, name))
                removed += 1
    return removed


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m invideo_jax.extract", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--model", required=True, help="preset name or config file PATH.py[:ARG]")
    parser.add_argument("--checkpoint", required=True, help="weights: a directory of ours or a PyTorch file")
    parser.add_argument("--format", default=None, help="converter format of a PyTorch file (default: the preset's)")
    parser.add_argument("--videos", required=True, help="folder, video file, text list or JSON list")
    parser.add_argument("--root", default="", help="folder of relative paths in a list (default: the list's)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--mode", choices=MODES, default="clips")
    parser.add_argument("--clip_frames", type=int, default=0, help="source frames per clip (default T x rate)")
    parser.add_argument("--stride_frames", type=int, default=0, help="frames between clip starts (default "
                                                                      "clip_frames)")
    parser.add_argument("--batch", type=int, default=16, help="clips per step, over all devices")
    parser.add_argument("--workers", type=int, default=2, help="videos decoded at once (threads)")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="of the saved features")
    parser.add_argument("--overwrite", action="store_true", help="recompute videos whose output exists")
    parser.add_argument("--shard_params", action="store_true", help="FSDP parameters over the devices")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv) -> int:
    args = parse_args(argv)
    args.videos, args.root, args.output, args.checkpoint = map(user_paths.resolve, (
        args.videos, args.root, args.output, args.checkpoint))
    from invideo_jax import inference  # after parsing: `--help` stays fast
    try:
        videos = find_videos(args.videos, args.root)
        model = inference.load(args.model, args.checkpoint, format=args.format, shard_params=args.shard_params)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    removed = remove_partial_files(args.output) if os.path.isdir(args.output) else 0
    if removed:
        logging.info("removed %d temporary files of an interrupted run", removed)
    try:
        entries = extract(model, videos, args.output, mode=args.mode, clip_frames=args.clip_frames,
                          stride_frames=args.stride_frames, batch_size=args.batch, workers=args.workers,
                          overwrite=args.overwrite, dtype=args.dtype, checkpoint=args.checkpoint,
                          progress=not args.no_progress)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = [e for e in entries if e["status"] == "failed"]
    print(f"{len(entries) - len(failed)} of {len(entries)} videos have features in {args.output}"
          + (f"; {len(failed)} failed (see {os.path.join(args.output, 'index.json')})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

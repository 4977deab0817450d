"""Feature extraction throughput: `invideo_jax.extract` on real h264 files, beside its parts measured alone.

    python -m benchmarks.extract_throughput [--model=videomae_vit_b_k400] [--videos=4] [--batch=4] [--workers=2]
        [--dir=/tmp/extract_bench]

Writes `--videos` Kinetics-like videos (340x256, 10 s, 30 fps, h264; benchmarks/kinetics_like.py) and a
checkpoint of the model's own initial weights (the weights do not change the time), then times, in this order:
  model      `InferenceModel.encode_video` on a ready float32 batch (the jitted encoder alone, compiled first)
  decode     the extractor with the model replaced by a no-op: decoding, frame sampling, resize + centre crop and
             normalisation, with `--workers` decoding threads
  extract    the extractor end to end (`extract.extract`, mode pooled, a fresh output folder)
Prints one Markdown row per part: clips, seconds, clips/s; then the overlap: (decode s + model s) / extract s, where
1 means the two parts ran one after the other and 2 would be perfect overlap of equal parts.
"""
import dataclasses
import math
import os
import shutil
import tempfile
import time

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags

from benchmarks import common
from benchmarks.kinetics_like import make_videos
from invideo_jax import extract, inference, presets
from invideo_jax.convert.api import save
from invideo_jax.data.discovery import find_videos
from invideo_jax.train import trainer
from invideo_jax.train.tasks import get_task

_MODEL = flags.DEFINE_string("model", "videomae_vit_b_k400", "Preset (registry) or config file to extract with.")
_VIDEOS = flags.DEFINE_integer("videos", 4, "Number of generated 10 s videos (4 clips each at 16 frames x 4).")
_BATCH = flags.DEFINE_integer("batch", 4, "Clips per model call.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Decoding threads of the extractor.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed model calls after the compiling one.")
_DIR = flags.DEFINE_string("dir", "/tmp/extract_bench", "Where the generated videos are kept.")


@dataclasses.dataclass
class DecodeOnly(inference.InferenceModel):
    """The loaded model with its encoder replaced by zeros: what the extractor costs without the model."""

    def encode_video(self, video: np.ndarray, tokens: bool = False) -> dict:
        return {"features": np.zeros((video.shape[0], 1), np.float32)}


def load_initial_weights(name: str, directory: str) -> inference.InferenceModel:
    """`inference.load` of a checkpoint holding the model's initial weights (written once)."""
    checkpoint = os.path.join(directory, "checkpoint_" + os.path.basename(name).replace(":", "_"))
    if not os.path.isdir(checkpoint):
        config = presets.build_config(presets.get(name))
        task = get_task(config)
        variables = task.init_variables(jax.random.PRNGKey(0), trainer.example_batch(config, 1))
        save(jax.device_get(nn.unbox(variables)), checkpoint)
    return inference.load(name, checkpoint, format=presets.OURS)


def timed_extract(model, videos, batch: int, workers: int) -> tuple:
    """(clips, seconds) of one `extract.extract` run into a fresh folder."""
    output = tempfile.mkdtemp(prefix="extract_bench_")
    try:
        start = time.perf_counter()
        entries = extract.extract(model, videos, output, mode="pooled", batch_size=batch, workers=workers,
                                  progress=False)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(output)
    failed = [e for e in entries if e["status"] != "done"]
    if failed:
        raise RuntimeError(f"extraction failed: {failed}")
    return sum(e["num_clips"] for e in entries), seconds


def main(_):
    annotations = make_videos(_DIR.value, _VIDEOS.value, gop=250)
    videos = find_videos(annotations, "")
    model = load_initial_weights(_MODEL.value, _DIR.value)
    d, batch = model.data, math.ceil(_BATCH.value / model.batch_multiple) * model.batch_multiple  # as extract's
    clip = np.random.default_rng(0).normal(size=(batch, d.num_frames, d.crop_size, d.crop_size, 3))
    clip = clip.astype(np.float32)
    model.encode_video(clip)  # compiles
    start = time.perf_counter()
    for _ in range(_REPEATS.value):
        model.encode_video(clip)
    model_s_per_clip = (time.perf_counter() - start) / (_REPEATS.value * batch)

    decode_clips, decode_s = timed_extract(DecodeOnly(**{f.name: getattr(model, f.name) for f in
                                                         dataclasses.fields(model)}), videos, batch, _WORKERS.value)
    clips, extract_s = timed_extract(model, videos, batch, _WORKERS.value)
    model_s = model_s_per_clip * clips
    print(f"{common.machine()}; {common.versions()}")
    print(f"{_MODEL.value}, {d.num_frames}x{d.crop_size}, batch {_BATCH.value}, {_WORKERS.value} decoding threads, "
          f"{len(videos)} videos of 340x256 h264")
    print("| part | clips | seconds | clips/s |\n|---|---|---|---|")
    for part, n, seconds in (("model alone", clips, model_s), ("decode + crop alone", decode_clips, decode_s),
                             ("extract, end to end", clips, extract_s)):
        print(f"| {part} | {n} | {seconds:.1f} | {n / seconds:.3f} |")
    print(f"overlap (decode s + model s) / extract s = {(decode_s + model_s) / extract_s:.2f}")


if __name__ == "__main__":
    app.run(main)

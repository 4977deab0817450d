"""Video decoding throughput: 16-frame clips of Kinetics-like h264 videos, PyAV beside decord.

    python -m benchmarks.decode_throughput [--dir=/tmp/decode_bench] [--clips=48] [--workers=0,1,2]

Generates a few 340x256, 10 s, 30 fps h264 videos once per keyframe interval (x264's default 250,
and 60), draws dense training clips (16 frames, stride 4, random start), and prints Markdown rows:
per-clip time of decoding alone (PyAV with and without seeking, decord) and of decoding plus the
224x224 training transforms, in CPU time of one core; then wall-clock clips/s of the grain training
pipeline with N worker processes (one reading thread each) on the first set of videos.
"""
import os
import time

import numpy as np
from absl import app, flags

from benchmarks.kinetics_like import FPS, HEIGHT, SECONDS, WIDTH, make_videos
from invideo_jax.data import pipeline, transforms, video

_DIR = flags.DEFINE_string("dir", "/tmp/decode_bench", "Where the generated videos are kept.")
_VIDEOS = flags.DEFINE_integer("videos", 4, "Number of generated videos.")
_CLIPS = flags.DEFINE_integer("clips", 48, "Clips timed per single-core measurement.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "grain worker counts to time.")
_BATCHES = flags.DEFINE_integer("batches", 6, "Batches of 8 timed per pipeline measurement.")
_GOPS = flags.DEFINE_list("gops", ["250", "60"], "Keyframe intervals of the generated video sets.")


def clip_plan(paths: list[str], count: int) -> list[tuple[str, np.ndarray]]:
    """`count` (path, frame indices) pairs: dense 16-frame clips at stride 4, random starts."""
    rng = np.random.default_rng(0)
    return [(paths[i % len(paths)], video.dense_indices(FPS * SECONDS, 16, 4, rng=rng))
            for i in range(count)]


def seconds_per_clip(read, plan, augment: bool, repeats: int = 3) -> float:
    """CPU seconds per clip of read(path, indices) (+ crop to 224, flip, normalise): the best
    mean over `repeats` passes, so other processes on the machine barely matter."""
    rng = np.random.default_rng(0)
    read(*plan[0])
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for path, indices in plan:
            frames = read(path, indices)
            if augment:
                box = transforms.random_resized_crop_box(HEIGHT, WIDTH, rng)
                clip = transforms.resize_box(frames, box, 224)[:, :, ::-1]
                transforms.normalize(clip, "imagenet")
        best = min(best, (time.process_time() - start) / len(plan))
    return best


def pyav(path, indices):
    return video.decode_frames(path, lambda count: indices)


def pyav_without_seeking(path, indices):
    seek_min_frame, video.SEEK_MIN_FRAME = video.SEEK_MIN_FRAME, 10**9
    try:
        return pyav(path, indices)
    finally:
        video.SEEK_MIN_FRAME = seek_min_frame


def decord_reader():
    """decord's get_batch on one thread, or None when decord is not installed."""
    try:
        import decord
    except ImportError:
        return None
    return lambda path, indices: decord.VideoReader(path, num_threads=1).get_batch(
        indices).asnumpy()


def pipeline_clips_per_second(annotations: str, workers: int, batches: int) -> float:
    """Clips/s of train_iterator (16x224x224, rrc + flip) after a warm-up of two batches."""
    cfg = pipeline.default_data_config()
    cfg.train_annotations, cfg.num_frames, cfg.sampling_rate = annotations, 16, 4
    cfg.workers, cfg.threads = workers, 1
    iterator = pipeline.train_iterator(cfg, seed=0, batch_size=8, process_index=0, process_count=1)
    for _ in range(2):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * 8 / (time.perf_counter() - start)


def main(argv):
    del argv
    readers = {"PyAV": pyav, "PyAV, never seeking": pyav_without_seeking}
    if decord_reader():
        readers["decord 0.6.0 (1 thread)"] = decord_reader()
    print("| decoder | keyframe interval | decode ms/clip | decode + crop/flip/normalise ms/clip "
          "| clips/s per core |")
    print("|---|---|---|---|---|")
    for gop in map(int, _GOPS.value):
        annotations = make_videos(os.path.join(_DIR.value, f"gop{gop}"), _VIDEOS.value, gop)
        paths = [line.split()[0] for line in open(annotations)]
        plan = clip_plan(paths, _CLIPS.value)
        for name, read in readers.items():
            decode = seconds_per_clip(read, plan, augment=False)
            full = seconds_per_clip(read, plan, augment=True)
            print(f"| {name} | {gop} | {1e3 * decode:.1f} | {1e3 * full:.1f} | {1 / full:.1f} |")
    annotations = os.path.join(_DIR.value, f"gop{_GOPS.value[0]}", "train.csv")
    print(f"\nload average before the pipeline runs: {os.getloadavg()[0]:.2f}")
    print("\n| grain workers | clips/s | clips/s per core |")
    print("|---|---|---|")
    for workers in map(int, _WORKERS.value):
        rate = pipeline_clips_per_second(annotations, workers, _BATCHES.value)
        cores = min(max(workers, 1), os.cpu_count())
        print(f"| {workers} | {rate:.1f} | {rate / cores:.1f} |")


if __name__ == "__main__":
    app.run(main)

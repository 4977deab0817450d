"""Kinetics-like test videos for the benchmarks: 340x256, 10 s, 30 fps h264 with texture, motion and noise."""
import os

import numpy as np
from PIL import Image

from invideo_jax.data import video

HEIGHT, WIDTH, FPS, SECONDS = 256, 340, 30, 10


def kinetics_like_frames(rng: np.random.Generator) -> np.ndarray:
    """A drifting smooth texture with a moving disc and sensor noise (about 0.3 MB per 10 s)."""
    coarse = rng.integers(0, 256, (HEIGHT // 8, WIDTH // 8, 3), dtype=np.uint8)
    texture = np.asarray(Image.fromarray(coarse).resize((WIDTH + 64, HEIGHT + 64),
                                                        Image.Resampling.BICUBIC), np.float32)
    y, x = np.mgrid[:HEIGHT, :WIDTH]
    frames = np.empty((FPS * SECONDS, HEIGHT, WIDTH, 3), np.uint8)
    for t in range(len(frames)):
        dx, dy = int(t * 0.2) % 64, int(32 + 30 * np.sin(t / 30))
        frame = texture[dy:dy + HEIGHT, dx:dx + WIDTH].copy()
        disc = (x - 170 - 120 * np.sin(t / 20)) ** 2 + (y - 128 - 80 * np.cos(t / 25)) ** 2 < 900
        frame[disc] = rng.integers(0, 256, 3)
        frames[t] = np.clip(frame + rng.normal(0, 4, frame.shape), 0, 255)
    return frames


def make_videos(directory: str, count: int, gop: int) -> str:
    """Writes the videos (once) and a VideoMAE list of them; returns the list's path."""
    os.makedirs(directory, exist_ok=True)
    rows = []
    for i in range(count):
        path = os.path.join(directory, f"{i}.mp4")
        if not os.path.exists(path):
            video.write_video(path, kinetics_like_frames(np.random.default_rng(i)), fps=FPS,
                              options={"g": str(gop)})
        rows.append(f"{path} 0\n")
    annotations = os.path.join(directory, "train.csv")
    with open(annotations, "w") as f:
        f.writelines(rows)
    return annotations

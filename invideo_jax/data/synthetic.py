"""The demo dataset: moving-shape mp4 videos whose 8 classes differ only by motion.

Every clip shows one coloured shape over static grey clutter and per-frame noise. The class is how
the shape moves (left, right, up, down, clockwise, counter-clockwise, growing, shrinking). Motion is
parameterised symmetrically about the middle frame from label-independent random draws, so a
scene's middle frame is the same whatever its class, reversing time turns a clip into the same
scene with the opposite motion, and translation wraps around so positions say nothing either.
Written as h264 mp4 with VideoMAE-style csv lists, InternVideo-style JSON lists with captions,
classes.txt, a word-level tokenizer of the captions (tokenizer/tokenizer.json), and the chat data: questions about
each video's colour, shape and motion (chat_train.json, chat_val.json) and the LLM's tokenizer (llm_tokenizer/), see
data/synthetic_chat.py. With `audio`, three of every four videos carry an AAC track: a tone whose pitch names the
class (`tone_hz`); the fourth has no audio track.
"""
import itertools
import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw

from invideo_jax.data import synthetic_chat
from invideo_jax.data.tokenizer import train_word_tokenizer
from invideo_jax.data.video import write_video

CLASSES = ("moving left", "moving right", "moving up", "moving down", "rotating clockwise",
           "rotating counter-clockwise", "growing", "shrinking")
# Two caption phrasings per class, in CLASSES order.
CAPTION_PHRASES = (("moves to the left", "slides left"), ("moves to the right", "slides right"),
            ("moves up", "rises upward"), ("moves down", "sinks downward"),
            ("rotates clockwise", "spins clockwise"),
            ("rotates counter-clockwise", "spins counter-clockwise"),
            ("grows", "gets bigger"), ("shrinks", "gets smaller"))
COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230),
          "yellow": (230, 210, 40), "cyan": (40, 210, 220), "magenta": (210, 50, 200),
          "orange": (240, 130, 30)}
# Vertex angles (turns) and radii (fractions of the shape radius) of each shape.
SHAPES = {
    "triangle": (np.arange(3) / 3, np.ones(3)),
    "square": (np.arange(4) / 4 + 1 / 8, np.ones(4)),
    "pentagon": (np.arange(5) / 5, np.ones(5)),
    "star": (np.arange(10) / 10, np.tile([1.0, 0.45], 5)),
}
_SUPERSAMPLE = 2
_WRAP_OFFSETS = np.array([(x, y) for x in (-1, 0, 1) for y in (-1, 0, 1)])
_VERSION = 5  # bump when the written files change, so cached datasets are regenerated
FPS = 8
# Without a lookahead and with one thread: x264's lookahead (macroblock-tree rate control) made the bytes, and so the
# decoded pixels, of these videos differ from run to run, and with them every number the demo reports.
X264_OPTIONS = {"crf": "18", "preset": "veryfast", "threads": "1", "x264-params": "rc-lookahead=0:mbtree=0"}
AUDIO_RATE = 16000


def tone_hz(label: int) -> float:
    """The pitch of class `label`'s sound: half an octave per class from 250 Hz (distinct 64-bin mel bins)."""
    return 250.0 * 2.0 ** (label / 2)


def has_sound(index: int) -> bool:
    """Whether video `index` of a split has an audio track (all but every fourth)."""
    return index % 4 != 3


def tone(label: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Mono float32 samples: class `label`'s tone with a random phase and level, plus a little noise."""
    t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
    wave = rng.uniform(0.2, 0.5) * np.sin(2 * np.pi * tone_hz(label) * t + rng.uniform(0, 2 * np.pi))
    return (wave + rng.normal(0, 0.01, t.shape)).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Grey level plus a few static low-saturation rectangles and ellipses."""
    grey = int(rng.integers(40, 110))
    image = Image.new("RGB", (size, size), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 8))):
        level = int(rng.integers(30, 150))
        fill = tuple(int(v) for v in level + rng.integers(-12, 13, 3))
        x, y = rng.uniform(-0.2, 1.0, 2) * size
        width, height = rng.uniform(0.1, 0.4, 2) * size
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x, y, x + width, y + height), fill=fill)
    return image


def render_clip(label: int, rng: np.random.Generator, *, num_frames: int = 16, size: int = 64,
                noise_std: float = 6.0) -> tuple[np.ndarray, str, str]:
    """One clip of class `label`: uint8 (T, size, size, 3), its colour name and shape name.

    The random draws do not depend on the label: one rng state renders the same scene with each
    of the 8 motions.
    """
    color = list(COLORS)[rng.integers(len(COLORS))]
    shape = list(SHAPES)[rng.integers(len(SHAPES))]
    turns, radii = SHAPES[shape]
    canvas = size * _SUPERSAMPLE
    background = _background(rng, canvas)
    centre = rng.uniform(0, canvas, 2)
    radius = rng.uniform(0.1, 0.2) * canvas
    angle = rng.uniform(0, 2 * math.pi)
    speed = rng.uniform(1.6, 3.2) / 64 * canvas  # pixels per frame
    spin = math.radians(rng.uniform(6, 12))  # radians per frame
    growth = rng.uniform(0.03, 0.06)  # log-radius per frame
    direction = {0: (-1, 0), 1: (1, 0), 2: (0, -1), 3: (0, 1)}.get(label, (0, 0))
    frames = []
    for t in np.arange(num_frames) - (num_frames - 1) / 2:
        position = (centre + speed * t * np.array(direction)) % canvas
        rotation = angle + spin * t * {4: 1, 5: -1}.get(label, 0)
        scale = radius * math.exp(growth * t * {6: 1, 7: -1}.get(label, 0))
        theta = rotation + 2 * math.pi * turns
        vertices = position + scale * radii[:, None] * np.stack([np.cos(theta), np.sin(theta)], 1)
        image = background.copy()
        draw = ImageDraw.Draw(image)
        for offset in _WRAP_OFFSETS * canvas:  # wrapped copies keep a shape crossing an edge whole
            draw.polygon((vertices + offset).ravel().tolist(), fill=COLORS[color])
        frames.append(np.asarray(image.reduce(_SUPERSAMPLE)))
    noise = rng.normal(0, noise_std, (num_frames, size, size, 3))
    return np.clip(np.stack(frames) + noise, 0, 255).astype(np.uint8), color, shape


def _subject(color: str, shape: str) -> str:
    return f"{'an' if color[0] in 'aeiou' else 'a'} {color} {shape}"


def captions(label: int, color: str, shape: str) -> list[str]:
    """The templated captions of a clip, e.g. 'a red square moves to the left'."""
    return [f"{_subject(color, shape)} {phrase}" for phrase in CAPTION_PHRASES[label]]


def zero_shot_prompts() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(class names, templates) for zero-shot classification: the first caption phrase of each class, and one
    template per colour and shape ('a red square {}'), so that the prompt ensemble averages appearance out."""
    names = tuple(phrases[0] for phrases in CAPTION_PHRASES)
    return names, tuple(f"{_subject(color, shape)} {{}}" for color in COLORS for shape in SHAPES)


def _write_split(root: str, split: str, count: int, num_frames: int, size: int, seed: int, audio: bool):
    """Writes one split's videos, its csv and JSON lists and its chat questions."""
    os.makedirs(os.path.join(root, "videos", split), exist_ok=True)
    rows, entries, truths = [], [], []
    for i in range(count):
        label = i % len(CLASSES)
        rng = np.random.default_rng([seed, ("train", "val").index(split), i])
        frames, color, shape = render_clip(label, rng, num_frames=num_frames, size=size)
        path = f"videos/{split}/{i:05d}.mp4"
        sound = tone(label, num_frames / FPS, rng) if audio and has_sound(i) else None
        write_video(os.path.join(root, path), frames, fps=FPS, options=X264_OPTIONS, audio=sound, audio_rate=AUDIO_RATE)
        rows.append(f"{path} {label}\n")
        entries.append({"video": path, "caption": captions(label, color, shape), "label": label})
        truths.append((path, {"colour": color, "shape": shape, "direction": CLASSES[label]}))
    with open(os.path.join(root, f"{split}.csv"), "w") as f:
        f.writelines(rows)
    with open(os.path.join(root, f"{split}.json"), "w") as f:
        json.dump(entries, f, indent=0)
    synthetic_chat.write_split(root, split, truths, synthetic_chat.values(CLASSES, COLORS, SHAPES), seed)


def write_dataset(root: str, *, num_train: int, num_val: int, num_frames: int = 16,
                  size: int = 64, seed: int = 0, audio: bool = False) -> dict[str, str]:
    """Writes the dataset under root unless an identical one is there; returns its paths
    (root, train_csv, val_csv, train_json, val_json, chat_train, chat_val, classes, tokenizer, llm_tokenizer)."""
    paths = {"root": root, "classes": os.path.join(root, "classes.txt"),
             "tokenizer": os.path.join(root, "tokenizer"), "llm_tokenizer": os.path.join(root, "llm_tokenizer")}
    for split in ("train", "val"):
        paths[f"{split}_csv"] = os.path.join(root, f"{split}.csv")
        paths[f"{split}_json"] = os.path.join(root, f"{split}.json")
        paths[f"chat_{split}"] = os.path.join(root, f"chat_{split}.json")
    settings = dict(num_train=num_train, num_val=num_val, num_frames=num_frames, size=size,
                    seed=seed, version=_VERSION, audio=audio)
    manifest = os.path.join(root, "synthetic.json")
    if os.path.exists(manifest):
        with open(manifest) as f:
            if json.load(f) == settings:
                return paths
        os.remove(manifest)
    for split, count in (("train", num_train), ("val", num_val)):
        _write_split(root, split, count, num_frames, size, seed, audio)
    with open(paths["classes"], "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    every_caption = [caption for label, color, shape in itertools.product(range(len(CLASSES)), COLORS, SHAPES)
                     for caption in captions(label, color, shape)]
    train_word_tokenizer(every_caption, paths["tokenizer"])
    corpus = synthetic_chat.tokenizer_corpus(every_caption, paths["chat_train"],
                                             synthetic_chat.values(CLASSES, COLORS, SHAPES))
    synthetic_chat.write_tokenizer(paths["llm_tokenizer"], corpus, synthetic_chat.LLM_VOCAB_SIZE)
    with open(manifest, "w") as f:  # written last: its presence means the dataset is complete
        json.dump(settings, f)
    return paths

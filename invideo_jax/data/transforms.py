"""Numpy/PIL clip transforms: crops, RandAugment, random erasing, mixup/cutmix, normalisation.

Clips are (T, H, W, 3) arrays; every random choice comes from the numpy Generator passed in and is
made once per clip, so all frames of a clip get the same crop, flip and augmentation. Crop boxes are
(left, top, right, bottom) in source pixels, resampled in one step by `resize_box`.
"""
import dataclasses
import math
import re
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

NORMALIZATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "uniformer": ((0.45, 0.45, 0.45), (0.225, 0.225, 0.225)),
}
MULTISCALE_SCALES = (1.0, 0.875, 0.75, 0.66)
# GroupMultiScaleCrop's 13 fixed positions, in quarters of the free room (x, y).
_MULTISCALE_OFFSETS = ((0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0),
                       (1, 1), (3, 1), (1, 3), (3, 3))
_FILL = (124, 116, 104)  # ImageNet mean, the fill of RandAugment's geometric ops

Box = tuple[float, float, float, float]


def spaced_offset(room: int, index: int, count: int) -> int:
    """The index-th of `count` evenly spaced offsets in [0, room]; the centre when count is 1."""
    return room // 2 if count == 1 else index * room // (count - 1)


def resize_box(video: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Resamples the `box` region of every frame to size x size (bilinear, antialiased)."""
    if tuple(box) == (0, 0, size, size) and video.shape[1:3] == (size, size):
        return video  # what the resampling gives, without it
    return np.stack([np.asarray(Image.fromarray(frame).resize(
        (size, size), Image.Resampling.BILINEAR, box=box)) for frame in video])


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> Box:
    """Inception-style crop: random area fraction in `scale`, log-uniform aspect in `ratio`."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
            return left, top, left + w, top + h
    w, h = width, height
    if width / height < ratio[0]:
        h = round(width / ratio[0])
    elif width / height > ratio[1]:
        w = round(height * ratio[1])
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def multiscale_crop_box(height: int, width: int, rng: np.random.Generator, size: int,
                        scales=MULTISCALE_SCALES) -> Box:
    """VideoMAE GroupMultiScaleCrop: side lengths from `scales` of the short side (aspect distortion
    of at most one step), placed at one of 13 fixed positions."""
    sides = [int(min(height, width) * s) for s in scales]
    sides = [size if abs(side - size) < 3 else side for side in sides]
    pairs = [(w, h) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= 1]
    w, h = pairs[rng.integers(len(pairs))]
    x, y = _MULTISCALE_OFFSETS[rng.integers(len(_MULTISCALE_OFFSETS))]
    left, top = x * ((width - w) // 4), y * ((height - h) // 4)
    return left, top, left + w, top + h


def short_side_crop_box(height: int, width: int, short_side: int, size: int, *,
                        rng: np.random.Generator | None = None, index: int = 0,
                        count: int = 1) -> Box:
    """The size x size crop of the frame resized to `short_side`: at a random place (rng), else the
    index-th of `count` crops spaced along the long side (centred across it)."""
    scale = short_side / min(height, width)
    room_y, room_x = round(height * scale) - size, round(width * scale) - size
    if rng is not None:
        top, left = int(rng.integers(room_y + 1)), int(rng.integers(room_x + 1))
    elif room_y > room_x:
        top, left = spaced_offset(room_y, index, count), room_x // 2
    else:
        top, left = room_y // 2, spaced_offset(room_x, index, count)
    return left / scale, top / scale, (left + size) / scale, (top + size) / scale


def normalize(video: np.ndarray, name: str) -> np.ndarray:
    """uint8 -> float32 (x / 255 - mean) / std with the named mean/std."""
    mean, std = (np.asarray(v, np.float32) for v in NORMALIZATION[name])
    normalized = video.astype(np.float32)
    normalized *= 1 / (255 * std)
    normalized -= mean / std
    return normalized


def random_erase(video: np.ndarray, rng: np.random.Generator, probability: float,
                 area=(0.02, 1 / 3), min_aspect: float = 0.3) -> np.ndarray:
    """Random erasing (pixel mode): one box, the same on every frame, filled with N(0, 1) noise."""
    if probability <= 0 or rng.random() >= probability:
        return video
    _, height, width, channels = video.shape
    log_aspect = (math.log(min_aspect), -math.log(min_aspect))
    for _ in range(10):
        target = rng.uniform(*area) * height * width
        aspect = math.exp(rng.uniform(*log_aspect))
        h, w = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if h < height and w < width:
            top, left = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
            video = video.copy()
            video[:, top:top + h, left:left + w] = rng.standard_normal(
                (len(video), h, w, channels), dtype=np.float32)
            return video
    return video


def smooth_one_hot(labels: np.ndarray, num_classes: int, smoothing: float) -> np.ndarray:
    """One-hot float32 targets with label smoothing (off = smoothing / num_classes)."""
    off = smoothing / num_classes
    targets = np.full((len(labels), num_classes), off, np.float32)
    targets[np.arange(len(labels)), labels] = 1 - smoothing + off
    return targets


def mix_batch(video: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *,
              num_classes: int, mixup: float, cutmix: float, smoothing: float,
              switch_prob: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """timm Mixup in batch mode: mixes each clip with the batch reversed, by mixup (Beta(mixup)) or,
    with probability switch_prob when both are on, cutmix (Beta(cutmix), the same box on every
    frame); returns the mixed (B, T, H, W, C) batch and soft (B, num_classes) targets."""
    targets = smooth_one_hot(labels, num_classes, smoothing)
    if mixup <= 0 and cutmix <= 0:
        return video, targets
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < switch_prob)
    alpha = cutmix if use_cutmix else mixup
    lam = float(rng.beta(alpha, alpha))
    if use_cutmix:
        height, width = video.shape[2:4]
        cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        top, bottom = np.clip((cy - cut_h // 2, cy + cut_h // 2), 0, height)
        left, right = np.clip((cx - cut_w // 2, cx + cut_w // 2), 0, width)
        video = video.copy()
        video[:, :, top:bottom, left:right] = video[::-1, :, top:bottom, left:right]
        lam = 1 - float((bottom - top) * (right - left)) / (height * width)
    else:
        video = lam * video + (1 - lam) * video[::-1]
    return video, lam * targets + (1 - lam) * targets[::-1]


@dataclasses.dataclass(frozen=True)
class RandAugmentSpec:
    """timm-style RandAugment settings: ops per clip, magnitude (0-10) and its per-op noise."""

    num_ops: int
    magnitude: float
    magnitude_std: float = 0.0


def parse_rand_augment(spec: str) -> RandAugmentSpec:
    """Parses 'rand-m7-n4[-mstd0.5][-inc1]' (timm names; only the increasing op set exists)."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"RandAugment spec must start with 'rand-': {spec!r}")
    values = {"n": 2.0, "m": None, "mstd": 0.0, "inc": 1.0}
    for part in parts[1:]:
        match = re.fullmatch(r"([a-z]+)([0-9.]+)", part)
        if not match or match.group(1) not in values:
            raise ValueError(f"Unknown RandAugment setting {part!r} in {spec!r}")
        values[match.group(1)] = float(match.group(2))
    if values["m"] is None or values["inc"] != 1:
        raise ValueError(f"RandAugment spec {spec!r} needs a magnitude 'mN' and allows only inc1")
    return RandAugmentSpec(int(values["n"]), values["m"], values["mstd"])


def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() < 0.5 else value


def _affine(coefficients):
    return lambda img: img.transform(img.size, Image.Transform.AFFINE, coefficients,
                                     Image.Resampling.BILINEAR, fillcolor=_FILL)


def _unchanged_by_level(frame_op):
    return lambda level, rng: frame_op


def _rotate(level, rng):
    angle = _signed(30 * level, rng)
    return lambda img: img.rotate(angle, Image.Resampling.BILINEAR, fillcolor=_FILL)


def _posterize(level, rng):
    bits = 4 - int(4 * level)
    return lambda img: ImageOps.posterize(img, bits)


def _solarize(level, rng):
    threshold = 256 - int(256 * level)
    return lambda img: ImageOps.solarize(img, threshold)


def _solarize_add(level, rng):
    lut = [min(255, v + int(110 * level)) if v < 128 else v for v in range(256)] * 3
    return lambda img: img.point(lut)


def _enhance(enhancer):
    def op(level, rng):
        factor = 1 + _signed(0.9 * level, rng)
        return lambda img: enhancer(img).enhance(factor)
    return op


def _shear(axis):
    def op(level, rng):
        shear = _signed(0.3 * level, rng)
        return _affine((1, shear, 0, 0, 1, 0) if axis == 0 else (1, 0, 0, shear, 1, 0))
    return op


def _translate(axis):
    def op(level, rng):
        fraction = _signed(0.45 * level, rng)

        def shift(img):
            offset = fraction * img.size[axis]
            return _affine((1, 0, offset, 0, 1, 0) if axis == 0 else (1, 0, 0, 0, 1, offset))(img)
        return shift
    return op


# timm's increasing op set. name -> factory(level in [0, 1], rng) -> per-frame PIL op; the factory
# draws the op's random parameters once per clip.
_RAND_AUGMENT_OPS: dict[str, Callable] = {
    "AutoContrast": _unchanged_by_level(ImageOps.autocontrast),
    "Equalize": _unchanged_by_level(ImageOps.equalize),
    "Invert": _unchanged_by_level(ImageOps.invert),
    "Rotate": _rotate,
    "PosterizeIncreasing": _posterize,
    "SolarizeIncreasing": _solarize,
    "SolarizeAdd": _solarize_add,
    "ColorIncreasing": _enhance(ImageEnhance.Color),
    "ContrastIncreasing": _enhance(ImageEnhance.Contrast),
    "BrightnessIncreasing": _enhance(ImageEnhance.Brightness),
    "SharpnessIncreasing": _enhance(ImageEnhance.Sharpness),
    "ShearX": _shear(0),
    "ShearY": _shear(1),
    "TranslateXRel": _translate(0),
    "TranslateYRel": _translate(1),
}


def rand_augment(video: np.ndarray, rng: np.random.Generator, spec: RandAugmentSpec) -> np.ndarray:
    """RandAugment with the same ops and magnitudes on every frame: `num_ops` ops drawn with
    replacement, each applied with probability 0.5 at a magnitude ~ N(m, mstd) clipped to
    [0, 10]."""
    names = list(_RAND_AUGMENT_OPS)
    frame_ops = []
    for name in rng.choice(names, spec.num_ops):
        if rng.random() < 0.5:
            magnitude = spec.magnitude + spec.magnitude_std * rng.standard_normal()
            level = float(np.clip(magnitude, 0, 10)) / 10
            frame_ops.append(_RAND_AUGMENT_OPS[name](level, rng))
    if not frame_ops:
        return video
    frames = []
    for frame in video:
        image = Image.fromarray(frame)
        for op in frame_ops:
            image = op(image)
        frames.append(np.asarray(image))
    return np.stack(frames)

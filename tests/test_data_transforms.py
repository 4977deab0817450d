"""Clip transforms: crop geometry, per-clip consistency, mixing targets, normalisation."""
import math

import numpy as np
import pytest
from PIL import Image

from invideo_jax.data import transforms


def _gradient_clip(frames=3, height=60, width=90):
    """Frames whose red channel is x, green is y and blue is the frame number (times 40)."""
    y, x = np.mgrid[:height, :width]
    frame = np.stack([x * 255 // width, y * 255 // height, np.zeros_like(x)], -1)
    clip = np.repeat(frame[None], frames, 0)
    clip[..., 2] = (np.arange(frames) * 40)[:, None, None]
    return clip.astype(np.uint8)


def test_spaced_offset():
    assert [transforms.spaced_offset(10, k, 3) for k in range(3)] == [0, 5, 10]
    assert transforms.spaced_offset(11, 0, 1) == 5


def test_random_resized_crop_box_respects_ranges():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = transforms.random_resized_crop_box(
            120, 200, rng, scale=(0.2, 0.6), ratio=(0.75, 4 / 3))
        assert 0 <= left < right <= 200 and 0 <= top < bottom <= 120
        w, h = right - left, bottom - top
        assert 0.19 <= w * h / (120 * 200) <= 0.61
        assert 0.7 <= w / h <= 1.4


def test_multiscale_crop_box_sides_and_positions():
    rng = np.random.default_rng(0)
    sides = {int(100 * s) for s in transforms.MULTISCALE_SCALES}
    positions = set()
    for _ in range(300):
        left, top, right, bottom = transforms.multiscale_crop_box(100, 160, rng, 98)
        w, h = right - left, bottom - top
        assert {w, h} <= sides | {98} and right <= 160 and bottom <= 100
        positions.add((left * 4 // max(160 - w, 1), top * 4 // max(100 - h, 1)))
    assert len(positions) >= 9


def test_short_side_crops_along_long_side():
    boxes = [transforms.short_side_crop_box(60, 90, 40, 40, index=k, count=3) for k in range(3)]
    np.testing.assert_allclose(boxes, [(0, 0, 60, 60), (15, 0, 75, 60), (30, 0, 90, 60)])
    top = transforms.short_side_crop_box(90, 60, 40, 40, index=2, count=3)[1]
    assert top == 30
    np.testing.assert_allclose(transforms.short_side_crop_box(60, 90, 40, 40), (15, 0, 75, 60))


def test_resize_box_resamples_the_region():
    clip = _gradient_clip()
    square = clip[:, :, 15:75]
    whole = transforms.resize_box(square, (0, 0, 60, 60), 60)  # the whole frame at its size: returned as is
    np.testing.assert_array_equal(whole, [np.asarray(Image.fromarray(f).resize((60, 60), Image.Resampling.BILINEAR,
                                                                              box=(0, 0, 60, 60))) for f in square])
    crop = transforms.resize_box(clip, (30, 0, 90, 60), 30)
    assert crop.shape == (3, 30, 30, 3)
    red = crop[0, :, :, 0].mean(0)
    assert abs(red[0] - 30 * 255 / 90) < 6 and abs(red[-1] - 89 * 255 / 90) < 6
    np.testing.assert_array_equal(crop[:, 0, 0, 2], [0, 40, 80])


def test_rand_augment_same_ops_on_every_frame():
    spec = transforms.parse_rand_augment("rand-m9-n4-mstd0.5-inc1")
    assert spec == transforms.RandAugmentSpec(4, 9.0, 0.5)
    frame = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    clip = np.repeat(frame, 4, 0)
    changed = 0
    for seed in range(20):
        out = transforms.rand_augment(clip, np.random.default_rng(seed), spec)
        assert out.shape == clip.shape and out.dtype == np.uint8
        assert all(np.array_equal(out[0], f) for f in out[1:])
        again = transforms.rand_augment(clip, np.random.default_rng(seed), spec)
        np.testing.assert_array_equal(out, again)
        changed += not np.array_equal(out, clip)
    assert changed >= 15


@pytest.mark.parametrize("spec", ["m7-n4", "rand-n2", "rand-m7-x3", "rand-m7-inc0"])
def test_rand_augment_bad_specs(spec):
    with pytest.raises(ValueError):
        transforms.parse_rand_augment(spec)


def test_random_erase_same_box_on_every_frame():
    clip = np.zeros((4, 40, 40, 3), np.float32)
    out = transforms.random_erase(clip, np.random.default_rng(0), 1.0)
    erased = out != 0
    assert erased.any() and all(np.array_equal(erased[0], e) for e in erased[1:])
    assert not np.array_equal(out[0], out[1])
    assert transforms.random_erase(clip, np.random.default_rng(0), 0.0) is clip


def test_targets_without_mixing_are_smoothed_one_hot():
    video = np.zeros((3, 2, 8, 8, 3), np.float32)
    _, targets = transforms.mix_batch(video, np.array([0, 2, 1]), np.random.default_rng(0),
                                      num_classes=4, mixup=0, cutmix=0, smoothing=0.2)
    np.testing.assert_allclose(targets[1], [0.05, 0.05, 0.85, 0.05])


def test_mixup_mixes_video_and_targets_alike():
    video = np.stack([np.full((2, 8, 8, 3), v, np.float32) for v in (0.0, 1.0)])
    mixed, targets = transforms.mix_batch(video, np.array([0, 1]), np.random.default_rng(0),
                                          num_classes=2, mixup=0.8, cutmix=0, smoothing=0)
    assert targets.dtype == np.float32 and mixed.dtype == np.float32
    np.testing.assert_allclose(mixed[0].mean(), targets[0, 1], rtol=1e-5)
    np.testing.assert_allclose(targets.sum(1), 1, rtol=1e-6)


def test_cutmix_target_weight_is_the_pasted_area():
    video = np.stack([np.full((2, 16, 16, 3), v, np.float32) for v in (0.0, 1.0)])
    for seed in range(5):
        mixed, targets = transforms.mix_batch(
            video, np.array([0, 1]), np.random.default_rng(seed), num_classes=2, mixup=0,
            cutmix=1.0, smoothing=0)
        pasted = mixed[0, 0, :, :, 0]
        assert math.isclose(pasted.mean(), targets[0, 1], rel_tol=1e-6, abs_tol=1e-6)
        assert np.array_equal(mixed[0, 0], mixed[0, 1])


def test_normalize_by_name():
    clip = np.full((1, 1, 1, 3), 255, np.uint8)
    expected = (1 - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array(
        [0.26862954, 0.26130258, 0.27577711])
    np.testing.assert_allclose(transforms.normalize(clip, "clip")[0, 0, 0], expected, rtol=1e-5)
    np.testing.assert_allclose(transforms.normalize(clip * 0, "uniformer"), -2, rtol=1e-6)
    assert transforms.normalize(clip, "imagenet").dtype == np.float32

"""The VideoMAE pre-training target from a pipeline-normalised video equals the official target computed from the raw
pixels (float64 numpy, MCG-NJU/VideoMAE engine_for_pretraining.py: pixels in [0, 1], tubelets (t, y, x) x channel,
each tubelet and channel standardised by its mean and unbiased std + 1e-6), whatever `config.data.normalize` is.

Tolerance: 1e-5 (float32 against float64).
"""
import numpy as np
import pytest

from configs import common
from invideo_jax import losses
from invideo_jax.data import transforms
from invideo_jax.train.tasks.videomae_pretrain import Task

FRAMES, IMAGE, PATCH, TUBELET = 4, 16, 8, 2
TOL = 1e-5


def official_target(pixels, normalize: bool) -> np.ndarray:
    """uint8 (B, T, H, W, C) -> (B, N, TUBELET*PATCH*PATCH*C): rearrange 'b c (t p0) (h p1) (w p2) -> b (t h w)
    (p0 p1 p2) c', then per tubelet and channel (x - mean) / (unbiased std + 1e-6), flattened '(p0 p1 p2) c'."""
    x = pixels.astype(np.float64) / 255
    b, t, h, w, c = x.shape
    x = x.reshape(b, t // TUBELET, TUBELET, h // PATCH, PATCH, w // PATCH, PATCH, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, TUBELET * PATCH * PATCH, c)
    if normalize:
        x = (x - x.mean(axis=2, keepdims=True)) / (x.std(axis=2, ddof=1, keepdims=True) + 1e-6)
    return x.reshape(b, x.shape[1], -1)


def task(normalization: str, normalize_target: bool) -> Task:
    encoder = common.vit_encoder("Ti/8", depth=1, num_frames=FRAMES, image_size=IMAGE)
    config = common.train_config("videomae_pretrain", dict(encoder=encoder, decoder_width=16, decoder_depth=1,
                                                           decoder_heads=2, decoder_mlp_dim=32))
    config.mask = common.mask_config()
    config.mask.normalize_target = normalize_target
    config.data.normalize = normalization
    return Task(config)


@pytest.mark.parametrize("normalize_target", [True, False])
@pytest.mark.parametrize("normalization", sorted(transforms.NORMALIZATION))
def test_target_uses_the_data_normalisation(normalization, normalize_target):
    pixels = np.random.default_rng(0).integers(0, 256, (2, FRAMES, IMAGE, IMAGE, 3), dtype=np.uint8)
    video = np.stack([transforms.normalize(clip, normalization) for clip in pixels])  # as the data pipeline does
    got = np.asarray(task(normalization, normalize_target).targets(video), np.float64)
    err = np.abs(got - official_target(pixels, normalize_target)).max()
    print(f"{normalization} normalize_target={normalize_target}: max abs error {err:.2e}")
    assert err <= TOL


def test_unknown_normalisation_is_named():
    with pytest.raises(ValueError, match="normalization='imagnet': expected one of"):
        losses.pixel_targets(np.zeros((1, 2, 8, 8, 3), np.float32), tubelet=2, patch=8, normalization="imagnet")

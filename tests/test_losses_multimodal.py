"""Contrastive (InfoNCE) and caption / masked-LM losses against torch, and the contrastive loss on a sharded batch."""
import math

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax.sharding import PartitionSpec as P

from invideo_jax import losses, sharding


def torch_contrastive(video, text, logit_scale):
    v = F.normalize(torch.from_numpy(video).double(), dim=-1)
    t = F.normalize(torch.from_numpy(text).double(), dim=-1)
    logits = math.exp(min(max(logit_scale, 0.0), math.log(100.0))) * v @ t.T  # the official clamp_(0, ln 100)
    labels = torch.arange(len(video))
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    return (loss.item(), (logits.argmax(1) == labels).double().mean().item(),
            (logits.argmax(0) == labels).double().mean().item())


def features(batch, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    video = rng.standard_normal((batch, dim)).astype(np.float32)
    text = (0.6 * video + rng.standard_normal((batch, dim))).astype(np.float32)  # partly aligned pairs
    return video, text


def test_l2_normalize_is_torch_normalize_on_device_and_host():
    """One l2_normalize: a jax array -> float32, a numpy array keeps its dtype (float64 evaluation); both match torch
    `F.normalize` (eps 1e-12 on the norm: a zero row stays zero)."""
    x = np.concatenate([np.random.default_rng(0).standard_normal((3, 8)), np.zeros((1, 8))])
    want = F.normalize(torch.from_numpy(x), dim=-1).numpy()
    device = losses.l2_normalize(jax.numpy.asarray(x, np.float32))
    host = losses.l2_normalize(x)
    assert device.dtype == np.float32 and isinstance(host, np.ndarray) and host.dtype == np.float64
    np.testing.assert_allclose(device, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(host, want, rtol=1e-15, atol=0)
    np.testing.assert_array_equal(host[:3], x[:3] / np.linalg.norm(x[:3], axis=-1, keepdims=True))  # as before


@pytest.mark.parametrize("logit_scale", [math.log(1 / 0.07), 7.0])  # 7.0 > ln(100): clipped
def test_contrastive_loss_matches_torch(logit_scale):
    video, text = features(12)
    loss, metrics = losses.contrastive_loss(video, text, np.float32(logit_scale))
    want, v2t, t2v = torch_contrastive(video, text, logit_scale)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert metrics["video_to_text_accuracy"] == pytest.approx(v2t)
    assert metrics["text_to_video_accuracy"] == pytest.approx(t2v)
    assert 0 < v2t < 1  # the accuracies are informative here


@pytest.mark.parametrize("axes", [{"data": 8}, {"fsdp": 8}, {"data": 2, "fsdp": 4}])
def test_contrastive_loss_on_a_sharded_batch_uses_the_global_batch(axes):
    video, text = features(16, seed=1)
    mesh = sharding.make_mesh(axes)
    batch = sharding.batch_sharding(mesh)
    step = jax.jit(losses.contrastive_loss, in_shardings=(batch, batch, sharding.replicated(mesh)))
    scale = np.float32(math.log(1 / 0.07))
    placed = [jax.device_put(x, batch) for x in (video, text)]
    assert placed[0].sharding.spec == P(sharding.BATCH_AXES)
    loss, metrics = step(*placed, scale)
    want, v2t, t2v = torch_contrastive(video, text, float(scale))
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(loss, losses.contrastive_loss(video, text, scale)[0], rtol=1e-6)
    assert float(metrics["video_to_text_accuracy"]) == pytest.approx(v2t)
    # A per-device loss (2 pairs each, 8 shards) would be another, smaller number.
    local = np.mean([torch_contrastive(video[i:i + 2], text[i:i + 2], float(scale))[0] for i in range(0, 16, 2)])
    assert abs(local - want) > 0.1


def test_caption_loss_matches_torch_ignore_index():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((3, 6, 11)).astype(np.float32) * 2
    targets = rng.integers(0, 11, (3, 6))
    mask = rng.random((3, 6)) < 0.6
    targets[~mask] = -100  # out of range where ignored, as the official labels
    loss, accuracy = losses.caption_loss(logits, targets, mask)
    want = F.cross_entropy(torch.from_numpy(logits).reshape(-1, 11), torch.from_numpy(targets).reshape(-1),
                           ignore_index=-100)
    np.testing.assert_allclose(loss, want.item(), rtol=1e-5)
    hits = (logits.argmax(-1) == targets)[mask]
    assert accuracy == pytest.approx(hits.mean())
    assert losses.caption_loss(logits, targets, np.zeros_like(mask))[0] == 0.0
    assert np.isfinite(jax.grad(lambda x: losses.caption_loss(x, targets, mask)[0])(logits)).all()

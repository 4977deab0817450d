"""Losses, computed in float32."""
import jax
import jax.numpy as jnp
import optax

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pixel_targets(video, *, tubelet: int, patch: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, normalize=True):
    """VideoMAE targets (B, N, tubelet*p*p*C) in (t, y, x, c) order from a normalised (B,T,H,W,C) video.

    De-normalise to [0, 1]; with `normalize`, each tubelet and channel is standardised by its own mean and
    unbiased std (+1e-6), as the original.
    """
    video = jax.lax.stop_gradient(video.astype(jnp.float32))
    video = video * jnp.asarray(std) + jnp.asarray(mean)
    b, t, h, w, c = video.shape
    x = video.reshape(b, t // tubelet, tubelet, h // patch, patch, w // patch, patch, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, tubelet * patch * patch, c)
    if normalize:
        x = (x - x.mean(axis=2, keepdims=True)) / (jnp.sqrt(x.var(axis=2, ddof=1, keepdims=True)) + 1e-6)
    return x.reshape(b, x.shape[1], -1)


def reconstruction_loss(pred, targets, target_idx, weights=None):
    """MSE between predictions at `target_idx` and the targets there.

    Without weights: the mean over all elements (V1). With per-token weights (V2: 1 where the target token was
    also encoder-masked): per-token mean over channels, then the weighted mean over tokens.
    """
    target = jnp.take_along_axis(targets, target_idx[..., None], axis=1)
    err = jnp.square(pred.astype(jnp.float32) - target)
    if weights is None:
        return err.mean()
    weights = weights.astype(jnp.float32)
    return (err.mean(axis=-1) * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def softmax_cross_entropy(logits, targets):
    """Cross-entropy against soft targets (one-hot, label-smoothed or mixed), mean over the batch."""
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()

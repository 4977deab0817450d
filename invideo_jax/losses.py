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


def contrastive_loss(video_features, text_features, logit_scale):
    """Symmetric InfoNCE over the whole batch (CLIP / InternVideo-MM): returns (loss, metrics).

    Features are L2-normalised; logits = exp(logit_scale) * v @ t.T, with logit_scale clipped to [0, ln 100] as the
    official clamps it before every step; the loss averages the video->text and text->video cross-entropies with
    matching pairs on the diagonal. Under jit with batch-sharded inputs GSPMD forms the full global matrix, which is
    what the official's all-gather gives. Metrics: in-batch top-1 retrieval accuracies both ways.
    """
    def normalize(x):
        x = x.astype(jnp.float32)
        return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))

    scale = jnp.exp(jnp.clip(logit_scale.astype(jnp.float32), 0.0, jnp.log(100.0)))
    logits = scale * normalize(video_features) @ normalize(text_features).T
    labels = jnp.arange(logits.shape[0])
    video_to_text = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    text_to_video = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    metrics = {"video_to_text_accuracy": jnp.mean(jnp.argmax(logits, axis=1) == labels),
               "text_to_video_accuracy": jnp.mean(jnp.argmax(logits, axis=0) == labels)}
    return (video_to_text + text_to_video) / 2, metrics


def caption_loss(logits, targets, mask):
    """Mean token cross-entropy over positions where mask is set: returns (loss, token accuracy), float32.

    logits (..., V), integer targets and mask (...). Captioning: logits[:, k] predict ids[:, k + 1], so pass
    targets = ids[:, 1:] and mask = ~special_tokens[:, 1:] (as torch cross_entropy with ignore_index). The masked-LM
    loss is this same function with mask = the MLM-masked positions. With no position selected both are 0.
    """
    mask = mask.astype(jnp.float32)
    targets = jnp.where(mask > 0, targets, 0)  # ignored targets may be out of range (e.g. -100)
    logits = logits.astype(jnp.float32)
    count = jnp.maximum(mask.sum(), 1.0)
    loss = (optax.softmax_cross_entropy_with_integer_labels(logits, targets) * mask).sum() / count
    accuracy = ((jnp.argmax(logits, axis=-1) == targets) * mask).sum() / count
    return loss, accuracy

"""Losses, computed in float32."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from invideo_jax.data.transforms import NORMALIZATION


def pixel_targets(video, *, tubelet: int, patch: int, normalization: str, normalize=True):
    """VideoMAE targets (B, N, tubelet*p*p*C) in (t, y, x, c) order from a (B,T,H,W,C) video that the data pipeline
    normalised with the mean/std named `normalization` (`config.data.normalize`).

    De-normalise to [0, 1] with that mean/std; with `normalize`, each tubelet and channel is standardised by its own
    mean and unbiased std (+1e-6), as the original.
    """
    if normalization not in NORMALIZATION:
        raise ValueError(f"normalization={normalization!r}: expected one of {sorted(NORMALIZATION)}")
    mean, std = NORMALIZATION[normalization]
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


def symmetric_info_nce(logits, valid=None):
    """(loss, metrics) of video-text logits (B, B) with matching pairs on the diagonal: the mean of the video->text
    and text->video cross-entropies; metrics: in-batch top-1 retrieval accuracies both ways.

    valid (B,) bool: only those pairs take part (rows averaged, the others' columns never candidates); None: all.
    """
    labels = jnp.arange(logits.shape[0])
    weights = jnp.ones(logits.shape[0], jnp.float32) if valid is None else valid.astype(jnp.float32)
    if valid is not None:
        pair = (weights[:, None] * weights[None, :]) > 0
        logits = jnp.where(pair, logits, jnp.where(jnp.eye(len(labels), dtype=bool), 0.0, -1e9))

    def mean(x):
        return jnp.sum(x * weights) / jnp.maximum(jnp.sum(weights), 1.0)

    video_to_text = mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    text_to_video = mean(optax.softmax_cross_entropy_with_integer_labels(logits.T, labels))
    metrics = {"video_to_text_accuracy": mean(jnp.argmax(logits, axis=1) == labels),
               "text_to_video_accuracy": mean(jnp.argmax(logits, axis=0) == labels)}
    return (video_to_text + text_to_video) / 2, metrics


def contrastive_loss(video_features, text_features, logit_scale):
    """Symmetric InfoNCE over the whole batch (CLIP / InternVideo-MM): returns (loss, metrics).

    Features are L2-normalised; logits = exp(logit_scale) * v @ t.T, with logit_scale clipped to [0, ln 100] as the
    official clamps it before every step; the loss averages the video->text and text->video cross-entropies with
    matching pairs on the diagonal. Under jit with batch-sharded inputs GSPMD forms the full global matrix, which is
    what the official's all-gather gives. Metrics: in-batch top-1 retrieval accuracies both ways.
    """
    scale = jnp.exp(jnp.clip(logit_scale.astype(jnp.float32), 0.0, jnp.log(100.0)))
    logits = scale * l2_normalize(video_features) @ l2_normalize(text_features).T
    return symmetric_info_nce(logits)


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


# ----------------------------------------------------------------------------------------------------------
# InternVideo2 stage 2 (video-text alignment): CON with a learnable temperature, VTM hard negatives, MLM inputs
# ----------------------------------------------------------------------------------------------------------


def l2_normalize(x, eps: float = 1e-12):
    """x / max(|x|, sqrt(eps)) over the last axis (torch `F.normalize`): a jax array in float32, a numpy array on the
    host in its own dtype (evaluation averages unit features in float64)."""
    if isinstance(x, np.ndarray):
        return x / np.sqrt(np.maximum(np.sum(x * x, axis=-1, keepdims=True), eps))
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


@jax.custom_vjp
def _clamp(x, low, high):
    return jnp.clip(x, low, high)


def _clamp_fwd(x, low, high):
    return jnp.clip(x, low, high), (x, low, high)


def _clamp_bwd(res, g):
    x, low, high = res
    # A step (x - lr * g) that would move x back towards [low, high] gets the gradient; one that would push it
    # further outside gets none, so the stored value stays within one update of the range.
    inward = ((x >= low) & (x <= high)) | ((x < low) & (g < 0)) | ((x > high) & (g > 0))
    return jnp.where(inward, g, jnp.zeros_like(g)), None, None


_clamp.defvjp(_clamp_fwd, _clamp_bwd)


def clamp_temperature(temp, low: float = 0.001, high: float = 0.5):
    """The learnable temperature clamped to [low, high] in float32 (InternVideo2 stage 2 clamps `temp` to
    [0.001, 0.5] in place before every step).

    The value is jnp.clip's; the gradient passes wherever it would move the parameter into (or keep it inside) the
    range, and is zero where it would push an out-of-range parameter further out. A parameter can therefore leave
    the range by at most about one update and comes back as soon as the loss asks for it, as the official
    projection (clamp of the stored value) behaves; plain clipping would freeze it for good once outside.
    """
    temp = jnp.asarray(temp, jnp.float32)
    return _clamp(temp, jnp.float32(low), jnp.float32(high))


def temperature_contrastive_loss(video_features, text_features, temperature, valid=None):
    """Symmetric InfoNCE with similarities / temperature (InternVideo2 VTC): returns (loss, metrics).

    Features are L2-normalised; logits = v @ t.T / temperature over the whole (global) batch, matching pairs on the
    diagonal; the loss averages the video->text and text->video cross-entropies. Unlike `contrastive_loss` the scale
    is not capped at 100 (the stage-2 temperature may go down to 0.001: pass it clamped, `clamp_temperature`).
    Metrics: in-batch top-1 retrieval accuracies both ways. `valid`: as `symmetric_info_nce`.
    """
    logits = l2_normalize(video_features) @ l2_normalize(text_features).T / jnp.asarray(temperature, jnp.float32)
    return symmetric_info_nce(logits, valid)


def hard_negative_logits(similarity):
    """Log-weights (..., n, n) for sampling VTM hard negatives from row-query similarities (already / temperature):
    the similarities with the positive (diagonal) at -inf, so sampling follows the row's softmax with the positive
    removed, as the official softmax weights with the positive set to 0. A row holding NaN or +inf (whose softmax
    weights the official `nan_to_num` turns into equal ones) samples its negatives uniformly. Kept in the log domain,
    so a peaked row (low temperature) cannot underflow to all-zero weights."""
    s = similarity.astype(jnp.float32)
    bad_row = jnp.any(jnp.isnan(s) | (s == jnp.inf), axis=-1, keepdims=True)
    s = jnp.where(bad_row, 0.0, s)
    return jnp.where(jnp.eye(s.shape[-1], dtype=bool), -jnp.inf, s)


def sample_hard_negatives(rng, video_features, text_features, temperature, groups: int = 1, valid=None):
    """VTM hard negatives (InternVideo2 `vtm_hard_neg`): (text index for each video, video index for each text),
    int32 (B,) indices into the batch, never the example itself, drawn with probability proportional to the softmax
    of the in-batch similarities without the positive (`hard_negative_logits`); no gradient.

    The batch is split into `groups` contiguous groups of B / groups and negatives come from the example's own group:
    the official samples within each GPU's batch, which groups = the number of batch shards reproduces (and keeps
    the gather of the negatives' tokens local to a shard); groups = 1 samples from the whole batch. Needs at least
    2 examples per group. valid (B,) bool: only those examples are candidates (a row with no valid candidate in its
    group samples uniformly among the others); None: all.
    """
    batch = video_features.shape[0]
    if batch % groups or batch // groups < 2:
        raise ValueError(f"hard negatives: batch {batch} must split into {groups} groups of at least 2 examples")
    n = batch // groups
    v = l2_normalize(jax.lax.stop_gradient(video_features)).reshape(groups, n, -1)
    t = l2_normalize(jax.lax.stop_gradient(text_features)).reshape(groups, n, -1)
    sim = jnp.einsum("gie,gje->gij", v, t) / jax.lax.stop_gradient(jnp.asarray(temperature, jnp.float32))
    text_key, video_key = jax.random.split(rng)
    offset = (jnp.arange(groups) * n)[:, None]

    def draw(key, s):
        logits = hard_negative_logits(s)
        if valid is not None:
            candidates = (valid.reshape(groups, 1, n) > 0) & jnp.isfinite(logits)
            logits = jnp.where(jnp.any(candidates, axis=-1, keepdims=True), jnp.where(candidates, logits, -jnp.inf),
                               jnp.where(jnp.isfinite(logits), 0.0, -jnp.inf))
        return jax.random.categorical(key, logits, axis=-1) + offset

    texts = draw(text_key, sim)  # rows: videos -> one text each
    videos = draw(video_key, jnp.swapaxes(sim, 1, 2))  # rows: texts -> one video each
    return texts.reshape(batch).astype(jnp.int32), videos.reshape(batch).astype(jnp.int32)


def mlm_inputs(rng, ids, *, mask_prob: float, mask_id: int, vocab_size: int, special_ids=()):
    """BERT masked-LM corruption: (corrupted ids, selected (B, L) bool).

    Each token is selected with probability `mask_prob`, never one of `special_ids` (pass [PAD], [CLS], [SEP]);
    a selected token becomes `mask_id` with probability 0.8, else a uniformly random id in [0, vocab_size) with
    probability 0.5 (0.1 overall), else stays itself (0.1). The loss is the cross-entropy at the selected positions
    against the original ids (`caption_loss(logits, ids, selected)`).
    """
    select_key, replace_key, random_key, word_key = jax.random.split(rng, 4)
    special = jnp.isin(ids, jnp.asarray(tuple(special_ids), ids.dtype)) if len(special_ids) else False
    selected = jax.random.bernoulli(select_key, mask_prob, ids.shape) & ~special
    replace = jax.random.bernoulli(replace_key, 0.8, ids.shape) & selected
    randomize = jax.random.bernoulli(random_key, 0.5, ids.shape) & selected & ~replace
    words = jax.random.randint(word_key, ids.shape, 0, vocab_size, ids.dtype)
    corrupted = jnp.where(replace, jnp.asarray(mask_id, ids.dtype), jnp.where(randomize, words, ids))
    return corrupted, selected

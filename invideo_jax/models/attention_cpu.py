"""Query-blocked attention for long sequences on CPU: the attention kernel 'cpu_blocked', and 'cpu_auto', the CPU
default, which uses it from `MIN_QUERIES` queries on and XLA's attention below.

XLA:CPU computes `jax.nn.dot_product_attention` as separate passes over the whole [heads, T, S] float32 score matrix
(59 MB per ViT-S layer and clip at 1568 tokens), and autodiff keeps the probabilities of every layer for the
backward pass. This kernel loops over the clips of the batch and, within a clip, over equal blocks of at most
`BLOCK` queries: each block's scores against all keys ([heads, block, S], a few MB whatever the batch size) are
computed, soft-maxed and multiplied by the values while still in cache. The
forward pass keeps only the output and each row's log-sum-exp; the backward pass (`jax.custom_vjp`) recomputes each
block's probabilities from them and accumulates the key and value gradients over the blocks, using
rowsum(dP ∘ P) = rowsum(dO ∘ O) (the flash-attention backward, with full key rows instead of key blocks).

A boolean mask and `is_causal` join the caller's bias as an additive bias (`NEG_INF` where a score is masked out),
so masked rows behave as in `jax.nn.dot_product_attention`. Grouped key/value heads are used in place (no repeat).
"""
import functools

import jax
import jax.numpy as jnp

from invideo_jax.models import attention

BLOCK = 256  # most queries per block: [6 heads, 224, 1568] float32 scores (a 16x224 clip) are 8.4 MB
MIN_QUERIES = 256  # shorter sequences fit the cache whole (docs/benchmarks.md)
NEG_INF = float(jnp.finfo(jnp.float32).min)  # the bias of a masked-out score, as in jax.nn.dot_product_attention


def _blocks(x, axis: int, block: int):
    """x [B, ...] with `axis` (length a multiple of `block`) split into [B, num_blocks, ..., block, ...]."""
    x = x.reshape(x.shape[:axis] + (x.shape[axis] // block, block) + x.shape[axis + 1:])
    return jnp.moveaxis(x, axis, 1)


def _unblocks(x, axis: int):
    """Inverse of `_blocks`."""
    x = jnp.moveaxis(x, 1, axis)
    return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2:])


def _block_scores(q, k, bias, scale):
    """q [K, G, Q, H], k [K, S, H], bias [Kb, Gb, Q, S] or None -> float32 scores [K, G, Q, S]."""
    s = jnp.einsum("kgqh,ksh->kgqs", q, k, preferred_element_type=jnp.float32) * scale
    return s if bias is None else s + bias


def _per_clip(bias):
    """How a bias [Bb, ...] reaches the loop over clips: (the scanned part, the clip's bias from it)."""
    if bias is not None and bias.shape[0] == 1:  # shared by every clip: closed over, not copied per clip
        return None, lambda _: bias[0]
    return bias, lambda scanned: scanned


def _forward(q, k, v, bias, scale):
    """Blocked attention on q [B, nb, K, G, Q, H], k/v [B, K, S, H], bias [Bb, nb, Kb, Gb, Q, S] or None, one clip at
    a time (the block's scores stay [K, G, Q, S] whatever the batch). Returns (out like q, lse [B, nb, K, G, Q])."""
    scanned_bias, clip_bias = _per_clip(bias)

    def one_clip(args):
        q_clip, k_clip, v_clip, bias_clip = args

        def one_block(args):
            q_blk, bias_blk = args
            s = _block_scores(q_blk, k_clip, bias_blk, scale)
            m = jnp.max(s, axis=-1, keepdims=True)
            p = jnp.exp(s - m)
            row_sum = jnp.sum(p, axis=-1, keepdims=True)
            out = jnp.einsum("kgqs,ksh->kgqh", p.astype(v.dtype), v_clip, preferred_element_type=jnp.float32)
            out = (out / row_sum).astype(q.dtype)
            return out, (m + jnp.log(row_sum))[..., 0]

        return jax.lax.map(one_block, (q_clip, clip_bias(bias_clip)))

    return jax.lax.map(one_clip, (q, k, v, scanned_bias))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _blocked(q, k, v, bias, scale):
    return _forward(q, k, v, bias, scale)[0]


def _blocked_fwd(q, k, v, bias, scale):
    out, lse = _forward(q, k, v, bias, scale)
    return out, (q, k, v, bias, out, lse)


def _blocked_bwd(scale, residuals, d_out):
    q, k, v, bias, out, lse = residuals
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # rowsum(dO ∘ O)
    scanned_bias, clip_bias = _per_clip(bias)

    def one_clip(d_bias_shared, args):
        q_clip, k_clip, v_clip, bias_clip, d_out_clip, lse_clip, delta_clip = args

        def one_block(carry, args):
            dk, dv = carry
            q_blk, bias_blk, d_out_blk, lse_blk, delta_blk = args
            p = jnp.exp(_block_scores(q_blk, k_clip, bias_blk, scale) - lse_blk[..., None])
            dv = dv + jnp.einsum("kgqs,kgqh->ksh", p, d_out_blk, preferred_element_type=jnp.float32)
            dp = jnp.einsum("kgqh,ksh->kgqs", d_out_blk, v_clip, preferred_element_type=jnp.float32)
            ds = p * (dp - delta_blk[..., None])
            dq_blk = jnp.einsum("kgqs,ksh->kgqh", ds, k_clip, preferred_element_type=jnp.float32) * scale
            dk = dk + jnp.einsum("kgqs,kgqh->ksh", ds, q_blk, preferred_element_type=jnp.float32) * scale
            d_bias_blk = None
            if bias_blk is not None:  # summed over the head axes the bias broadcasts along
                axes = tuple(i for i in range(2) if bias_blk.shape[i] == 1)
                d_bias_blk = jnp.sum(ds, axis=axes, keepdims=True).astype(bias_blk.dtype)
            return (dk, dv), (dq_blk.astype(q.dtype), d_bias_blk)

        zeros = jnp.zeros(k_clip.shape, jnp.float32)
        (dk, dv), (dq, d_bias) = jax.lax.scan(one_block, (zeros, zeros),
                                              (q_clip, clip_bias(bias_clip), d_out_clip, lse_clip, delta_clip))
        grads = (dq, dk.astype(k.dtype), dv.astype(v.dtype))
        if d_bias_shared is not None:  # a bias shared by the clips gets the sum of their gradients
            return d_bias_shared + d_bias, grads + (None,)
        return None, grads + (d_bias,)

    shared = None if scanned_bias is not None or bias is None else jnp.zeros(bias.shape[1:], bias.dtype)
    shared, (dq, dk, dv, d_bias) = jax.lax.scan(one_clip, shared, (q, k, v, scanned_bias, d_out, lse, delta))
    return dq, dk, dv, (d_bias if shared is None else shared[None])


_blocked.defvjp(_blocked_fwd, _blocked_bwd)


def blocked_attention(q, k, v, *, bias, mask, is_causal, scale, block: int = BLOCK):
    """The kernel: q [B, T, N, H], k/v [B, S, K, H]; `bias`/`mask` broadcastable to [B, N, T, S]. [B, T, N, H]."""
    batch, t, n, head_dim = q.shape
    s, kv_heads = k.shape[1], k.shape[2]
    group = n // kv_heads
    if mask is not None or is_causal:
        allowed = jnp.ones((1, 1, t, s), bool) if mask is None else jnp.asarray(mask, bool)
        if is_causal:
            allowed = allowed & jnp.tril(jnp.ones((t, s), bool))
        bias = jnp.where(allowed, jnp.zeros((), q.dtype) if bias is None else bias, NEG_INF)
        bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)  # a mask may have fewer axes, e.g. [T, S]
    block = -(-t // -(-t // block))  # equal blocks of at most `block` queries: 1568 = 7 x 224, no padding
    padded = -(-t // block) * block
    qh = jnp.pad(q, ((0, 0), (0, padded - t), (0, 0), (0, 0)))  # padded query rows are cut off below
    qh = qh.transpose(0, 2, 1, 3).reshape(batch, kv_heads, group, padded, head_dim)
    kh, vh = (x.transpose(0, 2, 1, 3) for x in (k, v))
    if bias is not None:  # [Bb, Nb, T, S] -> [Bb, Kb, Gb, T, S], queries padded
        bias = jnp.broadcast_to(bias, bias.shape[:2] + (t, s))
        heads = (kv_heads, group) if bias.shape[1] == n else (1, 1)
        bias = bias.reshape(bias.shape[:1] + heads + (t, s))
        bias = _blocks(jnp.pad(bias, ((0, 0),) * 3 + ((0, padded - t), (0, 0))), 3, block)
    out = _unblocks(_blocked(_blocks(qh, 3, block), kh, vh, bias, scale), 3)
    return out.reshape(batch, n, padded, head_dim)[:, :, :t].transpose(0, 2, 1, 3)


def auto_attention(q, k, v, **kwargs):
    """'cpu_blocked' from `MIN_QUERIES` queries on, XLA's attention below."""
    kernel = blocked_attention if q.shape[1] >= MIN_QUERIES else attention.KERNELS["xla"]
    return kernel(q, k, v, **kwargs)


attention.register("cpu_blocked", blocked_attention, platform="cpu")
attention.register("cpu_auto", auto_attention, platform="cpu")
attention.BACKEND_DEFAULTS["cpu"] = "cpu_auto"

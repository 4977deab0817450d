"""Query-blocked attention for long sequences on CPU: the attention kernel 'cpu_blocked', and 'cpu_auto', the CPU
default, which uses it from `MIN_QUERIES` queries on and XLA's attention below.

XLA:CPU computes `jax.nn.dot_product_attention` as separate passes over the whole [heads, T, S] float32 score matrix
(59 MB per ViT-S layer and clip at 1568 tokens), and autodiff keeps the probabilities of every layer for the
backward pass. This kernel loops over blocks of `BLOCK` queries: each block's scores against all keys
([heads, BLOCK, S], a few MB) are computed, soft-maxed and multiplied by the values while still in cache. The
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

BLOCK = 128  # queries per block: [6 heads, 128, 1568] float32 scores are 4.8 MB
MIN_QUERIES = 256  # shorter sequences fit the cache whole (docs/benchmarks.md)
NEG_INF = float(jnp.finfo(jnp.float32).min)  # the bias of a masked-out score, as in jax.nn.dot_product_attention


def _blocks(x, axis: int, block: int):
    """x with `axis` (length a multiple of `block`) split into [num_blocks, ..., block, ...], blocks leading."""
    x = x.reshape(x.shape[:axis] + (x.shape[axis] // block, block) + x.shape[axis + 1:])
    return jnp.moveaxis(x, axis, 0)


def _unblocks(x, axis: int):
    """Inverse of `_blocks`."""
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2:])


def _block_scores(q, k, bias, scale):
    """q [B, K, G, Q, H], k [B, K, S, H], bias [Bb, Kb, Gb, Q, S] or None -> float32 scores [B, K, G, Q, S]."""
    s = jnp.einsum("bkgqh,bksh->bkgqs", q, k, preferred_element_type=jnp.float32) * scale
    return s if bias is None else s + bias


def _forward(q, k, v, bias, scale):
    """Blocked attention on q [nb, B, K, G, Q, H], k/v [B, K, S, H], bias [nb, Bb, Kb, Gb, Q, S] or None.
    Returns (out [nb, B, K, G, Q, H], lse [nb, B, K, G, Q])."""

    def one_block(args):
        q_blk, bias_blk = args
        s = _block_scores(q_blk, k, bias_blk, scale)
        m = jnp.max(s, axis=-1, keepdims=True)
        p = jnp.exp(s - m)
        row_sum = jnp.sum(p, axis=-1, keepdims=True)
        out = jnp.einsum("bkgqs,bksh->bkgqh", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        out = (out / row_sum).astype(q.dtype)
        return out, (m + jnp.log(row_sum))[..., 0]

    return jax.lax.map(one_block, (q, bias))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _blocked(q, k, v, bias, scale):
    return _forward(q, k, v, bias, scale)[0]


def _blocked_fwd(q, k, v, bias, scale):
    out, lse = _forward(q, k, v, bias, scale)
    return out, (q, k, v, bias, out, lse)


def _blocked_bwd(scale, residuals, d_out):
    q, k, v, bias, out, lse = residuals
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # rowsum(dO ∘ O)

    def one_block(carry, args):
        dk, dv = carry
        q_blk, bias_blk, d_out_blk, lse_blk, delta_blk = args
        p = jnp.exp(_block_scores(q_blk, k, bias_blk, scale) - lse_blk[..., None])
        dv = dv + jnp.einsum("bkgqs,bkgqh->bksh", p, d_out_blk, preferred_element_type=jnp.float32)
        dp = jnp.einsum("bkgqh,bksh->bkgqs", d_out_blk, v, preferred_element_type=jnp.float32)
        ds = p * (dp - delta_blk[..., None])
        dq_blk = jnp.einsum("bkgqs,bksh->bkgqh", ds, k, preferred_element_type=jnp.float32) * scale
        dk = dk + jnp.einsum("bkgqs,bkgqh->bksh", ds, q_blk, preferred_element_type=jnp.float32) * scale
        d_bias_blk = None
        if bias_blk is not None:  # summed over the axes the bias broadcasts along
            axes = tuple(i for i in range(3) if bias_blk.shape[i] == 1)
            d_bias_blk = jnp.sum(ds, axis=axes, keepdims=True).astype(bias_blk.dtype)
        return (dk, dv), (dq_blk.astype(q.dtype), d_bias_blk)

    zeros = jnp.zeros(k.shape, jnp.float32)
    (dk, dv), (dq, d_bias) = jax.lax.scan(one_block, (zeros, zeros), (q, bias, d_out, lse, delta))
    return dq, dk.astype(k.dtype), dv.astype(v.dtype), d_bias


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
    block = min(block, t)
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

"""Query-blocked attention on CPU: the attention kernel 'cpu_blocked', and 'cpu_auto', the CPU default, which uses it
where the score matrix of the whole batch takes `MIN_SCORES_BYTES` or more and XLA's attention below.

XLA:CPU computes `jax.nn.dot_product_attention` as separate passes over the whole [batch, heads, T, S] float32 score
matrix (59 MB per ViT-S layer and clip at 1568 tokens; 8.5 MB for a batch of 32 clips of 129 tokens and 4 heads),
and autodiff keeps the probabilities of every layer for the backward pass. This kernel loops over chunks of clips
(as many as keep their block scores within `CHUNK_BYTES`; one clip of a long sequence) and, within a chunk, over
equal blocks of at most `BLOCK` queries: each block's scores against all keys are computed, soft-maxed and
multiplied by the values while still in cache. The forward pass keeps only the output and each row's log-sum-exp;
the backward pass (`jax.custom_vjp`) recomputes each block's probabilities from them and accumulates the key and
value gradients over the blocks, using rowsum(dP ∘ P) = rowsum(dO ∘ O) (the flash-attention backward, with full key
rows instead of key blocks).

A boolean mask and `is_causal` join the caller's bias as an additive bias (`NEG_INF` where a score is masked out),
so masked rows behave as in `jax.nn.dot_product_attention`. Grouped key/value heads are used in place (no repeat).
"""
import functools

import jax
import jax.numpy as jnp

from invideo_jax.models import attention

BLOCK = 256  # most queries per block: [6 heads, 224, 1568] float32 scores (a 16x224 clip) are 8.4 MB
CHUNK_BYTES = 1 << 20  # most bytes of block scores per step of the loop over clips: short clips go several at a time
MIN_SCORES_BYTES = 4 << 20  # smaller score matrices (all clips and heads) fit the cache whole (docs/benchmarks.md)
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
    """q [C, K, G, Q, H], k [C, K, S, H], bias [Cb, Kb, Gb, Q, S] or None -> float32 scores [C, K, G, Q, S]."""
    s = jnp.einsum("ckgqh,cksh->ckgqs", q, k, preferred_element_type=jnp.float32) * scale
    return s if bias is None else s + bias


def _per_chunk(bias):
    """How a bias [Bb, ...] reaches the loop over chunks of clips: (the scanned part, the chunk's bias from it)."""
    if bias is not None and bias.shape[0] == 1:  # shared by every chunk: closed over, not copied per chunk
        return None, lambda _: bias[0]
    return bias, lambda scanned: scanned


def _forward(q, k, v, bias, scale):
    """Blocked attention on q [B/C, nb, C, K, G, Q, H], k/v [B/C, C, K, S, H], bias [Bb, nb, Cb, Kb, Gb, Q, S] or
    None, one chunk of C clips at a time (the block's scores stay [C, K, G, Q, S] whatever the batch). Returns (out
    like q, lse [B/C, nb, C, K, G, Q])."""
    scanned_bias, chunk_bias = _per_chunk(bias)

    def one_chunk(args):
        q_chunk, k_chunk, v_chunk, bias_chunk = args

        def one_block(args):
            q_blk, bias_blk = args
            s = _block_scores(q_blk, k_chunk, bias_blk, scale)
            m = jnp.max(s, axis=-1, keepdims=True)
            p = jnp.exp(s - m)
            row_sum = jnp.sum(p, axis=-1, keepdims=True)
            out = jnp.einsum("ckgqs,cksh->ckgqh", p.astype(v.dtype), v_chunk, preferred_element_type=jnp.float32)
            out = (out / row_sum).astype(q.dtype)
            return out, (m + jnp.log(row_sum))[..., 0]

        return jax.lax.map(one_block, (q_chunk, chunk_bias(bias_chunk)))

    return jax.lax.map(one_chunk, (q, k, v, scanned_bias))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _blocked(q, k, v, bias, scale):
    return _forward(q, k, v, bias, scale)[0]


def _blocked_fwd(q, k, v, bias, scale):
    out, lse = _forward(q, k, v, bias, scale)
    return out, (q, k, v, bias, out, lse)


def _blocked_bwd(scale, residuals, d_out):
    q, k, v, bias, out, lse = residuals
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # rowsum(dO ∘ O)
    scanned_bias, chunk_bias = _per_chunk(bias)

    def one_chunk(d_bias_shared, args):
        q_chunk, k_chunk, v_chunk, bias_chunk, d_out_chunk, lse_chunk, delta_chunk = args

        def one_block(carry, args):
            dk, dv = carry
            q_blk, bias_blk, d_out_blk, lse_blk, delta_blk = args
            p = jnp.exp(_block_scores(q_blk, k_chunk, bias_blk, scale) - lse_blk[..., None])
            dv = dv + jnp.einsum("ckgqs,ckgqh->cksh", p, d_out_blk, preferred_element_type=jnp.float32)
            dp = jnp.einsum("ckgqh,cksh->ckgqs", d_out_blk, v_chunk, preferred_element_type=jnp.float32)
            ds = p * (dp - delta_blk[..., None])
            dq_blk = jnp.einsum("ckgqs,cksh->ckgqh", ds, k_chunk, preferred_element_type=jnp.float32) * scale
            dk = dk + jnp.einsum("ckgqs,ckgqh->cksh", ds, q_blk, preferred_element_type=jnp.float32) * scale
            d_bias_blk = None
            if bias_blk is not None:  # summed over the clip and head axes the bias broadcasts along
                axes = tuple(i for i in range(3) if bias_blk.shape[i] == 1)
                d_bias_blk = jnp.sum(ds, axis=axes, keepdims=True).astype(bias_blk.dtype)
            return (dk, dv), (dq_blk.astype(q.dtype), d_bias_blk)

        zeros = jnp.zeros(k_chunk.shape, jnp.float32)
        (dk, dv), (dq, d_bias) = jax.lax.scan(one_block, (zeros, zeros),
                                              (q_chunk, chunk_bias(bias_chunk), d_out_chunk, lse_chunk, delta_chunk))
        grads = (dq, dk.astype(k.dtype), dv.astype(v.dtype))
        if d_bias_shared is not None:  # a bias shared by the chunks gets the sum of their gradients
            return d_bias_shared + d_bias, grads + (None,)
        return None, grads + (d_bias,)

    shared = None if scanned_bias is not None or bias is None else jnp.zeros(bias.shape[1:], bias.dtype)
    shared, (dq, dk, dv, d_bias) = jax.lax.scan(one_chunk, shared, (q, k, v, scanned_bias, d_out, lse, delta))
    return dq, dk, dv, (d_bias if shared is None else shared[None])


_blocked.defvjp(_blocked_fwd, _blocked_bwd)


def _clips_per_chunk(batch: int, block_scores_bytes: int, chunk_bytes: int) -> int:
    """The most clips (a divisor of `batch`) whose block scores together stay within `chunk_bytes`; at least 1."""
    return max(c for c in range(1, batch + 1) if batch % c == 0 and (c == 1 or c * block_scores_bytes <= chunk_bytes))


def _chunks(x, clips: int, blocked: bool):
    """[B, ...] -> [B/C, C, ...]; a query-blocked x [B, nb, ...] -> [B/C, nb, C, ...]."""
    x = x.reshape((x.shape[0] // clips, clips) + x.shape[1:])
    return x.swapaxes(1, 2) if blocked else x


def blocked_attention(q, k, v, *, bias, mask, is_causal, scale, block: int = BLOCK, chunk_bytes: int = CHUNK_BYTES):
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
    clips = _clips_per_chunk(batch, n * block * s * 4, chunk_bytes)
    qh = jnp.pad(q, ((0, 0), (0, padded - t), (0, 0), (0, 0)))  # padded query rows are cut off below
    qh = qh.transpose(0, 2, 1, 3).reshape(batch, kv_heads, group, padded, head_dim)
    kh, vh = (_chunks(x.transpose(0, 2, 1, 3), clips, blocked=False) for x in (k, v))
    if bias is not None:  # [Bb, Nb, T, S] -> [Bb/C or 1, nb, C or 1, Kb, Gb, Q, S], queries padded
        bias = jnp.broadcast_to(bias, bias.shape[:2] + (t, s))
        heads = (kv_heads, group) if bias.shape[1] == n else (1, 1)
        bias = bias.reshape(bias.shape[:1] + heads + (t, s))
        bias = _blocks(jnp.pad(bias, ((0, 0),) * 3 + ((0, padded - t), (0, 0))), 3, block)
        bias = bias[:, :, None] if bias.shape[0] == 1 else _chunks(bias, clips, blocked=True)
    out = _blocked(_chunks(_blocks(qh, 3, block), clips, blocked=True), kh, vh, bias, scale)
    out = _unblocks(out.swapaxes(1, 2).reshape((batch,) + out.shape[1:2] + out.shape[3:]), 3)
    return out.reshape(batch, n, padded, head_dim)[:, :, :t].transpose(0, 2, 1, 3)


def auto_attention(q, k, v, **kwargs):
    """'cpu_blocked' where the float32 scores [B, N, T, S] take `MIN_SCORES_BYTES` or more, XLA's attention below."""
    scores_bytes = q.shape[0] * q.shape[2] * q.shape[1] * k.shape[1] * 4
    kernel = blocked_attention if scores_bytes >= MIN_SCORES_BYTES else attention.KERNELS["xla"]
    return kernel(q, k, v, **kwargs)


attention.register("cpu_blocked", blocked_attention, platform="cpu")
attention.register("cpu_auto", auto_attention, platform="cpu")
attention.BACKEND_DEFAULTS["cpu"] = "cpu_auto"

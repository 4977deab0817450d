"""The Pallas TPU flash attention kernel as the attention kernel 'tpu_flash' (`attn_impl='tpu_flash'`).

`jax.experimental.pallas.ops.tpu.flash_attention` computes attention block by block in VMEM, never holding the
[heads, q_length, kv_length] scores in HBM, forward and backward. Around it:
  - layout: ours [B, T, N, H] to the kernel's [B, N, T, H] and back; grouped key/value heads are repeated;
  - lengths that are not a multiple of the kernel's block (128; 1568 VideoMAE tokens, 77 CLIP text tokens) are padded,
    and the padded keys masked by segment ids (queries 1, real keys 1, padded keys 0); padded query rows are cut off;
  - head dims above 128 that are not a multiple of it, which the kernel rejects (e.g. 200 in an attention pooling of
    width 3200 over 16 heads), are zero-padded to one: zeros add nothing to q kᵀ, and the output's are cut off;
  - a key-padding mask ([B, 1, 1, S], e.g. BERT's) joins the segment ids; any other mask becomes an additive bias
    [B, N, T, S] (which holds the scores' size in HBM again), joined with the caller's `bias` (divided by the
    softmax scale: the kernel scales q kᵀ + ab) into the kernel's `ab`, whose gradient the kernel computes;
  - `jax.shard_map` over the mesh in scope (Mosaic kernels cannot be partitioned by XLA): batch over the batch axes,
    heads over `tensor` where they divide; without a mesh the kernel is called directly.
It runs on TPUs, compiles for them ahead of time (`python -m invideo_jax.aot`), and runs on CPU inside
`jax.experimental.pallas.tpu.force_tpu_interpret_mode()` (tests/test_attention_tpu.py).
"""
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from invideo_jax import sharding
from invideo_jax.models import attention

BLOCK = 128  # the kernel's default block along both sequence axes, and its head-dim unit above 128
NEG_INF = -0.7 * float(jnp.finfo(jnp.float32).max)  # the bias of a masked-out score (finite: no NaN in the grads)


def _pad(x, axis: int, length: int):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, length - x.shape[axis])
    return jnp.pad(x, pad)


def _key_padding(mask, batch: int, kv_length: int):
    """The [B, S] key mask if `mask` only masks keys (broadcast over heads and queries), else None."""
    if mask is None or mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2] != 1:
        return None
    return jnp.broadcast_to(mask[:, 0, 0, :], (batch, kv_length))


def flash_attention(q, k, v, *, bias=None, mask=None, is_causal: bool = False, scale: float = None):
    """`attention.attention`'s contract: q [B, T, N, H], k and v [B, S, K, H], float `bias` and boolean `mask`
    (True = attend) broadcastable to [B, N, T, S]; returns [B, T, N, H]."""
    from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash

    b, t, n, h = q.shape
    s = k.shape[1]
    if k.shape[2] != n:  # grouped-query attention: the kernel wants as many key/value heads as query heads
        k, v = (jnp.repeat(x, n // k.shape[2], axis=2) for x in (k, v))
    t_pad, s_pad = (BLOCK * math.ceil(length / BLOCK) for length in (t, s))
    h_pad = h if h <= BLOCK else BLOCK * math.ceil(h / BLOCK)
    key_mask = _key_padding(mask, b, s)
    if bias is not None:  # the kernel scales (q kᵀ + ab)
        bias = bias.astype(jnp.float32) / scale
    if mask is not None and key_mask is None:
        bias = jnp.where(jnp.broadcast_to(mask, (b, n, t, s)), 0.0 if bias is None else bias, NEG_INF)
    if bias is not None:
        bias = _pad(_pad(jnp.broadcast_to(bias.astype(jnp.float32), (b, n, t, s)), 2, t_pad), 3, s_pad)
    kv_ids = jnp.arange(s_pad)[None, :] < s
    if key_mask is not None:
        kv_ids = kv_ids & _pad(key_mask, 1, s_pad)
    kv_ids = jnp.broadcast_to(kv_ids, (b, s_pad)).astype(jnp.int32)
    q_ids = jnp.ones((b, t_pad), jnp.int32)
    q, k, v = (_pad(_pad(x, 3, h_pad), 1, length).transpose(0, 2, 1, 3)
               for x, length in ((q, t_pad), (k, s_pad), (v, s_pad)))

    def kernel(q, k, v, bias, q_ids, kv_ids):
        return pallas_flash.flash_attention(q, k, v, bias, pallas_flash.SegmentIds(q_ids, kv_ids), causal=is_causal,
                                            sm_scale=scale)

    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        batch_axes = tuple(a for a in sharding.BATCH_AXES if a in mesh.shape)
        batch_spec = batch_axes if b % math.prod(mesh.shape[a] for a in batch_axes) == 0 else None
        heads = "tensor" if mesh.shape.get("tensor", 1) > 1 and n % mesh.shape["tensor"] == 0 else None
        qkv = P(batch_spec, heads, None, None)
        ids = P(batch_spec, None)
        kernel = jax.shard_map(kernel, mesh=mesh, in_specs=(qkv, qkv, qkv, None if bias is None else qkv, ids, ids),
                               out_specs=qkv, check_vma=False)
    out = kernel(q, k, v, bias, q_ids, kv_ids)
    return out.transpose(0, 2, 1, 3)[:, :t, :, :h]


attention.register("tpu_flash", flash_attention, platform="tpu")

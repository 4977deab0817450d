"""InternVideo-MM caption decoder: a CoCa-style multimodal text decoder over pooled video tokens.

Source: OpenGVLab/InternVideo `InternVideo1/Downstream/multi-modalities-downstream/CoTrain/modules/clip_decoders.py`
(`CaptionDecoder`), built from its `coca.py` (lucidrains' CoCa-pytorch, modified); called in `clip_module.py` as
`caption_decoder(video_all_feats, text_all_feats[:, :-1])` and trained by `objectives.compute_cap`.

Inputs (as the official):
  video_tokens (B, N, C_v): every output token of the visual backbone's last block, no norm applied: per frame the
    class token and the H*W patches, for all T frames (official `[L, N, T, C] -> [N, L*T, C]`; the pooler has no
    positions, so the token order does not matter). C_v = backbone width.
  text (B, L, W): the CLIP text tower's `tokens` (after ln_final) without the last position; W = text width.
Output: logits (B, L, vocab) in float32; logits[:, k] predict ids[:, k + 1]. The official loss ignores special
  tokens (SOT, EOT, padding): `losses.caption_loss(logits, ids[:, 1:], ~special_tokens_mask[:, 1:])`.

Structure: Q=256 learned queries -> attention pooler (CrossAttention with a context norm, no residual, no FF) over the
video tokens -> LayerNorm; text -> LayerNorm; `depth` x [x + ParallelBlock(x), x + CrossAttention(x, pooled) with a
parallel SwiGLU FF] -> predictor (LayerNorm, Linear, exact GELU, LayerNorm, Linear to vocab). heads = W // 64,
head dim D, FF hidden F = 4W, LayerNorm eps 1e-5. CoCa linears and CoCa LayerNorms have no bias (the LayerNorm's
zero `beta` is a buffer); the predictor and the two torch LayerNorms (`visual_pooler_norm`, `text_norm`) have biases.
Attention is multi-query: H query heads share one key/value head. SwiGLU(a | b) = a * silu(b).
No differences from the official in the math. Init as the official `init_weights`: linears N(0, 0.02), zero biases,
queries N(0, W**-0.5).

Param keys, ours -> official (prefix `caption_decoder.`; torch Linear weights are (out, in), our kernels (in.., out..)):
  visual_queries (Q, W)                               visual_queries
  visual_attn_pooler/norm/scale (W)                   visual_attn_pooler.norm.gamma   (+ zero buffer .norm.beta)
  visual_attn_pooler/context_norm/scale (C_v)         visual_attn_pooler.context_norm.gamma   (+ .context_norm.beta)
  visual_attn_pooler/to_q/kernel (W, H, D)            visual_attn_pooler.to_q.weight (H*D, W)
  visual_attn_pooler/to_kv/kernel (C_v, 2, D)         visual_attn_pooler.to_kv.weight (2D, C_v), rows [k | v]
  visual_attn_pooler/to_out/kernel (H, D, W)          visual_attn_pooler.to_out.weight (W, H*D)
  visual_pooler_norm/{scale,bias}, text_norm/...      visual_pooler_norm.{weight,bias}, text_norm.{weight,bias}
  layers_{i}/attn_ff/norm/scale                       multimodal_layers.{i}.0.fn.norm.gamma   (+ .norm.beta and
                                                        .rotary_emb.inv_freq buffers)
  layers_{i}/attn_ff/fused_attn_ff_proj/kernel        multimodal_layers.{i}.0.fn.fused_attn_ff_proj.weight
    (W, H*D + 2D + 2F), columns [q | k | v | ff value | ff gate]      (H*D + 2D + 2F, W)
  layers_{i}/attn_ff/attn_out/kernel (H, D, W)        multimodal_layers.{i}.0.fn.attn_out.weight (W, H*D)
  layers_{i}/attn_ff/ff_out/kernel (F, W)             multimodal_layers.{i}.0.fn.ff_out.1.weight (W, F)
  layers_{i}/cross_attn/{norm,to_q,to_kv,to_out}      multimodal_layers.{i}.1.fn.{norm,to_q,to_kv,to_out} (as the
                                                        pooler, context width W, no context norm)
  layers_{i}/cross_attn/ff_in/kernel (W, 2, F)        multimodal_layers.{i}.1.fn.ff.0.weight (2F, W), [value | gate]
  layers_{i}/cross_attn/ff_out/kernel (F, W)          multimodal_layers.{i}.1.fn.ff.2.weight (W, F)
  predictor/{norm1,fc1,norm2,fc2}                     predictor.{0,1,3,4}.{weight,bias}
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from invideo_jax.models import layers
from invideo_jax.models.attention import attention

ROTARY_BASE = 10000.0
init_linear = nn.initializers.normal(0.02)


def rotary(x):
    """Rotary embedding of x (B, L, ..., D) at positions 0..L-1, rotating the two halves of D (CoCa's layout)."""
    length, dim = x.shape[1], x.shape[-1]
    inv_freq = 1.0 / ROTARY_BASE ** (np.arange(0, dim, 2) / dim)
    angles = np.outer(np.arange(length), inv_freq)
    angles = np.concatenate([angles, angles], -1).reshape((length,) + (1,) * (x.ndim - 3) + (dim,))
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x.astype(jnp.float32) * np.cos(angles) + rotated * np.sin(angles)).astype(x.dtype)


def multi_query_attention(q, k, v, *, is_causal: bool, impl=None):
    """q (B, L, H, D); k, v (B, S, D): one key/value head shared by all query heads."""
    return attention(q, k[:, :, None], v[:, :, None], is_causal=is_causal, scale=q.shape[-1] ** -0.5, impl=impl)


def swiglu(value, gate):
    return value * jax.nn.silu(gate)


class _Module(nn.Module):
    def linear(self, features, axes, name, in_dims=1, use_bias=False):
        return layers.dense(features, axes, name=name, use_bias=use_bias, in_dims=in_dims, kernel_init=init_linear,
                            dtype=self.dtype, param_dtype=self.param_dtype)

    def norm(self, name, use_bias=False):
        return layers.Norm("layernorm", self.eps, self.param_dtype, use_bias=use_bias, name=name)


class ParallelBlock(_Module):
    """CoCa ParallelTransformerBlock (no residual): causal rotary multi-query attention + SwiGLU FF on one norm."""

    num_heads: int
    head_dim: int
    ff_dim: int
    eps: float = 1e-5
    attn_impl: Optional[str] = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h, d, f = self.num_heads, self.head_dim, self.ff_dim
        y = self.norm("norm")(x)
        fused = self.linear(h * d + 2 * d + 2 * f, ("embed", None), "fused_attn_ff_proj")(y)
        q, k, v, ff_value, ff_gate = jnp.split(fused, np.cumsum([h * d, d, d, f]), axis=-1)
        q = rotary(q.reshape(q.shape[:-1] + (h, d)))
        out = multi_query_attention(q, rotary(k), v, is_causal=True, impl=self.attn_impl)
        attn = self.linear(x.shape[-1], ("heads", "kv", "embed"), "attn_out", in_dims=2)(out)
        return attn + self.linear(x.shape[-1], ("mlp", "embed"), "ff_out")(swiglu(ff_value, ff_gate))


class CrossAttention(_Module):
    """CoCa CrossAttention (no residual): multi-query attention from x to context, optional parallel SwiGLU FF."""

    num_heads: int
    head_dim: int
    ff_dim: int = 0  # 0: no parallel feed-forward
    norm_context: bool = False
    eps: float = 1e-5
    attn_impl: Optional[str] = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        width = x.shape[-1]
        x = self.norm("norm")(x)
        if self.norm_context:
            context = self.norm("context_norm")(context)
        q = self.linear((self.num_heads, self.head_dim), ("embed", "heads", "kv"), "to_q")(x)
        kv = self.linear((2, self.head_dim), ("embed", None, "kv"), "to_kv")(context)
        out = multi_query_attention(q, kv[..., 0, :], kv[..., 1, :], is_causal=False, impl=self.attn_impl)
        out = self.linear(width, ("heads", "kv", "embed"), "to_out", in_dims=2)(out)
        if self.ff_dim:
            ff = self.linear((2, self.ff_dim), ("embed", None, "mlp"), "ff_in")(x)
            out = out + self.linear(width, ("mlp", "embed"), "ff_out")(swiglu(ff[..., 0, :], ff[..., 1, :]))
        return out


class MultimodalLayer(nn.Module):
    kw: dict  # ParallelBlock / CrossAttention fields

    @nn.compact
    def __call__(self, x, visual):
        x = x + ParallelBlock(**self.kw, name="attn_ff")(x)
        x = x + CrossAttention(**self.kw, name="cross_attn")(x, visual)
        return layers.constrain(x)


class Predictor(_Module):
    vocab_size: int
    eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        x = self.norm("norm1", use_bias=True)(x)
        x = layers.activation("gelu")(self.linear(width, ("embed", "mlp"), "fc1", use_bias=True)(x))
        x = self.norm("norm2", use_bias=True)(x)
        return self.linear(self.vocab_size, ("mlp", "vocab"), "fc2", use_bias=True)(x)


class CaptionDecoder(nn.Module):
    vocab_size: int
    width: int
    depth: int = 4
    num_heads: int = 0  # 0: width // 64, as the official
    num_queries: int = 256
    ff_mult: int = 4
    norm_eps: float = 1e-5
    remat: str = "none"  # a layers.REMAT_POLICIES key, per multimodal layer
    attn_impl: Optional[str] = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, video_tokens, text, *, train: bool = False):
        """video_tokens (B, N, C_v), text (B, L, width) text-tower tokens -> logits (B, L, vocab_size)."""
        if text.shape[-1] != self.width:
            raise ValueError(f"text width {text.shape[-1]} != decoder width {self.width}")
        heads = self.num_heads or self.width // 64
        if not heads or self.width % heads:
            raise ValueError(f"width {self.width} does not split into {heads} heads")
        kw = dict(num_heads=heads, head_dim=self.width // heads, eps=self.norm_eps, attn_impl=self.attn_impl,
                  dtype=self.dtype, param_dtype=self.param_dtype)
        queries = self.param("visual_queries", layers.logical(nn.initializers.normal(self.width ** -0.5),
                                                              (None, "embed")),
                             (self.num_queries, self.width), self.param_dtype)
        queries = jnp.broadcast_to(queries.astype(self.dtype), (text.shape[0],) + queries.shape)
        visual = CrossAttention(**kw, norm_context=True, name="visual_attn_pooler")(queries, video_tokens)
        visual = layers.Norm("layernorm", self.norm_eps, self.param_dtype, name="visual_pooler_norm")(visual)
        x = layers.Norm("layernorm", self.norm_eps, self.param_dtype, name="text_norm")(text)
        x = layers.constrain(x.astype(self.dtype))
        layer_cls = MultimodalLayer
        if self.remat != "none":
            layer_cls = nn.remat(MultimodalLayer, policy=layers.REMAT_POLICIES[self.remat])
        for i in range(self.depth):
            x = layer_cls(dict(kw, ff_dim=self.ff_mult * self.width), name=f"layers_{i}")(x, visual.astype(self.dtype))
        return Predictor(self.vocab_size, self.norm_eps, self.dtype, self.param_dtype, name="predictor")(
            x).astype(jnp.float32)

"""A BEATs-style audio encoder (InternVideo2-6B stage 2's `audio_encoder`, frozen there) over log-mel filterbanks.

  fbank (B, T, F) (data/audio.py: normalised Kaldi log-mel, F = 64 in InternVideo2, 128 in BEATs)
    -> 16x16 non-overlapping patches, (t, f) order: N = (T // 16) * (F // 16) tokens (a trailing T % 16 is dropped,
       as the official stride-16 conv does; InternVideo2's 998 x 64 input gives 62 x 4 = 248 tokens)
    -> `patch_embed` (256 -> 512, no bias) -> `patch_norm` LayerNorm -> `post_extract_proj` (512 -> D)
    -> x + GELU(`pos_conv`(x)) (grouped 1-D conv over tokens, kernel 128, 16 groups, 'same' length) -> `pos_norm`
    -> `depth` post-LN blocks (DeepNet residual scaling: x = LN(alpha * x + f(x)), alpha = (2 depth)^(1/4)), their
       attention scores plus a gated relative position bias (below) when `rel_pos_buckets` > 0
    -> tokens (B, N, D) -> mean over tokens -> `proj` (D -> embed_dim) -> pooled (B, embed_dim)
  audio_mask (B,) (1 = the example has audio): tokens and pooled are exactly 0 where it is 0, and the output 'mask'
  says which rows are real, so losses can skip the others. Gradients do not flow into the masked rows.

What follows BEATs (microsoft/unilm beats/BEATs.py, BEATsConfig of BEATs_iter3): the patch embedding (Conv2d(1, 512,
16, stride 16, bias=False) as one matmul), LayerNorm + 512 -> 768 projection, the convolutional position embedding
(kernel 128, 16 groups, padding 64 with the last output dropped, GELU), post-LN encoder (layer_norm_first=False, no
final LayerNorm), deep-norm alpha residual scaling and beta-scaled init (beta = (8 depth)^(-1/4) on v, out, fc1, fc2),
exact GELU, LayerNorm eps 1e-5, q/k/v/out biases.

Relative position bias (BEATs' `relative_position_embedding` with `gru_rel_pos`; rows with `rel_pos_buckets` > 0):
  bucket(j - i) for query i and key j, bidirectional T5 buckets: half the buckets per sign (B/2, the positive side
  offset by B/2), distances below B/4 exact, larger ones log-spaced up to `rel_pos_max_distance` (then the last
  bucket); one table `rel_pos_bias` (B, heads), owned by the encoder (BEATs' layer 0) and shared by every layer:
  bias[h, i, j] = table[bucket(j - i), h]. Each layer gates it per query and head from its raw query q (q_proj
  output, before scaling): (a, b) = sigmoid(sum of two groups of 4 of `grep_linear`(q) (head_dim -> 8)),
  gate = a (b `grep_a`[h] - 1) + 2, and adds gate * bias to q k / sqrt(head_dim) before the softmax
  (models/attention.py's `bias`). Without it (`rel_pos_buckets` 0) position comes from the conv embedding only.

Simplifications:
  - `pos_conv` holds the effective kernel: BEATs stores it weight-normalised (weight_g, weight_v with dim=2:
    w = g v / ||v||, one norm per kernel position), which is the same function; convert/beats.py computes w.
  - no padding mask (InternVideo2 does not pass one either: padded frames are zeros after normalisation), no dropout
    or layer drop (the encoder is frozen in InternVideo2), no BEATs tokenizer / predictor heads.
  - the pooled feature is the plain token mean projected by `proj` (InternVideo2's `audio_proj` sits in the stage-2
    model; here it is part of the encoder so the piece is usable alone).

Params: patch_embed/kernel (256, 512), patch_norm, post_extract_proj/{kernel, bias} (if 512 != D),
pos_conv/{kernel (128, D / 16, D), bias}, pos_norm, rel_pos_bias (buckets, heads), transformer/blocks[_i]/{q, k, v,
out, norm1, fc1, fc2, norm2, grep_linear/{kernel (head_dim, 8), bias}, grep_a (heads,)}, proj/{kernel, bias} (if
embed_dim). Official names: convert/beats.py.
"""
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from invideo_jax.models import layers
from invideo_jax.models.attention import attention

# Encoder sizes (the config rows). beats_iter3: BEATsConfig of BEATs_iter3 / iter3+ (AS2M), the encoder
# InternVideo2-6B loads from `beats.pth` (d_model 768); internvideo.md 1.9. A BEATs file's `cfg` is checked against
# these fields when it converts (convert/beats.py).
AUDIO_SIZES = {
    "beats_iter3": dict(width=768, depth=12, num_heads=12, mlp_dim=3072, patch_embed_dim=512, conv_pos=128,
                        conv_pos_groups=16, rel_pos_buckets=320, rel_pos_max_distance=800, rel_pos_gate=True),
    "tiny": dict(width=64, depth=2, num_heads=4, mlp_dim=128, patch_embed_dim=32, conv_pos=8, conv_pos_groups=4),
}


def deep_norm_constants(depth: int) -> tuple[float, float]:
    """DeepNet (encoder-only) residual scale alpha = (2N)^(1/4) and init gain beta = (8N)^(-1/4)."""
    return (2.0 * depth) ** 0.25, (8.0 * depth) ** -0.25


def parameter_count(width: int, depth: int, num_heads: int, mlp_dim: int, patch_embed_dim: int = 512,
                    conv_pos: int = 128, conv_pos_groups: int = 16, patch_size: int = 16, embed_dim: int = 0,
                    rel_pos_buckets: int = 0, rel_pos_max_distance: int = 0, rel_pos_gate: bool = False) -> int:
    """Analytic parameter count of `AudioTransformer` (does not depend on the input length or mel bins)."""
    del rel_pos_max_distance  # a hyper-parameter of the buckets, no parameters
    count = patch_size * patch_size * patch_embed_dim + 2 * patch_embed_dim  # patch_embed, patch_norm
    if patch_embed_dim != width:
        count += patch_embed_dim * width + width  # post_extract_proj
    count += conv_pos * (width // conv_pos_groups) * width + width + 2 * width  # pos_conv, pos_norm
    block = 4 * (width * width + width) + 2 * 2 * width + width * mlp_dim + mlp_dim + mlp_dim * width + width
    if rel_pos_buckets and rel_pos_gate:
        block += (width // num_heads) * 8 + 8 + num_heads  # grep_linear, grep_a
    count += depth * block + rel_pos_buckets * num_heads
    if embed_dim:
        count += width * embed_dim + embed_dim
    return count


def relative_position_buckets(q_length: int, k_length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """BEATs' bidirectional bucket (q_length, k_length) int32 of each relative position key - query (module docstring),
    in float32 arithmetic as the original."""
    rel = np.arange(k_length)[None, :] - np.arange(q_length)[:, None]
    half = num_buckets // 2
    exact = half // 2
    distance = np.abs(rel)
    with np.errstate(divide="ignore"):  # log(0) on the exact distances, which the where below discards
        log_ratio = np.log(distance.astype(np.float32) / np.float32(exact))
        far = exact + log_ratio / np.float32(math.log(max_distance / exact)) * np.float32(half - exact)
    far = np.minimum(np.where(np.isfinite(far), far, 0).astype(np.int64), half - 1)
    return ((rel > 0) * half + np.where(distance < exact, distance, far)).astype(np.int32)


class PostNormBlock(nn.Module):
    """x = LN(alpha x + attn(x)); x = LN(alpha x + fc2(act(fc1(x)))). Same call signature as `layers.Block`, plus
    an optional shared relative position bias (heads, N, N) that this block gates per query (`rel_pos_gate`)."""

    num_heads: int
    mlp_dim: int
    alpha: float = 1.0
    init_gain: float = 1.0  # beta: scales the init of v, out, fc1, fc2
    norm_eps: float = 1e-5
    act: str = "gelu"
    rel_pos_gate: bool = False
    attn_impl: Optional[str] = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, rate, deterministic: bool, position_bias=None):
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        xavier = nn.initializers.xavier_normal()
        scaled = layers.scaled(xavier, self.init_gain)

        def project(name, init):
            return layers.dense((self.num_heads, head_dim), ("embed", "heads", "kv"), name=name, kernel_init=init,
                                **kw)(x)

        q, k, v = project("q", xavier), project("k", xavier), project("v", scaled)
        bias = None
        if position_bias is not None:
            bias = position_bias[None].astype(jnp.float32)  # (1, heads, N, N)
            if self.rel_pos_gate:
                bias = self._gate(q) * bias
        y = attention(q, k, v, bias=bias, scale=head_dim ** -0.5, impl=self.attn_impl)
        y = layers.dense(width, ("heads", "kv", "embed"), name="out", in_dims=2, kernel_init=scaled, **kw)(y)
        x = self._residual(x, y, rate, deterministic, "norm1")
        y = layers.dense(self.mlp_dim, ("embed", "mlp"), name="fc1", kernel_init=scaled, **kw)(x)
        y = layers.dense(width, ("mlp", "embed"), name="fc2", kernel_init=scaled, **kw)(layers.activation(self.act)(y))
        x = self._residual(x, y, rate, deterministic, "norm2")
        return layers.constrain(x)

    def _gate(self, q):
        """BEATs' `gru_rel_pos` gate (B, heads, N, 1) from the raw queries q (B, N, heads, head_dim)."""
        logits = layers.dense(8, ("kv", None), name="grep_linear", dtype=jnp.float32, param_dtype=self.param_dtype,
                              kernel_init=nn.initializers.normal(0.02))(q.astype(jnp.float32))
        gate_a, gate_b = jnp.moveaxis(jax.nn.sigmoid(logits.reshape(logits.shape[:-1] + (2, 4)).sum(-1)), -1, 0)
        scale = self.param("grep_a", layers.logical(nn.initializers.ones, ("heads",)), (self.num_heads,),
                           self.param_dtype).astype(jnp.float32)
        gate = gate_a * (gate_b * scale - 1.0) + 2.0  # (B, N, heads)
        return gate.transpose(0, 2, 1)[..., None]

    def _residual(self, x, y, rate, deterministic, norm_name):
        y = layers.drop_path(self, y, rate, deterministic)
        summed = self.alpha * x.astype(jnp.float32) + y.astype(jnp.float32)
        return layers.Norm("layernorm", self.norm_eps, self.param_dtype, name=norm_name)(summed).astype(self.dtype)


class ConvPositionEmbedding(nn.Module):
    """GELU(grouped conv1d over the token axis), same length: BEATs' `pos_conv` (padding K//2, and the last output
    dropped when K is even). Kernel (K, D / groups, D) (torch Conv1d weight (D, D / groups, K) transposed)."""

    kernel_size: int = 128
    groups: int = 16
    act: str = "gelu"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k, groups, width = self.kernel_size, self.groups, x.shape[-1]
        if width % groups:
            raise ValueError(f"width {width} is not divisible by conv_pos_groups {groups}")
        init = nn.initializers.normal(math.sqrt(4.0 / (k * width)))  # BEATs' init (before its weight norm)
        kernel = self.param("kernel", layers.logical(init, (None, None, "embed")), (k, width // groups, width),
                            self.param_dtype)
        bias = self.param("bias", layers.logical(layers.zeros, ("embed",)), (width,), self.param_dtype)
        pad = (k // 2, k // 2 - 1 if k % 2 == 0 else k // 2)
        y = jax.lax.conv_general_dilated(x.astype(self.dtype), kernel.astype(self.dtype), window_strides=(1,),
                                         padding=(pad,), dimension_numbers=("NWC", "WIO", "NWC"),
                                         feature_group_count=groups)
        return layers.activation(self.act)(y + bias.astype(self.dtype))


class AudioTransformer(nn.Module):
    """fbank (B, T, F) [, audio_mask (B,)] -> {'tokens' (B, N, D), 'pooled' (B, E or D), 'mask' (B,) bool}.

    Sizes: rows of `AUDIO_SIZES` (`AudioTransformer(**AUDIO_SIZES['beats_iter3'], num_mel_bins=64)`).
    """

    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_mel_bins: int = 64
    patch_size: int = 16
    patch_embed_dim: int = 512
    conv_pos: int = 128
    conv_pos_groups: int = 16
    embed_dim: int = 0  # 0: pooled stays the width-D token mean (no `proj`)
    rel_pos_buckets: int = 0  # > 0: BEATs' relative position bias with this many buckets (module docstring)
    rel_pos_max_distance: int = 800
    rel_pos_gate: bool = True  # BEATs' gru_rel_pos: each layer scales the bias per query
    norm_eps: float = 1e-5
    act: str = "gelu"
    deep_norm: bool = True
    drop_path: float = 0.0
    scan: bool = False
    remat: str = "none"
    attn_impl: Optional[str] = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def num_tokens(self, num_frames: int) -> int:
        return (num_frames // self.patch_size) * (self.num_mel_bins // self.patch_size)

    @nn.compact
    def __call__(self, fbank, audio_mask=None, *, train: bool = False):
        b, t, f = fbank.shape
        p = self.patch_size
        if f != self.num_mel_bins or f % p:
            raise ValueError(f"fbank (B, T, F) has F = {f}; model expects num_mel_bins = {self.num_mel_bins}, "
                             f"a multiple of patch_size {p}")
        if t < p:
            raise ValueError(f"fbank has {t} frames, fewer than one patch ({p})")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        mask = jnp.ones((b,), bool) if audio_mask is None else jnp.asarray(audio_mask).reshape(b).astype(bool)
        # A masked row enters as zeros, so its (discarded) activations stay finite whatever the input holds.
        fbank = jnp.where(mask[:, None, None], fbank, 0).astype(self.dtype)

        t_grid, f_grid = t // p, f // p
        x = fbank[:, :t_grid * p].reshape(b, t_grid, p, f_grid, p).transpose(0, 1, 3, 2, 4)
        x = x.reshape(b, t_grid * f_grid, p * p)
        x = layers.dense(self.patch_embed_dim, (None, "embed"), name="patch_embed", use_bias=False, **kw)(x)
        x = layers.Norm("layernorm", self.norm_eps, self.param_dtype, name="patch_norm")(x).astype(self.dtype)
        if self.patch_embed_dim != self.width:
            x = layers.dense(self.width, (None, "embed"), name="post_extract_proj", **kw)(x)
        x = x + ConvPositionEmbedding(self.conv_pos, self.conv_pos_groups, self.act, name="pos_conv", **kw)(x)
        x = layers.Norm("layernorm", self.norm_eps, self.param_dtype, name="pos_norm")(x).astype(self.dtype)
        x = layers.constrain(x)

        alpha, beta = deep_norm_constants(self.depth) if self.deep_norm else (1.0, 1.0)
        block = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, alpha=alpha, init_gain=beta,
                     norm_eps=self.norm_eps, act=self.act, attn_impl=self.attn_impl,
                     rel_pos_gate=bool(self.rel_pos_buckets and self.rel_pos_gate), **kw)
        x, _ = layers.Transformer(self.depth, block, self.drop_path, self.scan, self.remat, (),
                                  block_cls=PostNormBlock, name="transformer")(x, deterministic=not train,
                                                                               bias=self._position_bias(x.shape[1]))
        tokens = jnp.where(mask[:, None, None], x, 0)
        pooled = tokens.astype(jnp.float32).mean(axis=1)
        if self.embed_dim:
            pooled = layers.dense(self.embed_dim, ("embed", None), name="proj", **kw)(pooled)
        pooled = jnp.where(mask[:, None], pooled, 0).astype(jnp.float32)
        return {"tokens": tokens, "pooled": pooled, "mask": mask}


    def _position_bias(self, length: int):
        """The shared relative position bias (heads, N, N) float32, or None without one."""
        if not self.rel_pos_buckets:
            return None
        if self.rel_pos_buckets % 4 or self.rel_pos_max_distance <= self.rel_pos_buckets // 4:
            raise ValueError(f"rel_pos_buckets={self.rel_pos_buckets} must be a multiple of 4 and "
                             f"rel_pos_max_distance={self.rel_pos_max_distance} larger than a quarter of it")
        table = self.param("rel_pos_bias", layers.logical(nn.initializers.normal(0.02), (None, "heads")),
                           (self.rel_pos_buckets, self.num_heads), self.param_dtype)
        buckets = relative_position_buckets(length, length, self.rel_pos_buckets, self.rel_pos_max_distance)
        return jnp.take(table.astype(jnp.float32), jnp.asarray(buckets), axis=0).transpose(2, 0, 1)


def abstract_param_count(model: AudioTransformer, num_frames: int = 64) -> int:
    """Parameter count by jax.eval_shape (nothing allocated)."""
    fbank = jnp.zeros((1, num_frames, model.num_mel_bins))
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), fbank))
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(nn.unbox(shapes["params"]))))

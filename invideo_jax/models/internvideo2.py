"""InternVideo2 vision encoder: the video ViT in its InternVideo2 settings, with the attention-pooling head.

Input (B, T, H, W, C) channels-last; tokens (t, h, w) after a CLS token. The trunk is `VisionTransformer` with
patch 14, tubelet 1, a CLS token, a learned `pos_embed` (1, 1 + T*h*w, D) initialised from the 3-D sin-cos table
(CLS position zero, then the time-major grid), pre-norm RMSNorm (eps 1e-6, scale only), qkv without bias,
QK-RMSNorm over the full width (before the head split), LayerScale, the MLP activation `act` and no final norm.
`clip_projector` pools the tokens to `clip_embed_dim` (768); a fine-tuning head adds `fc_norm` and `head`.

Images (stage 2's image-text data, the official `use_image`): an input of one frame (T = 1) runs as an image of h*w
patch tokens. Its positions: with `sep_image_video_pos_embed` the learned `img_pos_embed` (1, 1 + h*w, D) (initialised
from the one-frame sin-cos table, CLS position zero; the official 1B stage 2 and VideoChat2 set it), without it the CLS
position and the temporal mean of `pos_embed` (the official fallback).

`act`: the official MLP is flash-attn's FusedMLP (tanh-approximate GELU, 'gelu_tanh', the default) with
`use_fused_mlp=True`, which every released checkpoint was trained with (the single_modality builders' default, the
stage-2 and CLIP configs); with `use_fused_mlp=False` (the code path without flash-attn) it is `nn.GELU`, exact erf
GELU: 'gelu'. The checkpoint does not record it: set `act` to how the weights were trained.

Parameter tree; the official names (single_modality `InternVideo2`, stage-2 prefix `vision_encoder.`) in brackets:

  encoder/patch_embed/proj/kernel (1, 14, 14, 3, D), bias                   [patch_embed.proj.weight (D, 3, 1, 14, 14)]
  encoder/cls_token (1, 1, D), encoder/pos_embed (1, 1 + T*h*w, D)            [cls_token, pos_embed]
  encoder/img_pos_embed (1, 1 + h*w, D) (sep_image_video_pos_embed)          [img_pos_embed]
  encoder/transformer/blocks_{i}/ (scan: blocks/, leading layer axis)         [blocks.{i}.]
    norm1/scale, norm2/scale                                                  [norm1.weight, norm2.weight]
    attn/qkv/kernel (D, 3, heads, hd), attn/q_norm/scale, attn/k_norm/scale   [attn.qkv.weight, attn.{q,k}_norm]
    attn/proj/kernel (heads, hd, D), bias; ls1/gamma, ls2/gamma               [attn.proj, ls1.gamma, ls2.gamma]
    mlp/fc1, mlp/fc2                                                          [mlp.fc1, mlp.fc2]
  clip_projector/norm1_{q,k,v}/scale, bias                                    [clip_projector.norm1_{q,k,v}]
  clip_projector/cross_attn/{q,k,v}/kernel (D, pool_heads, D/pool_heads),     [cross_attn.{q,k,v}.weight,
    bias (pool_heads, D/pool_heads); cross_attn/proj (.., clip_embed_dim)      cross_attn.{q,k,v}_bias, proj]
  fc_norm, head (with num_classes)                                            [fc_norm, head]

Outputs: `tokens` (B, 1 + N, D) of the last block (CLS first; the stage-2 `x_vis`), `layers` (return_layers),
`pooled` (B, clip_embed_dim), `logits` (B, num_classes) with a head.

Differences from the official code: dense kernels start from Xavier-uniform (official: truncated normal 0.02;
both then get the official depth scaling, `layers.Transformer.depth_scaled_init`); LayerScale multiplies in the
compute dtype (official: float32). The official `head_drop_path_rate` builds a DropPath in the pooling block that its
forward never calls, so it has no counterpart here.
"""
import math
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from invideo_jax.models import layers, posembed
from invideo_jax.models.vit import VisionTransformer

ACTIVATIONS = ("gelu_tanh", "gelu")  # official use_fused_mlp=True (flash-attn FusedMLP) / False (nn.GELU)


class AttentionPool(nn.Module):
    """`AttentionPoolingBlock`: the mean of all tokens (CLS included) attends to every token; (B, N, D) -> (B, out).

    Separate LayerNorms for the query, key and value inputs; separate q, k, v projections with biases; `num_heads`
    heads of width D / num_heads; output projection to `out_dim`. No residual, no MLP.
    """

    num_heads: int = 16
    out_dim: int = 768
    norm_eps: float = 1e-5
    attn_impl: Optional[str] = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        def norm(name, y):
            return layers.Norm("layernorm", self.norm_eps, self.param_dtype, name=name)(y)

        query = x.astype(jnp.float32).mean(axis=1, keepdims=True)
        attention = layers.Attention(self.num_heads, "qkv", out_features=self.out_dim, attn_impl=self.attn_impl,
                                     dtype=self.dtype, param_dtype=self.param_dtype, name="cross_attn")
        return attention(norm("norm1_q", query), context=norm("norm1_k", x), value=norm("norm1_v", x))[:, 0]


class InternVideo2(nn.Module):
    """Patch embed -> +pos -> [gather visible] -> [+cls] -> blocks -> clip_projector -> [fc_norm -> head].

    Sizes are rows of `invideo_jax.sizes.INTERNVIDEO2_SIZES`; `invideo_jax.sizes.internvideo2_encoder` gives the kwargs.
    The blocks' output projections start with the official depth scaling (`layers.Transformer.depth_scaled_init`).
    """

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    patch_size: int = 14
    tubelet_size: int = 1
    num_frames: int = 8
    image_size: int = 224
    sep_image_video_pos_embed: bool = False  # images (T = 1) take `img_pos_embed` (module docstring)
    layer_scale: float = 1e-5
    norm_eps: float = 1e-6
    act: str = "gelu_tanh"
    attn_pool_heads: int = 16
    clip_embed_dim: int = 768
    pool_norm_eps: float = 1e-5
    num_classes: int = 0
    fc_norm_eps: float = 1e-5
    head_init_scale: float = 0.001
    head_dropout: float = 0.0
    drop_path: float = 0.0
    scan: bool = False
    remat: str = "none"
    attn_impl: Optional[str] = None
    return_layers: tuple = ()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @property
    def grid(self) -> tuple:
        """(t, h, w) token grid of `pos_embed` (after the CLS position)."""
        return (self.num_frames // self.tubelet_size, self.image_size // self.patch_size,
                self.image_size // self.patch_size)

    def encoder_kwargs(self) -> dict:
        """The `VisionTransformer` settings of the InternVideo2 trunk."""
        return dict(
            width=self.width, depth=self.depth, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
            patch_size=self.patch_size, tubelet_size=self.tubelet_size, num_frames=self.num_frames,
            image_size=self.image_size, pos_embed="learned_sincos_3d",
            image_pos_embed="separate" if self.sep_image_video_pos_embed else "mean", cls_token=True, qkv_bias="none",
            qk_norm=True, norm="rmsnorm", norm_eps=self.norm_eps, act=self.act, layer_scale=self.layer_scale,
            final_norm=False, pool="none", num_classes=0, drop_path=self.drop_path, scan=self.scan,
            remat=self.remat, attn_impl=self.attn_impl, return_layers=tuple(self.return_layers), depth_scaled_init=True,
            dtype=self.dtype, param_dtype=self.param_dtype)

    @nn.compact
    def __call__(self, video, visible_idx=None, *, train: bool = False):
        """video (B, T, H, W, C) (T = num_frames, or 1: an image); visible_idx (B, N_vis) keeps those patch tokens
        (the CLS token always)."""
        if self.act not in ACTIVATIONS:
            raise ValueError(f"InternVideo2.act={self.act!r}: expected one of {ACTIVATIONS} (module docstring)")
        out = VisionTransformer(name="encoder", **self.encoder_kwargs())(video, visible_idx, train=train)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        pooled = AttentionPool(self.attn_pool_heads, self.clip_embed_dim, self.pool_norm_eps, self.attn_impl,
                               name="clip_projector", **kw)(out["tokens"])
        out["pooled"] = pooled
        if self.num_classes:
            x = layers.Norm("layernorm", self.fc_norm_eps, self.param_dtype, name="fc_norm")(pooled)
            x = nn.Dropout(self.head_dropout, deterministic=not train)(x)
            head_init = layers.scaled(nn.initializers.truncated_normal(0.02), self.head_init_scale)
            out["logits"] = layers.dense(self.num_classes, ("embed", "classes"), name="head", kernel_init=head_init,
                                         **kw)(x).astype(jnp.float32)
        return out


def resize_pos_embed(params, model: InternVideo2, src_frames: int, src_image_size: Optional[int] = None):
    """`params` (ours, e.g. converted from weights trained with other frames / resolution) with `encoder/pos_embed`
    resampled to `model`'s grid: temporal linear, then spatial bicubic (PyTorch `interpolate`, align_corners=False,
    as the official loaders); the CLS position is kept. Without `src_image_size`, the source grid is square with
    side sqrt(tokens / t), as the official loaders infer it.

    For Orbax checkpoints, `config.init_from.pos_embed_grid_{src,dst}` does the same while restoring.
    """
    pe = params["encoder"]["pos_embed"]
    t = src_frames // model.tubelet_size
    if src_image_size is None:
        side = math.isqrt((pe.shape[-2] - 1) // max(t, 1))
    else:
        side = src_image_size // model.patch_size
    src_grid = (t, side, side)
    if pe.shape[-2] != 1 + math.prod(src_grid):
        raise ValueError(f"encoder/pos_embed {tuple(pe.shape)} does not hold a CLS position and a {src_grid} grid "
                         f"(src_frames={src_frames}, src_image_size={src_image_size})")
    new = posembed.resample_pos_embed(np.asarray(pe), src_grid, model.grid)
    return {**params, "encoder": {**params["encoder"], "pos_embed": jnp.asarray(new, pe.dtype)}}

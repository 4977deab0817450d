"""The video ViT encoder: VideoMAE / VideoMAE V2 and InternVideo2 flavours are settings of one module.

Input (B, T, H, W, C) channels-last. Tokens are ordered (t, h, w). `visible_idx` (B, N_vis) runs the encoder on a
gathered subset of tokens (static count), as masked pre-training does.

Images (`image_pos_embed`, learned tables with a CLS position only): an input of one tubelet of frames (T =
tubelet_size) runs as an image, its positions from a one-frame table: 'mean' (the CLS position and the temporal mean
of `pos_embed`) or 'separate' (a learned `img_pos_embed` (1, 1 + h*w, D), initialised from the one-frame sin-cos
table); InternVideo2 stage 2's `use_image` without / with `sep_image_video_pos_embed`. 'none': only T = num_frames.
"""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from invideo_jax.models import layers

POS_EMBED_KINDS = ("sincos_1d", "learned_sincos_3d", "none")
IMAGE_POS_EMBED_KINDS = ("none", "mean", "separate")
POOL_KINDS = ("none", "mean", "cls")


class VisionTransformer(nn.Module):
    """Patch embed -> (+pos) -> [gather visible] -> [+cls] -> blocks -> [norm] -> [pool -> fc_norm -> head]."""

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    patch_size: int = 16
    tubelet_size: int = 2
    num_frames: int = 16
    image_size: int = 224
    pos_embed: str = "sincos_1d"
    image_pos_embed: str = "none"  # module docstring
    cls_token: bool = False
    qkv_bias: str = "qv"
    qk_norm: bool = False
    norm: str = "layernorm"
    norm_eps: float = 1e-6
    act: str = "gelu"
    layer_scale: float = 0.0
    final_norm: bool = True
    pool: str = "none"
    fc_norm_eps: float = 1e-6
    num_classes: int = 0
    head_init_scale: float = 0.001
    head_dropout: float = 0.0
    drop_path: float = 0.0
    scan: bool = False
    remat: str = "none"
    attn_impl: Optional[str] = None
    return_layers: tuple = ()
    depth_scaled_init: bool = False  # layers.Transformer.depth_scaled_init
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @property
    def grid(self) -> tuple:
        return (self.num_frames // self.tubelet_size, self.image_size // self.patch_size,
                self.image_size // self.patch_size)

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @nn.compact
    def __call__(self, video, visible_idx=None, *, train: bool = False):
        """Returns a dict: `tokens` (B, N, D), `layers` (if return_layers), `pooled`, `logits` (if a head)."""
        if self.pos_embed not in POS_EMBED_KINDS:
            raise ValueError(f"pos_embed must be one of {POS_EMBED_KINDS}, got {self.pos_embed!r}")
        if self.pool not in POOL_KINDS:
            raise ValueError(f"pool must be one of {POOL_KINDS}, got {self.pool!r}")
        if self.image_pos_embed not in IMAGE_POS_EMBED_KINDS:
            raise ValueError(f"image_pos_embed must be one of {IMAGE_POS_EMBED_KINDS}, got {self.image_pos_embed!r}")
        if self.image_pos_embed != "none" and not (self.pos_embed == "learned_sincos_3d" and self.cls_token):
            raise ValueError(f"image_pos_embed={self.image_pos_embed!r} needs pos_embed='learned_sincos_3d' and a "
                             "cls_token")
        image = self.image_pos_embed != "none" and video.shape[1] == self.tubelet_size
        expected = (self.tubelet_size if image else self.num_frames, self.image_size, self.image_size)
        if tuple(video.shape[1:4]) != expected:
            raise ValueError(f"video (B, T, H, W, C) has T, H, W = {tuple(video.shape[1:4])}; model expects {expected}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = layers.PatchEmbed(self.width, self.patch_size, self.tubelet_size, name="patch_embed", **kw)(
            video.astype(self.dtype))
        pos = self._position_table(image).astype(x.dtype)
        num_prefix = pos.shape[1] - x.shape[1]
        x = x + pos[:, num_prefix:]
        if visible_idx is not None:
            x = jnp.take_along_axis(x, visible_idx[..., None], axis=1)
        if self.cls_token:
            cls = self.param("cls_token", layers.logical(nn.initializers.normal(0.02), (None, None, "embed")),
                             (1, 1, self.width), self.param_dtype)
            cls = cls.astype(x.dtype)
            if num_prefix:  # learned tables store the cls position first; fixed tables have none
                cls = cls + pos[:, :num_prefix]
            x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)), x], axis=1)
        x = layers.constrain(x)
        block = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, qkv_bias=self.qkv_bias, qk_norm=self.qk_norm,
                     norm=self.norm, norm_eps=self.norm_eps, act=self.act, layer_scale=self.layer_scale,
                     attn_impl=self.attn_impl, **kw)
        x, hidden = layers.Transformer(self.depth, block, self.drop_path, self.scan, self.remat, self.return_layers,
                                       depth_scaled_init=self.depth_scaled_init, name="transformer")(
            x, deterministic=not train)
        if self.final_norm:
            x = layers.Norm(self.norm, self.norm_eps, self.param_dtype, name="norm")(x)
        out = {"tokens": x}
        if hidden is not None:
            out["layers"] = hidden
        if self.pool == "none":
            return out
        pooled = x[:, 0] if self.pool == "cls" else x[:, int(self.cls_token):].mean(axis=1)
        if self.pool == "mean":
            pooled = layers.Norm("layernorm", self.fc_norm_eps, self.param_dtype, name="fc_norm")(pooled)
        out["pooled"] = pooled
        if self.num_classes:
            pooled = nn.Dropout(self.head_dropout, deterministic=not train)(pooled)
            head_init = layers.scaled(nn.initializers.truncated_normal(0.02), self.head_init_scale)
            out["logits"] = layers.dense(self.num_classes, ("embed", "classes"), name="head", kernel_init=head_init,
                                         **kw)(pooled).astype(jnp.float32)
        return out

    def _position_table(self, image: bool = False):
        """(1, N, D) fixed table, or the learned (1, [1 +] N, D) `pos_embed` (cls position first, zero-initialised);
        with `image`, the one-frame table of `image_pos_embed` (1, 1 + h*w, D)."""
        if self.pos_embed == "none":
            return jnp.zeros((1, self.num_patches, self.width))
        if self.pos_embed == "sincos_1d":
            return jnp.asarray(layers.sincos_1d_interleaved(self.num_patches, self.width))[None]
        table = self._learned("pos_embed", self.grid)
        if self.image_pos_embed == "separate":
            image_table = self._learned("img_pos_embed", (1, *self.grid[1:]))  # created for videos too
            if image:
                return image_table
        if image:
            t, h, w = self.grid
            frames = table[:, 1:].reshape(1, t, h * w, self.width)
            return jnp.concatenate([table[:, :1], frames.mean(axis=1)], axis=1)
        return table

    def _learned(self, name: str, grid: tuple):
        """A learned (1, [1 +] t*h*w, D) table `name` initialised from the 3-D sin-cos table of `grid`."""
        table = jnp.asarray(layers.sincos_3d(*grid, self.width))
        if self.cls_token:
            table = jnp.concatenate([jnp.zeros((1, self.width)), table])
        return self.param(name, layers.logical(lambda *_: table[None], (None, None, "embed")), None)

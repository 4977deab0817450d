"""VideoMAE / VideoMAE V2 masked autoencoder: encoder on visible tokens, light decoder predicting target tokens.

V1: targets = the encoder-masked tokens. V2 (dual masking): targets = the decoder-kept tokens; the loss then weights
only those that were also masked for the encoder (see `invideo_jax.losses.reconstruction_loss`). The decoder's blocks
take the encoder's qkv-bias style and LayerScale, as the official builders pass both `qkv_bias` and `init_values`
to encoder and decoder.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from invideo_jax.models import layers
from invideo_jax.models.vit import VisionTransformer


class Decoder(nn.Module):
    depth: int
    num_heads: int
    mlp_dim: int
    out_dim: int
    norm_eps: float = 1e-6
    qkv_bias: str = "qv"
    layer_scale: float = 0.0
    scan: bool = False
    remat: str = "none"
    attn_impl: Any = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, num_targets: int, *, train: bool = False):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        block = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, norm_eps=self.norm_eps, qkv_bias=self.qkv_bias,
                     layer_scale=self.layer_scale, attn_impl=self.attn_impl, **kw)
        x, _ = layers.Transformer(self.depth, block, 0.0, self.scan, self.remat, name="transformer")(
            x, deterministic=not train)
        x = layers.Norm("layernorm", self.norm_eps, self.param_dtype, name="norm")(x[:, -num_targets:])
        return layers.dense(self.out_dim, ("embed", None), name="head", **kw)(x).astype(jnp.float32)


class VideoMAE(nn.Module):
    encoder: dict  # VisionTransformer keyword arguments
    decoder_width: int
    decoder_depth: int
    decoder_heads: int
    decoder_mlp_dim: int

    @nn.compact
    def __call__(self, video, visible_idx, target_idx, *, train: bool = False):
        """video (B,T,H,W,C); visible_idx (B,N_vis), target_idx (B,N_tgt) ascending -> predictions (B,N_tgt,P)."""
        enc_cfg = dict(self.encoder, pool="none", num_classes=0, final_norm=True)
        encoder = VisionTransformer(name="encoder", **enc_cfg)
        x = encoder(video, visible_idx, train=train)["tokens"]
        kw = dict(dtype=encoder.dtype, param_dtype=encoder.param_dtype)
        x = layers.dense(self.decoder_width, ("embed", None), name="encoder_to_decoder", use_bias=False, **kw)(x)
        pos = jnp.asarray(layers.sincos_1d_interleaved(encoder.num_patches, self.decoder_width))[None]
        pos_visible = jnp.take_along_axis(pos, visible_idx[..., None], axis=1)
        pos_target = jnp.take_along_axis(pos, target_idx[..., None], axis=1)
        mask_token = self.param("mask_token", layers.logical(nn.initializers.truncated_normal(0.02),
                                                             (None, None, "embed")),
                                (1, 1, self.decoder_width), encoder.param_dtype)
        x = jnp.concatenate([x + pos_visible.astype(x.dtype),
                             (mask_token + pos_target).astype(x.dtype)], axis=1)
        out_dim = encoder.tubelet_size * encoder.patch_size ** 2 * video.shape[-1]
        decoder = Decoder(self.decoder_depth, self.decoder_heads, self.decoder_mlp_dim, out_dim, encoder.norm_eps,
                          encoder.qkv_bias, encoder.layer_scale, encoder.scan, encoder.remat, encoder.attn_impl,
                          name="decoder", **kw)
        return decoder(x, target_idx.shape[1], train=train)

"""InternVideo (v1) stage 3: two frozen encoders coordinated by cross-model attention.

The masked video encoder (VideoMAE `VisionTransformer`) and the multimodal encoder (`UniFormerV2`) run side by side;
Flamingo-style gated cross-attention blocks let one model's feature (a single query token) attend to the other's
tokens. The paper's cross-model attention is MHCA + FFN inserted in a few late blocks; the tanh gates (zero at init,
so the fused model starts as the two encoders) are this port's choice — see reference/internvideo.md section 1.6.

Parameter tree:

  masked/        a VisionTransformer (num_classes 0): same subtree as a standalone encoder
  multimodal/    a UniFormerV2 (num_classes 0): same subtree as a standalone model (`backbone/...`)
  fusion_{j}/    GatedCrossAttention: the multimodal clip feature attends to the masked encoder's layer
                 `fusion_layers[j]` tokens (cascaded over j)
  fusion_masked_{j}/  (direction 'symmetric') the masked pooled feature attends to the multimodal final tokens
  head_multimodal/, head_masked/ (symmetric)   LayerNorm -> dense; logits are the mean of the heads' logits

`freeze_encoders` runs the encoders in inference mode and stops gradients at the masked encoder's outputs and at the
multimodal encoder's trunk, so that its query token (`temporal_cls_token`, trained in the paper) still learns; to
keep the rest fixed, freeze it in the optimiser: `masked/` and `multimodal/backbone/(?!temporal_cls_token$)`.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from invideo_jax.models import layers
from invideo_jax.models.layers import logical, zeros
from invideo_jax.models.uniformerv2 import ClassifierHead, UniFormerV2
from invideo_jax.models.vit import VisionTransformer

DIRECTIONS = ("multimodal_queries", "symmetric")


class GatedCrossAttention(nn.Module):
    """x + tanh(attn_gate) * attn(norm1(x), norm_ctx(ctx_proj(context))), then x + tanh(ff_gate) * mlp(norm2(x)).

    Both gates start at 0, so the block is the identity at init. `ctx_proj` (context width -> x's width) exists
    only when the widths differ.
    """

    num_heads: int
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        width = x.shape[-1]
        if context.shape[-1] != width:
            context = layers.dense(width, ("embed", None), name="ctx_proj", **kw)(context)
        context = layers.Norm("layernorm", self.norm_eps, self.param_dtype, name="norm_ctx")(context)
        attn_gate = self.param("attn_gate", logical(zeros, ()), (), self.param_dtype)
        ff_gate = self.param("ff_gate", logical(zeros, ()), (), self.param_dtype)

        y = layers.Norm("layernorm", self.norm_eps, self.param_dtype, name="norm1")(x)
        y = layers.Attention(self.num_heads, "qkv", name="attn", **kw)(y.astype(self.dtype),
                                                                     context=context.astype(self.dtype))
        x = x + jnp.tanh(attn_gate).astype(y.dtype) * y
        y = layers.Norm("layernorm", self.norm_eps, self.param_dtype, name="norm2")(x)
        y = layers.Mlp(int(width * self.mlp_ratio), name="mlp", **kw)(y.astype(self.dtype))
        return x + jnp.tanh(ff_gate).astype(y.dtype) * y


class FusedVideoModel(nn.Module):
    """Masked + multimodal encoders fused by gated cross-model attention; input (B, T, H, W, 3) for both.

    masked: VisionTransformer kwargs (pool defaults to 'mean'; return_layers and num_classes are set here).
    multimodal: UniFormerV2 kwargs (num_classes is set to 0 here).
    fusion_layers: masked-encoder layer indices, one fusion block per index, cascaded.
    Returns `multimodal_features`, `masked_features` (fused), their `*_unfused` counterparts and, with
    num_classes, `logits`.
    """

    masked: dict
    multimodal: dict
    fusion_layers: tuple
    direction: str = "multimodal_queries"
    num_heads: int = 8
    mlp_ratio: float = 4.0
    num_classes: int = 0
    head_dropout: float = 0.0
    freeze_encoders: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def check(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        depth = self.masked["depth"]
        if not self.fusion_layers or any(not 0 <= i < depth for i in self.fusion_layers):
            raise ValueError(f"fusion_layers {tuple(self.fusion_layers)} must be a non-empty sequence of masked "
                             f"encoder layer indices in [0, {depth})")
        if self.masked.get("pool", "mean") == "none":
            raise ValueError("the masked encoder needs pool 'mean' or 'cls': its pooled feature is its query")

    @nn.compact
    def __call__(self, video, *, train: bool = False):
        self.check()
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        encoders_train = train and not self.freeze_encoders
        masked_kw = {"pool": "mean", **self.masked, "return_layers": tuple(self.fusion_layers), "num_classes": 0}
        masked = VisionTransformer(**masked_kw, name="masked")(video, train=encoders_train)
        multimodal = UniFormerV2(**{**self.multimodal, "num_classes": 0,
                                    "stop_backbone_gradient": self.freeze_encoders}, name="multimodal")(
            video, train=encoders_train)
        if self.freeze_encoders:
            masked = jax.lax.stop_gradient(masked)

        def fuse(query, contexts, prefix):
            x = query[:, None]
            for j, context in enumerate(contexts):
                x = GatedCrossAttention(self.num_heads, self.mlp_ratio, name=f"{prefix}_{j}", **kw)(x, context)
            return x[:, 0]

        out = {"multimodal_features_unfused": multimodal["features"], "masked_features_unfused": masked["pooled"]}
        out["multimodal_features"] = fuse(multimodal["features"], masked["layers"], "fusion")
        out["masked_features"] = masked["pooled"]
        heads = {"multimodal": out["multimodal_features"]}
        if self.direction == "symmetric":
            tokens = multimodal["tokens"]
            tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])
            out["masked_features"] = fuse(masked["pooled"], [tokens] * len(self.fusion_layers), "fusion_masked")
            heads["masked"] = out["masked_features"]
        if self.num_classes:
            logits = [ClassifierHead(self.num_classes, self.head_dropout, name=f"head_{k}", **kw)(v, train)
                      for k, v in heads.items()]
            out["logits"] = sum(logits) / len(logits)
        return out

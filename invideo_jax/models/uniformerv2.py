"""UniFormerV2: a CLIP ViT with local UniBlocks (temporal LMHRA) inside its blocks and global UniBlocks (one
learnable query cross-attending to every token of chosen layers, cascaded), fused with the frames' CLS tokens.

Input (B, T, H, W, 3) channels-last. Tokens are per frame (1 + h*w, CLS first); attention is per frame. Output
dict: `features` (B, C), `frame_cls` (B, T', C) and `tokens` (B, T', 1 + h*w, C) of the last backbone layer
(T' = T/2 with temporal downsampling), `logits` (B, num_classes) with a head.

Parameter tree (a checkpoint converter is written against it); the official names (prefix `backbone.`) in brackets:

  backbone/
    conv1/kernel (k_t, p, p, 3, C) DHWIO, no bias                               [conv1.weight (C, 3, k_t, p, p)]
    class_embedding (C,), positional_embedding (1 + h*w, C), ln_pre              [same names]
    transformer/blocks_{i}/ (scan: transformer/blocks/, leading layer axis)      [transformer.resblocks.{i}.]
      norm1, norm2                                                               [ln_1, ln_2]
      attn/qkv/kernel (C, 3, heads, hd), bias (3, heads, hd); attn/proj          [attn.in_proj_*, attn.out_proj]
      mlp/fc1, mlp/fc2                                                           [mlp.c_fc, mlp.c_proj]
      lmhra{1,2}/ (local_blocks): bn, down (C, C'), conv (3, 1, 1, 1, C'), up    [lmhra{1,2}.pos_embed.{0,1,2,3}]
    temporal_cls_token (1, 1, C)                                                 [transformer.temporal_cls_token]
    dpe_{j}/kernel (3, 3, 3, 1, C), bias                                         [transformer.dpe.{j}]
    dec_{j}/ln_1, ln_2, ln_3, attn/q (C, heads, hd), attn/kv (C, 2, heads, hd),
      attn/proj, mlp/fc1, mlp/fc2                                                [transformer.dec.{j}.]
    balance (C,), absent when frozen                                             [transformer.balance]
  head/norm, head/dense (C, classes)                                             [transformer.proj.0, proj.2]
  batch_stats: backbone/transformer/blocks_{i}/lmhra{1,2}/bn/{mean, var}         [pos_embed.0.running_*]

Global block j runs on the output of backbone layer `global_layers[j]`; the backbone stream is not modified.
`frozen` only drops `balance` (features = the query); freezing the backbone itself is `optim.frozen`, and
`stop_backbone_gradient` saves the frozen trunk's backward pass (gradients still reach the query path).
Training-only differences from the official code: drop-path drops whole frames (attention, MLP) or clips (LMHRA,
global blocks), and BatchNorm updates its running variance with the biased batch variance.
"""
import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from invideo_jax.models import layers
from invideo_jax.models.layers import logical, zeros

_CONV_INIT = nn.initializers.lecun_normal()


class DepthwiseConv(nn.Module):
    """Depthwise 3-D conv with 'same' padding on (B, T, H, W, C), params as `nn.Conv`'s: kernel (k_t, k_h, k_w, 1, C).

    Computed as a sum of shifted copies: XLA's grouped convolution is about 25x slower on CPU. The kernel is small
    and replicated: sharded along C, XLA reshards the activations instead.
    """

    kernel_size: tuple
    axis_name: str
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        kernel = self.param("kernel", logical(_CONV_INIT, (None,) * 5), (*self.kernel_size, 1, width),
                            self.param_dtype).astype(self.dtype)
        bias = self.param("bias", logical(zeros, (self.axis_name,)), (width,), self.param_dtype)
        x = x.astype(self.dtype)
        padded = jnp.pad(x, [(0, 0)] + [(k // 2, k // 2) for k in self.kernel_size] + [(0, 0)])
        t, h, w = x.shape[1:4]
        out = sum(padded[:, i:i + t, j:j + h, k:k + w] * kernel[i, j, k, 0]
                  for i, j, k in np.ndindex(*self.kernel_size))
        return out + bias.astype(self.dtype)


class LocalMHRA(nn.Module):
    """Local UniBlock branch on (B, T, h, w, C): BatchNorm -> 1x1x1 down -> depthwise temporal conv -> 1x1x1 up."""

    reduction: float = 1.5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        width = x.shape[-1]
        hidden = int(width // self.reduction)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         scale_init=logical(layers.ones, ("norm",)), bias_init=logical(zeros, ("norm",)),
                         param_dtype=self.param_dtype, name="bn")(x)
        x = layers.dense(hidden, ("embed", "mlp"), name="down", **kw)(x)
        x = DepthwiseConv((3, 1, 1), "mlp", name="conv", **kw)(x)
        return layers.dense(width, ("mlp", "embed"), name="up", kernel_init=zeros, **kw)(x)


class UniBlock(layers.Block):
    """A CLIP block with a local UniBlock before attention (`lmhra1`) and before the MLP (`lmhra2`).

    x: (B*T, 1 + h*w, C), the frames of a clip adjacent; LMHRA acts on the patch tokens, CLS is untouched.
    """

    grid: tuple = (1, 1, 1)  # (T, h, w)
    local_reduction: float = 1.5

    @nn.compact
    def __call__(self, x, rate, deterministic: bool):
        x = self._local(x, "lmhra1", rate, deterministic)
        x = x + self._attention(x, rate, deterministic)
        x = self._local(x, "lmhra2", rate, deterministic)
        x = x + self._mlp(x, rate, deterministic)
        return layers.constrain(x.astype(self.dtype))

    def _local(self, x, name, rate, deterministic):
        patches = x[:, 1:].reshape((-1,) + tuple(self.grid) + (x.shape[-1],))
        y = LocalMHRA(self.local_reduction, self.dtype, self.param_dtype, name=name)(patches, not deterministic)
        patches = patches + layers.drop_path(self, y, rate, deterministic)  # dropped per clip
        return jnp.concatenate([x[:, :1], patches.reshape(x[:, 1:].shape).astype(x.dtype)], axis=1)


class GlobalBlock(nn.Module):
    """Global UniBlock decoder: q + attn(ln_1(q), ln_3(context)), then + mlp(ln_2(q)) with dropout inside the MLP."""

    num_heads: int
    mlp_dim: int
    mlp_dropout: float = 0.5
    norm_eps: float = 1e-5
    act: str = "quick_gelu"
    attn_impl: Optional[str] = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, q, context, rate, deterministic: bool):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm = lambda name: layers.Norm("layernorm", self.norm_eps, self.param_dtype, name=name)
        y = layers.Attention(self.num_heads, "qkv", attn_impl=self.attn_impl, proj_init=zeros, name="attn", **kw)(
            norm("ln_1")(q), context=norm("ln_3")(context))
        q = q + layers.drop_path(self, y, rate, deterministic)
        y = layers.Mlp(self.mlp_dim, self.act, self.mlp_dropout, out_init=zeros, name="mlp", **kw)(
            norm("ln_2")(q), deterministic)
        return (q + layers.drop_path(self, y, rate, deterministic)).astype(self.dtype)


class UniFormerV2Backbone(nn.Module):
    """Everything but the classification head (the `backbone` subtree); see the module docstring."""

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    patch_size: int = 16
    image_size: int = 224
    num_frames: int = 8
    temporal_downsample: bool = False
    local_blocks: bool = False
    local_reduction: float = 1.5
    global_layers: tuple = ()
    global_mlp_dropout: float = 0.5
    drop_path: float = 0.0
    global_drop_path: float = 0.0
    frozen: bool = False
    stop_backbone_gradient: bool = False
    norm_eps: float = 1e-5
    act: str = "quick_gelu"
    scan: bool = False
    remat: str = "none"
    attn_impl: Optional[str] = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @property
    def grid(self) -> tuple:
        side = self.image_size // self.patch_size
        return (self.num_frames // 2 if self.temporal_downsample else self.num_frames, side, side)

    def check(self, video_shape):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
        if self.temporal_downsample and self.num_frames % 2:
            raise ValueError(f"temporal_downsample needs an even num_frames, got {self.num_frames}")
        layers_ = tuple(self.global_layers)
        if any(not 0 <= i < self.depth for i in layers_) or list(layers_) != sorted(set(layers_)):
            raise ValueError(f"global_layers {layers_} must be increasing backbone layer indices in [0, {self.depth})")
        if self.frozen and not layers_:
            raise ValueError("frozen=True needs global_layers: its features are the global query")
        if self.local_blocks and not 1 <= self.local_reduction <= self.width:
            raise ValueError(f"local_reduction {self.local_reduction} must be in [1, width={self.width}]")
        expected = (self.num_frames, self.image_size, self.image_size, 3)
        if tuple(video_shape[1:]) != expected:
            raise ValueError(f"video (B, T, H, W, 3) has shape {tuple(video_shape)}; the model expects T, H, W = "
                             f"{expected[:3]} with 3 channels")

    @nn.compact
    def __call__(self, video, *, train: bool = False):
        self.check(video.shape)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, (t, h, w), c, p = video.shape[0], self.grid, self.width, self.patch_size
        k_t, stride_t = (3, 2) if self.temporal_downsample else (1, 1)
        x = nn.Conv(c, (k_t, p, p), (stride_t, p, p), padding=[(k_t // 2,) * 2, (0, 0), (0, 0)], use_bias=False,
                    kernel_init=logical(_CONV_INIT, (None, None, None, None, "embed")), name="conv1", **kw)(
            video.astype(self.dtype))
        init = nn.initializers.normal(c ** -0.5)
        cls = self.param("class_embedding", logical(init, ("embed",)), (c,), self.param_dtype)
        pos = self.param("positional_embedding", logical(init, (None, "embed")), (1 + h * w, c), self.param_dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b * t, 1, c)), x.reshape(b * t, h * w, c)], 1)
        x = layers.Norm("layernorm", self.norm_eps, self.param_dtype, name="ln_pre")(x + pos.astype(x.dtype))
        x = layers.constrain(x.astype(self.dtype))

        block = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, qkv_bias="qkv", norm_eps=self.norm_eps,
                     act=self.act, attn_impl=self.attn_impl, **kw)
        if self.local_blocks:
            block.update(grid=self.grid, local_reduction=self.local_reduction)
        x, hidden = layers.Transformer(self.depth, block, self.drop_path, self.scan, self.remat,
                                       tuple(self.global_layers),
                                       block_cls=UniBlock if self.local_blocks else layers.Block,
                                       name="transformer")(x, deterministic=not train)
        if self.stop_backbone_gradient:  # a frozen trunk: only the global-UniBlock query path gets gradients
            x, hidden = jax.lax.stop_gradient((x, hidden))
        tokens = x.reshape(b, t, 1 + h * w, c)
        out = {"tokens": tokens, "frame_cls": tokens[:, :, 0], "features": tokens[:, :, 0].mean(axis=1)}
        if not self.global_layers:
            return out

        query = self.param("temporal_cls_token", logical(zeros, (None, None, "embed")), (1, 1, c), self.param_dtype)
        query = jnp.broadcast_to(query.astype(self.dtype), (b, 1, c))
        rates = np.linspace(0.0, self.global_drop_path, len(self.global_layers))
        for j in range(len(self.global_layers)):
            layer = hidden[j].reshape(b, t, 1 + h * w, c)
            patches = layer[:, :, 1:].reshape(b, t, h, w, c)
            patches = patches + DepthwiseConv((3, 3, 3), "embed", name=f"dpe_{j}", **kw)(patches)
            context = jnp.concatenate([layer[:, :, :1], patches.reshape(b, t, h * w, c)], axis=2)
            query = GlobalBlock(self.num_heads, self.mlp_dim, self.global_mlp_dropout, self.norm_eps, self.act,
                                self.attn_impl, name=f"dec_{j}", **kw)(
                query, context.reshape(b, t * (1 + h * w), c), float(rates[j]) if self.global_drop_path else None,
                not train)
        query = query[:, 0]
        if self.frozen:
            out["features"] = query
        else:
            weight = jax.nn.sigmoid(self.param("balance", logical(zeros, ("embed",)), (c,), self.param_dtype))
            out["features"] = (1 - weight) * query + weight * out["features"]
        return out


class UniFormerV2(UniFormerV2Backbone):
    """`backbone` (UniFormerV2Backbone with the same fields) then, if num_classes > 0, `head`:
    LayerNorm -> dropout -> dense on the fused features."""

    num_classes: int = 0
    head_dropout: float = 0.5

    @nn.compact
    def __call__(self, video, *, train: bool = False):
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(UniFormerV2Backbone)
                  if f.name not in ("parent", "name")}
        out = UniFormerV2Backbone(**fields, name="backbone")(video, train=train)
        if self.num_classes:
            out["logits"] = ClassifierHead(self.num_classes, self.head_dropout, self.dtype, self.param_dtype,
                                           name="head")(out["features"], train)
        return out


class ClassifierHead(nn.Module):
    num_classes: int
    dropout: float = 0.5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = layers.Norm("layernorm", 1e-5, self.param_dtype, name="norm")(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return layers.dense(self.num_classes, ("embed", "classes"), name="dense", dtype=self.dtype,
                            param_dtype=self.param_dtype)(x).astype(jnp.float32)

"""The CLIP text transformer of InternVideo-MM (OpenAI CLIP's text tower plus an MLM mask embedding).

token embedding (masked positions replaced by `text_mask_embedding`) + learned positions -> causal pre-norm blocks
(fused qkv with bias, QuickGELU MLP, LayerNorm 1e-5) -> `ln_final` -> the EOT token (the largest id of each row, as
CLIP's `text.argmax(-1)`) @ `text_projection`.
"""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from invideo_jax.models import layers


class CLIPText(nn.Module):
    vocab_size: int
    context_length: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    embed_dim: int
    norm_eps: float = 1e-5
    act: str = "quick_gelu"
    scan: bool = False
    remat: str = "none"
    attn_impl: Optional[str] = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids, mlm_mask=None, *, train: bool = False):
        """ids (B, L) int, L <= context_length; mlm_mask (B, L) bool. Returns `features` (B, E), `tokens` (B, L, W)."""
        length = ids.shape[1]
        if length > self.context_length:
            raise ValueError(f"text length {length} exceeds the context length {self.context_length}")
        table = self.param("token_embedding", layers.logical(nn.initializers.normal(0.02), ("vocab", "embed")),
                           (self.vocab_size, self.width), self.param_dtype)
        x = jnp.take(table, ids, axis=0)
        mask_embedding = self.param("text_mask_embedding", layers.logical(nn.initializers.normal(0.02), ("embed",)),
                                    (self.width,), self.param_dtype)
        if mlm_mask is not None:
            x = jnp.where(mlm_mask[..., None], mask_embedding, x)
        pos = self.param("positional_embedding", layers.logical(nn.initializers.normal(0.01), (None, "embed")),
                         (self.context_length, self.width), self.param_dtype)
        x = layers.constrain((x + pos[:length]).astype(self.dtype))
        block = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, qkv_bias="qkv", norm_eps=self.norm_eps,
                     act=self.act, is_causal=True, attn_impl=self.attn_impl, dtype=self.dtype,
                     param_dtype=self.param_dtype)
        x, _ = layers.Transformer(self.depth, block, scan=self.scan, remat=self.remat, name="transformer")(
            x, deterministic=not train)
        x = layers.Norm("layernorm", self.norm_eps, self.param_dtype, name="ln_final")(x)
        eot = jnp.take_along_axis(x, jnp.argmax(ids, axis=-1)[:, None, None], axis=1)[:, 0]
        proj = self.param("text_projection", layers.logical(nn.initializers.normal(self.width ** -0.5),
                                                            ("embed", None)),
                          (self.width, self.embed_dim), self.param_dtype)
        features = eot.astype(self.dtype) @ proj.astype(self.dtype)
        return {"features": features, "tokens": x}

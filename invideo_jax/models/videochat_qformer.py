"""VideoChat2 stage 1: the Q-Former aligned with a frozen video encoder, BLIP-2 style (`videochat2_qformer.py`).

  video -> vision_encoder tokens (+ `vision_temp_embed` (1, T, 1, E) on each frame's tokens, stage 1 only)
        (frozen: evaluation mode, no gradient) -> vision_layernorm -> qformer queries (32, no extra queries)
        -> vision_proj -> unit query features
  text  -> qformer text alone (BERT encoder) -> [CLS] -> text_proj -> unit text feature
  VTC similarity: the mean over the queries of cosine(query feature, text feature) / temp (temp learnable, init 0.07,
  clamped to [0.001, 0.5]); VTM: `itm_head` (2 * width -> 2) on [mean of the query outputs ; text [CLS]] of the
  joint pass (queries and text attend to each other); captioning: the text, its first token replaced by [DEC], under
  the UniLM mask (module `QFormer`), through the caption head (BERT's prediction head: dense, exact GELU, LayerNorm,
  the word embeddings transposed + a bias).

Parameter tree: vision_encoder/..., vision_temp_embed, vision_layernorm, qformer/... (models/qformer.py),
vision_proj, text_proj, itm_head, temp, caption_{transform, norm, bias}. Stages 2 and 3
(models/videochat.py) take vision_layernorm and qformer from here (train/tasks/videochat.py `stage_mappings`).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from invideo_jax.models import layers
from invideo_jax.models.qformer import QFormer
from invideo_jax.models.videochat import UMTEncoder
from invideo_jax.models.vit import VisionTransformer


class QFormerAlign(nn.Module):
    vision_kind: str
    vision_config: dict
    qformer_config: dict
    embed_dim: int = 768
    vision_norm_eps: float = 1e-12
    temp_init: float = 0.07
    param_dtype: Any = jnp.float32

    def setup(self):
        encoder = UMTEncoder if self.vision_kind == "umt" else VisionTransformer
        self.vision_encoder = encoder(**self.vision_config)
        width, frames = self.vision_config["width"], self.vision_config["num_frames"]
        self.vision_temp_embed = self.param("vision_temp_embed",
                                            layers.logical(layers.zeros, (None, None, None, "embed")),
                                            (1, frames, 1, width), self.param_dtype)
        self.vision_layernorm = layers.Norm("layernorm", self.vision_norm_eps, self.param_dtype)
        self.qformer = QFormer(**self.qformer_config)
        dense = lambda features, axes: layers.Dense(features, axes, param_dtype=self.param_dtype)
        self.vision_proj = dense((self.embed_dim,), ("embed", None))
        self.text_proj = dense((self.embed_dim,), ("embed", None))
        self.itm_head = dense((2,), ("embed", None))
        self.temp = self.param("temp", nn.initializers.constant(self.temp_init), (), jnp.float32)
        self.caption_transform = dense((self.qformer.width,), ("embed", None))
        self.caption_norm = layers.Norm("layernorm", self.qformer.norm_eps, self.param_dtype)
        self.caption_bias = self.param("caption_bias", layers.logical(layers.zeros, ("vocab",)),
                                       (self.qformer.vocab_size,), self.param_dtype)

    def vision_tokens(self, video, *, train: bool = False):
        """(B, N, E) normalised vision tokens with the temporal embedding added to every frame's tokens."""
        tokens = jax.lax.stop_gradient(self.vision_encoder(video, train=False)["tokens"])  # frozen
        frames = self.vision_temp_embed.shape[1]
        cls = tokens.shape[1] % frames  # InternVideo2 keeps a CLS token first
        per_frame = tokens[:, cls:].reshape(tokens.shape[0], frames, -1, tokens.shape[-1])
        per_frame = (per_frame + self.vision_temp_embed.astype(per_frame.dtype)).reshape(tokens[:, cls:].shape)
        return self.vision_layernorm(jnp.concatenate([tokens[:, :cls], per_frame], axis=1))

    def __call__(self, video, text, text_mask, caption_ids, *, train: bool = False):
        """video (B, T, H, W, C), text / text_mask (B, L) ([CLS]-first ids), caption_ids (B, L) ([DEC]-first).
        Returns query_features (B, Q, D) and text_features (B, D) (unit), temp, vision tokens and caption logits."""
        vision = self.vision_tokens(video, train=train)
        queries = self.qformer(vision, train=train)
        query_features = _unit(self.vision_proj(queries))
        _, text_hidden = self.qformer(vision, text, text_mask, train=train, use_queries=False, return_text=True)
        text_features = _unit(self.text_proj(text_hidden[:, 0]))
        _, caption_hidden = self.qformer(vision, caption_ids, text_mask, train=train, causal_text=True,
                                         return_text=True)
        if self.is_initializing():  # creates `itm_head`, which the task calls through `match`
            self.match(vision, text, text_mask)
        return {"query_features": query_features, "text_features": text_features, "vision": vision,
                "temp": self.temp, "caption_logits": self.caption_logits(caption_hidden)}

    def caption_logits(self, hidden):
        h = self.caption_norm(nn.gelu(self.caption_transform(hidden), approximate=False))
        word = nn.unbox(self.qformer.variables["params"]["word"])
        return (jnp.einsum("bld,vd->blv", h.astype(jnp.float32), jnp.asarray(word, jnp.float32))
                + self.caption_bias.astype(jnp.float32))

    def match(self, vision, text, text_mask, *, train: bool = False):
        """VTM logits (B, 2) of vision tokens (B, N, E) and texts: queries and text attend to each other."""
        queries, text_hidden = self.qformer(vision, text, text_mask, train=train, return_text=True)
        pooled = jnp.concatenate([queries.mean(axis=1), text_hidden[:, 0]], axis=-1)
        return self.itm_head(pooled).astype(jnp.float32)


def _unit(x):
    x = x.astype(jnp.float32)
    return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))

"""The InternVideo-MM video-text model (InternVideo stage 1', "align before fuse").

  video (B, T, H, W, 3) -> UniFormerV2 (no head) `features` -> `visual_ln_post` -> @ `visual_proj`  (B, E)
  token ids (B, L)      -> CLIP text tower -> EOT feature @ text_projection                     (B, E)
  caption decoder: every final-layer video token (all frames) x the text tower's tokens -> next-token logits
  `logit_scale`: learnable log temperature, initialised at ln(1/0.07)

Params: `visual` (UniFormerV2: `backbone`), `visual_ln_post`, `visual_proj` (C, E), `text` (CLIPText),
`caption_decoder` (absent with an empty `caption_config`), `logit_scale`. The official checkpoint's names map onto
these one to one (see invideo_jax/convert/clip.py).
"""
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from invideo_jax.models import layers
from invideo_jax.models.caption import CaptionDecoder
from invideo_jax.models.text import CLIPText
from invideo_jax.models.uniformerv2 import UniFormerV2


class VideoTextModel(nn.Module):
    visual_config: dict  # UniFormerV2 fields (num_classes 0)
    text_config: dict  # CLIPText fields except embed_dim
    caption_config: dict  # CaptionDecoder fields except vocab_size and width; {} = no caption decoder
    embed_dim: int
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.visual_config.get("num_classes"):
            raise ValueError("the video-text model's visual tower has no classification head: set num_classes=0")
        self.visual = UniFormerV2(**self.visual_config, **kw)
        self.visual_ln_post = layers.Norm("layernorm", self.norm_eps, self.param_dtype)
        width = self.visual_config["width"]
        self.visual_proj = self.param("visual_proj", layers.logical(nn.initializers.normal(width ** -0.5),
                                                                    ("embed", None)),
                                      (width, self.embed_dim), self.param_dtype)
        self.text = CLIPText(**self.text_config, embed_dim=self.embed_dim, **kw)
        if self.caption_config:
            self.caption_decoder = CaptionDecoder(vocab_size=self.text_config["vocab_size"],
                                                  width=self.text_config["width"], **self.caption_config, **kw)
        self.logit_scale = self.param("logit_scale", layers.logical(nn.initializers.constant(math.log(1 / 0.07)),
                                                                    ()), (), self.param_dtype)

    def encode_video(self, video, *, train: bool = False):
        """(features (B, E), all final-layer tokens (B, T'*(1+HW), C))."""
        out = self.visual(video, train=train)
        features = self.visual_ln_post(out["features"]).astype(self.dtype) @ self.visual_proj.astype(self.dtype)
        tokens = out["tokens"]
        return features, tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])

    def encode_text(self, ids, mlm_mask=None, *, train: bool = False):
        """dict: `features` (B, E), `tokens` (B, L, W)."""
        return self.text(ids, mlm_mask, train=train)

    def __call__(self, video, ids, *, train: bool = False):
        """dict: video_features, text_features (B, E), logit_scale, caption_logits (B, L-1, vocab) for ids[:, 1:]."""
        video_features, video_tokens = self.encode_video(video, train=train)
        text = self.encode_text(ids, train=train)
        out = {"video_features": video_features, "text_features": text["features"], "logit_scale": self.logit_scale}
        if self.caption_config:
            out["caption_logits"] = self.caption_decoder(video_tokens, text["tokens"][:, :-1], train=train)
        return out

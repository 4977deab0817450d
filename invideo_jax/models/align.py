"""InternVideo2 stage 2: the video-text alignment model (official `InternVideo2_Stage2`), with optional audio.

  video (B, T, H, W, 3) -> `vision_encoder` (InternVideo2; in training on the visible tokens only)
        -> tokens (B, 1 + N_vis, D) (CLS first: the official `x_vis`, keys/values of the fusion layers' cross-attention)
        -> pooled (B, 768) (`clip_projector`) -> `vision_proj` -> unit video feature (B, E)
  ids (B, L), attention mask -> `text_encoder` (Bert) text mode: layers [0, fusion_layer) -> hidden (B, L, W)
        -> CLS -> `text_proj` -> unit text feature (B, E)
  matching (VTM): hidden + vision tokens -> fusion mode: layers [fusion_layer, depth) with cross-attention
        -> CLS -> `itm_head` -> 2 logits (1 = matched)
  masked LM: corrupted ids -> text mode -> fusion mode -> tied MLM head -> vocabulary logits
  `temp`: learnable temperature (init 0.07; the loss clamps it to [0.001, 0.5])

The cross-attention keys/values project from the vision width D (the official `encoder_width` = vision d_model), so
the vision tokens enter the fusion layers without a separate projection.

Audio (`audio_config`: the 6B model's BEATs-style `audio_encoder`, models/audio.py, frozen by default): the clip's
log-mel spectrogram -> audio tokens (B, Na, A) and their mean (B, A). The audio joins the video side:
  pooled <- `av_fusion`([pooled, audio mean]) (Dense(768 + A -> 768)), used for the contrastive feature;
  tokens <- [vision tokens, `av_concat_audio_proj`(audio tokens) (A -> D)], the fusion layers' context.
An example whose `audio_mask` is 0 (no audio track) skips the branch: its pooled feature is the video's own and its
audio tokens are masked out of the cross-attention (`context_mask`). Without `audio` (evaluation of video alone,
feature extraction) the whole branch is skipped. The official audio-visual model is not released (only its parameter
names: `audio_proj`, `av_concat_vision_proj`, `av_concat_audio_proj`, `av_fusion`); this wiring is ours. `av_fusion`
starts as the identity on the video part and zero on the audio part, so a stage-1 or video-only stage-2 model starts
from its video-only behaviour.

Parameter tree (official stage-2 names in brackets):
  vision_encoder/...            InternVideo2 (models/internvideo2.py)        [vision_encoder.*]
  text_encoder/...              Bert with fusion layers and MLM head         [text_encoder.bert.*, text_encoder.cls.*]
  vision_proj/kernel (768, E), bias                                          [vision_proj.weight (E, 768), bias]
  text_proj/kernel (W, E), bias                                              [text_proj]
  itm_head/kernel (W, 2), bias                                               [itm_head]
  temp ()                                                                    [temp]
  audio_encoder/..., av_fusion/kernel (768 + A, 768), bias, av_concat_audio_proj/kernel (A, D), bias   (with audio)
Not held: the official vision encoder's stage-1 leftovers (`clip_decoder`, `final_clip_decoder`, `clip_pos_embed`)
and the image position table `img_pos_embed` (images are not supported).

Methods (for `apply(..., method=...)`): `encode_video` / `encode_text` (unit features, evaluation),
`encode_vision` (tokens, pooled, context mask), `text_hidden` (text mode), `video_features` / `text_features`
(projections), `match` (ITM logits), `mlm_logits`; `__call__` runs all of them once (initialisation).
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from invideo_jax import losses
from invideo_jax.models import layers
from invideo_jax.models.audio import AudioTransformer
from invideo_jax.models.bert import Bert
from invideo_jax.models.internvideo2 import InternVideo2, depth_scaled_init


def video_only_init(key, shape, dtype):
    """`av_fusion`'s (768 + A, 768) kernel: the identity on the video rows, zero on the audio rows."""
    del key
    return jnp.eye(*shape, dtype=dtype)


class VideoTextAlign(nn.Module):
    vision_config: dict  # InternVideo2 fields (num_classes 0)
    text_config: dict  # Bert fields; fusion_layer set (the layers from it on have cross-attention)
    audio_config: Optional[dict] = None  # AudioTransformer fields (embed_dim 0); None: no audio branch
    freeze_audio: bool = True  # the audio encoder runs under stop_gradient (freeze its params in the optimiser too)
    embed_dim: int = 512
    temp_init: float = 0.07
    pad_id: int = 0  # text attention mask default: ids != pad_id
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.vision_config.get("num_classes"):
            raise ValueError("the alignment model's vision encoder has no classification head: set num_classes=0")
        if self.text_config.get("fusion_layer") is None:
            raise ValueError("text_config.fusion_layer is required: the layers from it on form the fusion encoder")
        self.vision_encoder = InternVideo2(**dict(kw, **self.vision_config))
        text = dict(kw, **self.text_config)
        text.update(encoder_width=self.vision_config["width"], mlm_head=True)
        self.text_encoder = Bert(**text)
        self.vision_proj = layers.Dense((self.embed_dim,), ("embed", None), **kw)
        self.text_proj = layers.Dense((self.embed_dim,), ("embed", None), **kw)
        self.itm_head = layers.Dense((2,), ("embed", None), **kw)
        if self.audio_config is not None:
            if self.audio_config.get("embed_dim"):
                raise ValueError("audio_config.embed_dim must be 0: the audio tokens' mean joins the video side")
            self.audio_encoder = AudioTransformer(**dict(kw, **self.audio_config))
            self.av_fusion = layers.Dense((self.vision_config.get("clip_embed_dim", 768),), (None, "embed"),
                                          kernel_init=video_only_init, **kw)
            self.av_concat_audio_proj = layers.Dense((self.vision_config["width"],), (None, "embed"), **kw)
        self.temp = self.param("temp", layers.logical(nn.initializers.constant(self.temp_init), ()), (),
                               self.param_dtype)

    # ---------------------------------------------------------------- towers
    def encode_vision(self, video, visible_idx=None, audio=None, audio_mask=None, *, train: bool = False):
        """(tokens (B, 1 + N [+ Na], D) CLS first, pooled (B, clip_embed_dim), context mask (B, 1 + N [+ Na]) bool);
        `visible_idx` keeps those patch tokens; `audio` (B, frames, mel bins) with `audio_mask` (B,) joins the audio
        (see the module docstring)."""
        out = self.vision_encoder(video, visible_idx, train=train)
        tokens, pooled = out["tokens"], out["pooled"]
        context_mask = jnp.ones(tokens.shape[:2], bool)
        if audio is None or self.audio_config is None:
            return tokens, pooled, context_mask
        sound = self.audio_encoder(audio, audio_mask, train=train)
        if self.freeze_audio:
            sound = {k: jax.lax.stop_gradient(v) for k, v in sound.items()}
        has_audio = sound["mask"]
        fused = self.av_fusion(jnp.concatenate([pooled.astype(jnp.float32), sound["pooled"]], axis=-1))
        pooled = jnp.where(has_audio[:, None], fused.astype(pooled.dtype), pooled)
        audio_tokens = self.av_concat_audio_proj(sound["tokens"]).astype(tokens.dtype)
        audio_keep = jnp.broadcast_to(has_audio[:, None], audio_tokens.shape[:2])
        return (jnp.concatenate([tokens, audio_tokens], axis=1), pooled,
                jnp.concatenate([context_mask, audio_keep], axis=1))

    def text_hidden(self, ids, attention_mask=None, *, train: bool = False):
        """Text mode: (B, L, W) after the layers before `fusion_layer`."""
        return self.text_encoder.text(ids, self._mask(ids, attention_mask), train=train)

    def video_features(self, pooled):
        """pooled (B, 768) -> unit (B, E), float32."""
        return losses.l2_normalize(self.vision_proj(pooled))

    def text_features(self, hidden):
        """text-mode hidden states (B, L, W) -> unit (B, E) from the CLS token, float32."""
        return losses.l2_normalize(self.text_proj(hidden[:, 0]))

    def encode_video(self, video, audio=None, audio_mask=None, *, train: bool = False):
        """Unit video features (B, E) from every token (evaluation), with the audio where given."""
        return self.video_features(self.encode_vision(video, None, audio, audio_mask, train=train)[1])

    def encode_text(self, ids, attention_mask=None, *, train: bool = False):
        """Unit text features (B, E); the attention mask defaults to ids != pad_id."""
        return self.text_features(self.text_hidden(ids, attention_mask, train=train))

    # ---------------------------------------------------------------- fusion
    def match(self, hidden, attention_mask, vision_tokens, context_mask=None, *, train: bool = False):
        """Fusion mode on text-mode hidden states and vision tokens -> CLS -> `itm_head`: (B, 2) float32."""
        fused = self.text_encoder.fusion(hidden, attention_mask, vision_tokens, context_mask, train=train)
        return self.itm_head(fused[:, 0]).astype(jnp.float32)

    def mlm_logits(self, ids, attention_mask, vision_tokens, context_mask=None, *, train: bool = False):
        """(Corrupted) ids through text then fusion mode -> tied MLM head: (B, L, vocab) float32."""
        return self.text_encoder(ids, self._mask(ids, attention_mask), vision_tokens, context_mask,
                                 train=train)["logits"]

    def __call__(self, video, ids, attention_mask=None, visible_idx=None, audio=None, audio_mask=None, *,
                 train: bool = False):
        """Every part once (initialisation): video_features, text_features (B, E), itm_logits (B, 2) of the given
        pairs, mlm_logits (B, L, vocab) of `ids` (the MLM head on the same fusion output), temp."""
        mask = self._mask(ids, attention_mask)
        tokens, pooled, context_mask = self.encode_vision(video, visible_idx, audio, audio_mask, train=train)
        hidden = self.text_hidden(ids, mask, train=train)
        fused = self.text_encoder.fusion(hidden, mask, tokens, context_mask, train=train)
        return {"video_features": self.video_features(pooled), "text_features": self.text_features(hidden),
                "itm_logits": self.itm_head(fused[:, 0]).astype(jnp.float32),
                "mlm_logits": self.text_encoder.mlm_logits(fused), "temp": self.temp}

    def _mask(self, ids, attention_mask: Optional[Any]):
        return (ids != self.pad_id) if attention_mask is None else attention_mask

    def init(self, rngs, *args, **kwargs):
        """`nn.Module.init`, then the official depth scaling of the vision encoder's output projections."""
        variables = super().init(rngs, *args, **kwargs)
        params = dict(variables["params"])
        params["vision_encoder"] = depth_scaled_init(params["vision_encoder"])
        return {**variables, "params": params}

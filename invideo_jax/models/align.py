"""InternVideo2 stage 2: the video-text alignment model (official `InternVideo2_Stage2`, and with `audio_config` the
6B `InternVideo2_Stage2_audiovisual`).

  video (B, T, H, W, 3) -> `vision_encoder` (InternVideo2; in training on the visible tokens only; T = 1: an image,
        positioned by its `img_pos_embed` with `vision_config.sep_image_video_pos_embed`)
        -> tokens (B, 1 + N_vis, D) (CLS first: the official `x_vis`, keys/values of the fusion layers' cross-attention)
        -> pooled (B, 768) (`clip_projector`) -> `vision_proj` -> unit video feature (B, E)
  ids (B, L), attention mask -> `text_encoder` (Bert) text mode: layers [0, fusion_layer) -> hidden (B, L, W)
        -> CLS -> `text_proj` -> unit text feature (B, E)
  matching (VTM): hidden + vision tokens -> fusion mode: layers [fusion_layer, depth) with cross-attention
        -> CLS -> `itm_head` -> 2 logits (1 = matched)
  masked LM: corrupted ids -> text mode -> fusion mode -> tied MLM head -> vocabulary logits
  `temp`: learnable temperature (init 0.07; the loss clamps it to [0.001, 0.5])

The cross-attention keys/values project from the context width (the official `encoder_width`): the vision width D,
or with `av_concat_dim` > 0 that width, the vision tokens then passing `av_concat_vision_proj` (Linear + LayerNorm)
first, as in the audio-visual model.

Audio (`audio_config`: the 6B model's BEATs-style `audio_encoder`, models/audio.py, frozen by default; needs
`av_concat_dim`): the clip's log-mel spectrogram -> audio tokens (B, Na, A) -> mean (B, A) -> `audio_proj` (A -> E);
the tokens -> `av_concat_audio_proj` (Linear + LayerNorm to `av_concat_dim`). The audio-visual feature is
`av_fusion`([audio_proj, vision_proj]) (Linear 2E -> E, unit-normalised); the audio-visual context of the fusion
layers is [audio tokens, vision tokens] (audio first) and `avtm_head` scores its matching. Per example, `audio_mask`
0 (no audio track) masks the audio tokens out of the cross-attention; the losses skip such examples' audio-visual
terms (train/tasks/align.py) and `encode_audio_video` gives them their video feature.

Parameter tree (official stage-2 names in brackets):
  vision_encoder/...            InternVideo2 (models/internvideo2.py)        [vision_encoder.*]
  text_encoder/...              Bert with fusion layers and MLM head         [text_encoder.bert.*, text_encoder.cls.*]
  vision_proj/kernel (768, E), bias                                          [vision_proj.weight (E, 768), bias]
  text_proj/kernel (W, E), bias                                              [text_proj]
  itm_head/kernel (W, 2), bias                                               [itm_head]
  temp ()                                                                    [temp]
  av_concat_vision_proj/{dense, norm}   (av_concat_dim > 0)                  [av_concat_vision_proj.{0,1}]
  audio_encoder/..., audio_proj, av_concat_audio_proj/{dense, norm}, av_fusion/kernel (2E, E), avtm_head (audio)
                                                              [audio_encoder.*, audio_proj, av_concat_audio_proj.{0,1},
                                                               av_fusion, avtm_head]
Not held: the official vision encoder's stage-1 leftovers (`clip_decoder`, `final_clip_decoder`, `clip_pos_embed`,
`clip_img_pos_embed`) and the audio-visual model's heads for losses
its released configs leave at weight 0 (`atm_head`: ATM; ATC, AVC, AMLM need no parameters and are not modelled).

Methods (for `apply(..., method=...)`): `encode_video` / `encode_audio_video` / `encode_text` (unit features,
evaluation), `encode_vision` (context tokens, pooled), `encode_audio` (context tokens, pooled, mask),
`text_hidden` (text mode), `video_features` / `audio_video_features` / `text_features` (projections), `match`
(ITM / AVTM logits), `mlm_logits`; `__call__` runs all of them once (initialisation).
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from invideo_jax import losses
from invideo_jax.models import layers
from invideo_jax.models.audio import AudioTransformer
from invideo_jax.models.bert import Bert
from invideo_jax.models.internvideo2 import InternVideo2

MATCH_HEADS = ("itm", "avtm")


class ProjectNorm(nn.Module):
    """Linear then LayerNorm (the official `av_concat_*_proj`: nn.Sequential(Linear, LayerNorm))."""

    features: int
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = layers.dense(self.features, (None, "embed"), name="dense", dtype=self.dtype,
                         param_dtype=self.param_dtype)(x)
        return layers.Norm("layernorm", self.norm_eps, self.param_dtype, name="norm")(x).astype(self.dtype)


class VideoTextAlign(nn.Module):
    vision_config: dict  # InternVideo2 fields (num_classes 0)
    text_config: dict  # Bert fields; fusion_layer set (the layers from it on have cross-attention)
    embed_dim: int = 512
    temp_init: float = 0.07
    pad_id: int = 0  # text attention mask default: ids != pad_id
    av_concat_dim: int = 0  # > 0: the context tokens' width, through `av_concat_*_proj` (the audio-visual model)
    audio_config: Optional[dict] = None  # AudioTransformer fields (embed_dim 0); None: no audio branch
    freeze_audio: bool = True  # the audio encoder runs under stop_gradient (freeze its params in the optimiser too)
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
        text.update(encoder_width=self.av_concat_dim or self.vision_config["width"], mlm_head=True)
        self.text_encoder = Bert(**text)
        self.vision_proj = layers.Dense((self.embed_dim,), ("embed", None), **kw)
        self.text_proj = layers.Dense((self.embed_dim,), ("embed", None), **kw)
        self.itm_head = layers.Dense((2,), ("embed", None), **kw)
        self.temp = self.param("temp", layers.logical(nn.initializers.constant(self.temp_init), ()), (),
                               self.param_dtype)
        if self.av_concat_dim:
            self.av_concat_vision_proj = ProjectNorm(self.av_concat_dim, **kw)
        if self.audio_config is not None:
            if not self.av_concat_dim:
                raise ValueError("audio_config needs av_concat_dim > 0: the width audio and vision tokens share")
            if self.audio_config.get("embed_dim"):
                raise ValueError("audio_config.embed_dim must be 0: `audio_proj` projects the audio tokens' mean")
            self.audio_encoder = AudioTransformer(**dict(kw, **self.audio_config))
            self.audio_proj = layers.Dense((self.embed_dim,), ("embed", None), **kw)
            self.av_concat_audio_proj = ProjectNorm(self.av_concat_dim, **kw)
            self.av_fusion = layers.Dense((self.embed_dim,), (None, "embed"), **kw)
            self.avtm_head = layers.Dense((2,), ("embed", None), **kw)

    # ---------------------------------------------------------------- towers
    def encode_vision(self, video, visible_idx=None, *, train: bool = False):
        """(context tokens (B, 1 + N, C) CLS first, pooled (B, clip_embed_dim)); `visible_idx` keeps those patch
        tokens; C is `av_concat_dim` (through `av_concat_vision_proj`) or the vision width."""
        out = self.vision_encoder(video, visible_idx, train=train)
        tokens = self.av_concat_vision_proj(out["tokens"]) if self.av_concat_dim else out["tokens"]
        return tokens, out["pooled"]

    def encode_audio(self, audio, audio_mask=None, *, train: bool = False):
        """(context tokens (B, Na, av_concat_dim), pooled (B, A) float32 (the tokens' mean), mask (B,) bool)."""
        sound = self.audio_encoder(audio, audio_mask, train=train)
        if self.freeze_audio:
            sound = jax.lax.stop_gradient(sound)
        return self.av_concat_audio_proj(sound["tokens"]), sound["pooled"], sound["mask"]

    def text_hidden(self, ids, attention_mask=None, *, train: bool = False):
        """Text mode: (B, L, W) after the layers before `fusion_layer`."""
        return self.text_encoder.text(ids, self._mask(ids, attention_mask), train=train)

    def video_features(self, pooled):
        """pooled (B, 768) -> unit (B, E), float32."""
        return losses.l2_normalize(self.vision_proj(pooled))

    def audio_video_features(self, pooled_video, pooled_audio):
        """Unit `av_fusion`([audio_proj(pooled audio), vision_proj(pooled video)]) (B, E), float32."""
        both = jnp.concatenate([self.audio_proj(pooled_audio), self.vision_proj(pooled_video)], axis=-1)
        return losses.l2_normalize(self.av_fusion(both))

    def text_features(self, hidden):
        """text-mode hidden states (B, L, W) -> unit (B, E) from the CLS token, float32."""
        return losses.l2_normalize(self.text_proj(hidden[:, 0]))

    def encode_video(self, video, *, train: bool = False):
        """Unit video features (B, E) from every token (evaluation)."""
        return self.video_features(self.encode_vision(video, train=train)[1])

    def encode_audio_video(self, video, audio, audio_mask=None, *, train: bool = False):
        """Unit audio-visual features (B, E) (evaluation); examples without audio get their video feature."""
        pooled = self.encode_vision(video, train=train)[1]
        _, pooled_audio, has_audio = self.encode_audio(audio, audio_mask, train=train)
        return jnp.where(has_audio[:, None], self.audio_video_features(pooled, pooled_audio),
                         self.video_features(pooled))

    def encode_text(self, ids, attention_mask=None, *, train: bool = False):
        """Unit text features (B, E); the attention mask defaults to ids != pad_id."""
        return self.text_features(self.text_hidden(ids, attention_mask, train=train))

    # ---------------------------------------------------------------- fusion
    def match(self, hidden, attention_mask, context, context_mask=None, *, head: str = "itm", train: bool = False):
        """Fusion mode on text-mode hidden states and context tokens -> CLS -> `itm_head` (or `avtm_head`):
        (B, 2) float32."""
        if head not in MATCH_HEADS:
            raise ValueError(f"match head {head!r}: expected one of {MATCH_HEADS}")
        fused = self.text_encoder.fusion(hidden, attention_mask, context, context_mask, train=train)
        return (self.itm_head if head == "itm" else self.avtm_head)(fused[:, 0]).astype(jnp.float32)

    def mlm_logits(self, ids, attention_mask, context, context_mask=None, *, train: bool = False):
        """(Corrupted) ids through text then fusion mode -> tied MLM head: (B, L, vocab) float32."""
        return self.text_encoder(ids, self._mask(ids, attention_mask), context, context_mask, train=train)["logits"]

    def __call__(self, video, ids, attention_mask=None, visible_idx=None, audio=None, audio_mask=None, *,
                 train: bool = False):
        """Every part once (initialisation): video_features, text_features (B, E), itm_logits (B, 2) of the given
        pairs, mlm_logits (B, L, vocab) of `ids` (the MLM head on the same fusion output), temp; with audio also
        audio_video_features and avtm_logits."""
        mask = self._mask(ids, attention_mask)
        tokens, pooled = self.encode_vision(video, visible_idx, train=train)
        hidden = self.text_hidden(ids, mask, train=train)
        fused = self.text_encoder.fusion(hidden, mask, tokens, train=train)
        out = {"video_features": self.video_features(pooled), "text_features": self.text_features(hidden),
               "itm_logits": self.itm_head(fused[:, 0]).astype(jnp.float32),
               "mlm_logits": self.text_encoder.mlm_logits(fused), "temp": self.temp}
        if audio is not None and self.audio_config is not None:
            audio_tokens, pooled_audio, has_audio = self.encode_audio(audio, audio_mask, train=train)
            context, context_mask = audio_visual_context(audio_tokens, has_audio, tokens)
            out["audio_video_features"] = self.audio_video_features(pooled, pooled_audio)
            out["avtm_logits"] = self.match(hidden, mask, context, context_mask, head="avtm", train=train)
        return out

    def _mask(self, ids, attention_mask: Optional[Any]):
        return (ids != self.pad_id) if attention_mask is None else attention_mask


def audio_visual_context(audio_tokens, has_audio, vision_tokens):
    """([audio tokens, vision tokens] (B, Na + N, C), its mask (B, Na + N) bool: audio tokens only where the
    example has audio)."""
    tokens = jnp.concatenate([audio_tokens.astype(vision_tokens.dtype), vision_tokens], axis=1)
    mask = jnp.concatenate([jnp.broadcast_to(has_audio[:, None], audio_tokens.shape[:2]),
                            jnp.ones(vision_tokens.shape[:2], bool)], axis=1)
    return tokens, mask

"""VideoMAE / VideoMAE V2 checkpoints, official (timm-style) and Hugging Face, <-> our VisionTransformer / VideoMAE.

Each format's table lists every param our models can have; the target model's params select the rules that apply
(a fine-tuned encoder at the root, or a pre-training model with `encoder/`, `decoder/`). LayerScale
(`blocks.{i}.gamma_1` / `gamma_2`, official `init_values > 0`) loads into a model with `layer_scale` set; Hugging Face
VideoMAE has no LayerScale.
"""
import os

import jax.numpy as jnp

from invideo_jax.convert import common
from invideo_jax.convert.common import Format, conv3d, linear, norm, rule, scoped
from invideo_jax.models.videomae import VideoMAE
from invideo_jax.models.vit import VisionTransformer

OFFICIAL_BLOCK = [
    *norm("norm1", "norm1"),
    *linear("attn/qkv", "attn.qkv", bias=False),
    rule("attn/q_bias", "attn.q_bias", "vector"),
    rule("attn/v_bias", "attn.v_bias", "vector"),
    *linear("attn/proj", "attn.proj", n_in=2),
    *norm("norm2", "norm2"),
    *linear("mlp/fc1", "mlp.fc1"),
    *linear("mlp/fc2", "mlp.fc2"),
    rule("ls1/gamma", "gamma_1", "vector"),  # LayerScale: in files trained with init_values > 0 only
    rule("ls2/gamma", "gamma_2", "vector"),
]
# The fine-tuned encoder; the pre-training encoder and decoder use the same names under `encoder.` / `decoder.`.
OFFICIAL_VIT = [
    *conv3d("patch_embed/proj", "patch_embed.proj"),
    *scoped(OFFICIAL_BLOCK, "transformer/blocks_{i}/", "blocks.{i}."),
    *norm("norm", "norm"),
    *norm("fc_norm", "fc_norm"),
    *linear("head", "head"),
]
MAE_BRIDGE = [*linear("encoder_to_decoder", "encoder_to_decoder", bias=False), rule("mask_token", "mask_token")]

HF_BLOCK = [
    *norm("norm1", "layernorm_before"),
    *linear("attn/qkv", [f"attention.attention.{n}" for n in ("query", "key", "value")], bias=False),
    rule("attn/q_bias", "attention.attention.query.bias", "vector"),
    rule("attn/v_bias", "attention.attention.value.bias", "vector"),
    *linear("attn/proj", "attention.output.dense", n_in=2),
    *norm("norm2", "layernorm_after"),
    *linear("mlp/fc1", "intermediate.dense"),
    *linear("mlp/fc2", "output.dense"),
]
HF_ENCODER = [
    *conv3d("patch_embed/proj", "embeddings.patch_embeddings.projection"),
    *scoped(HF_BLOCK, "transformer/blocks_{i}/", "encoder.layer.{i}."),
    *norm("norm", "layernorm"),
]

FORMATS = {
    "videomae": Format(
        rules=(*OFFICIAL_VIT, *scoped(OFFICIAL_VIT, "encoder/", "encoder."),
               *scoped(OFFICIAL_VIT, "decoder/", "decoder."), *MAE_BRIDGE),
        prefixes=("module.", "backbone."),
    ),
    "videomae_hf": Format(
        rules=(*scoped(HF_ENCODER, "", "videomae."), *scoped(HF_ENCODER, "encoder/", "videomae."),
               *norm("fc_norm", "fc_norm"), *linear("head", "classifier"),
               *scoped(HF_BLOCK, "decoder/transformer/blocks_{i}/", "decoder.decoder_layers.{i}."),
               *norm("decoder/norm", "decoder.norm"), *linear("decoder/head", "decoder.head"), *MAE_BRIDGE),
        # Hub files written before transformers 5 name the attention biases q_bias / v_bias.
        aliases=((r"attention\.attention\.q_bias$", "attention.attention.query.bias"),
                 (r"attention\.attention\.v_bias$", "attention.attention.value.bias")),
    ),
}


def expected_params(model) -> dict:
    """The abstract params of a VisionTransformer or VideoMAE, from dummy inputs of its configured size."""
    vit = VisionTransformer(**model.encoder) if isinstance(model, VideoMAE) else model
    video = jnp.zeros((1, vit.num_frames, vit.image_size, vit.image_size, 3))
    if not isinstance(model, VideoMAE):
        return common.abstract_params(model, video)
    index = jnp.arange(vit.num_patches)[None]
    return common.abstract_params(model, video, index[:, :1], index[:, 1:])


def load_params(checkpoint, model, fmt: str = "videomae", drop=()):
    """A checkpoint file or state dict -> (params for `model`, common.Report); raises common.ConversionError."""
    state = common.load_file(os.fspath(checkpoint)) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    return common.convert(state, _format(fmt), expected_params(model), drop)


def to_state_dict(params, fmt: str = "videomae") -> dict:
    """Our params -> {name: numpy array} in the official (or Hugging Face) layout."""
    return common.export(params, _format(fmt))


def _format(fmt: str) -> Format:
    return common.pick_format(FORMATS, fmt, "VideoMAE")

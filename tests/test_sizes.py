"""Parameter counts of the size tables and the VideoMAE decoders against the official builders, by jax.eval_shape
(nothing is allocated)."""
import math

import jax
import jax.numpy as jnp
import pytest

from configs import common, videomae_pretrain
from invideo_jax.convert import videomae
from invideo_jax.convert.common import abstract_params
from invideo_jax.models.videomae import VideoMAE
from invideo_jax.models.vit import VisionTransformer

# Encoder with fc_norm, without the classification head, 16 frames at 224, tubelet 2.
EXACT = {"S/16": 21_879_936, "B/16": 86_227_200, "L/16": 303_860_736, "H/16": 631_607_040, "g/14": 1_011_610_752}
REFERENCE_M = {"S/16": 21.9, "B/16": 86.2, "L/16": 303.9, "H/16": 631.6, "g/14": 1011.6}  # internvideo.md 1.1, 1.3

# The official pre-training decoders: (decoder_embed_dim, decoder_num_heads, mlp_ratio) passed by the
# `pretrain_videomae_{small,base,large,huge}_patch16_224` builders of MCG-NJU/VideoMAE modeling_pretrain.py and
# `pretrain_videomae_giant_patch14_224` of OpenGVLab/VideoMAEv2 (the decoder's Blocks get the same mlp_ratio, hidden
# int(dim * mlp_ratio)), and `--decoder_depth` of the official pre-training scripts (V1 kinetics scripts; V2: 4).
OFFICIAL_DECODERS = {"S": (192, 3, 4, 4), "B": (384, 6, 4, 4), "L": (512, 8, 4, 12), "H": (640, 8, 4, 12),
                     "g": (512, 8, 48 / 11, 4)}
VIT_G_PRETRAIN = 1_026_306_560  # the official pretrain_videomae_giant_patch14_224 (16 x 224), parameters


def count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("variant", sorted(EXACT))
def test_encoder_parameter_count(variant):
    model = VisionTransformer(**common.vit_encoder(variant, scan=True), pool="mean", final_norm=False)
    params = jax.eval_shape(lambda: abstract_params(model, jnp.zeros((1, 16, 224, 224, 3))))
    assert count(params) == EXACT[variant]
    assert abs(count(params) / 1e6 - REFERENCE_M[variant]) <= 0.005 * REFERENCE_M[variant]


@pytest.mark.parametrize("size", sorted(OFFICIAL_DECODERS))
def test_decoder_sizes_are_the_official_builders(size):
    width, heads, mlp_ratio, depth = OFFICIAL_DECODERS[size]
    assert common.DECODER_SIZES[size] == dict(decoder_width=width, decoder_heads=heads, decoder_depth=depth,
                                              decoder_mlp_dim=int(width * mlp_ratio))


def test_vit_g_pretraining_parameter_count_is_the_official():
    config = videomae_pretrain.get_config("vit_g,v2=True")
    assert count(videomae.expected_params(VideoMAE(**config.model.kwargs))) == VIT_G_PRETRAIN

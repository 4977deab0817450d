"""Encoder parameter counts of the size table, by jax.eval_shape (nothing is allocated)."""
import math

import jax
import jax.numpy as jnp
import pytest

from configs import common
from invideo_jax.convert.common import abstract_params
from invideo_jax.models.vit import VisionTransformer

# Encoder with fc_norm, without the classification head, 16 frames at 224, tubelet 2.
EXACT = {"S/16": 21_879_936, "B/16": 86_227_200, "L/16": 303_860_736, "H/16": 631_607_040, "g/14": 1_011_610_752}
REFERENCE_M = {"S/16": 21.9, "B/16": 86.2, "L/16": 303.9, "H/16": 631.6, "g/14": 1011.6}  # internvideo.md 1.1, 1.3


@pytest.mark.parametrize("variant", sorted(EXACT))
def test_encoder_parameter_count(variant):
    model = VisionTransformer(**common.vit_encoder(variant, scan=True), pool="mean", final_norm=False)
    params = jax.eval_shape(lambda: abstract_params(model, jnp.zeros((1, 16, 224, 224, 3))))
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    assert count == EXACT[variant]
    assert abs(count / 1e6 - REFERENCE_M[variant]) <= 0.005 * REFERENCE_M[variant]

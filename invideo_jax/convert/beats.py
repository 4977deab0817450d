"""Official BEATs checkpoints (microsoft/unilm beats/BEATs.py, backbone.py) <-> our AudioTransformer (models/audio.py).

Format `beats`: a BEATs release file (`BEATs_iter3.pt`, `BEATs_iter3_plus_AS2M.pt`, ...: {'cfg': BEATsConfig fields,
'model': state dict}) -> an AudioTransformer's {'params': ...}. The same table, under `audio_encoder.`, converts the
audio encoder of the InternVideo2-6B audio-visual stage-2 file (convert/internvideo2.py), whose BEATs is built from
`beats.pth`'s cfg and state dict.

Names (ours <- official):
  patch_embed/kernel (p*p, E)      patch_embedding.weight (E, 1, p, p) (bias-free: conv_bias False)
  patch_norm                       layer_norm (the LayerNorm on the patch features)
  post_extract_proj                post_extract_proj (present when E != D)
  pos_conv/{kernel (K, D/G, D), bias}  encoder.pos_conv.0.{weight_g (1, 1, K), weight_v (D, D/G, K), bias}: weight
                                   norm over dim 2, w = g v / ||v|| (norm over every axis but the kernel position);
                                   also the parametrizations names (`parametrizations.weight.original0/1`)
  pos_norm                         encoder.layer_norm (applied after the conv embedding: layer_norm_first False)
  rel_pos_bias (buckets, heads)    encoder.layers.0.self_attn.relative_attention_bias.weight (the other layers hold
                                   the same shared module: their copies must equal it, and are written back)
  transformer/blocks_{i}/          encoder.layers.{i}.
    q, k, v, out                   self_attn.{q,k,v,out}_proj
    grep_linear, grep_a (heads,)   self_attn.grep_linear, self_attn.grep_a (1, heads, 1, 1)
    norm1, fc1, fc2, norm2         self_attn_layer_norm, fc1, fc2, final_layer_norm
Dropped and listed: a fine-tuned file's `predictor` (the AudioSet classifier). A file's cfg must describe the target
(`check_cfg`): the fields that shapes cannot show (deep_norm, max_distance, layer_norm_first, activation) included.
"""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from invideo_jax.convert import common
from invideo_jax.convert.common import ConversionError, Format, linear, norm, rule, scoped
from invideo_jax.models.audio import AudioTransformer

PATCH = "patch_embedding.weight"
POS_CONV = "encoder.pos_conv.0."
WEIGHT_NORM = (("weight_g", "weight_v"), ("parametrizations.weight.original0", "parametrizations.weight.original1"))
REL_POS = "encoder.layers.{i}.self_attn.relative_attention_bias.weight"
LAYER = [  # encoder.layers.{i}.
    *linear("q", "self_attn.q_proj"),
    *linear("k", "self_attn.k_proj"),
    *linear("v", "self_attn.v_proj"),
    *linear("out", "self_attn.out_proj", n_in=2),
    *linear("grep_linear", "self_attn.grep_linear"),
    rule("grep_a", "self_attn.grep_a", "vector", unit_axes=(0, 2, 3)),  # (1, heads, 1, 1)
    *norm("norm1", "self_attn_layer_norm"),
    *linear("fc1", "fc1"),
    *linear("fc2", "fc2"),
    *norm("norm2", "final_layer_norm"),
]
ENCODER = [  # an AudioTransformer's params (official names at a BEATs state dict's root)
    *linear("patch_embed", "patch_embedding", bias=False),  # the kernel flattened by `from_official`
    *norm("patch_norm", "layer_norm"),
    *linear("post_extract_proj", "post_extract_proj"),
    rule("pos_conv/kernel", POS_CONV + "weight", "conv1d"),  # the effective kernel, from `from_official`
    rule("pos_conv/bias", POS_CONV + "bias", "vector"),
    *norm("pos_norm", "encoder.layer_norm"),
    rule("rel_pos_bias", REL_POS.format(i=0)),
    *scoped(LAYER, "transformer/blocks_{i}/", "encoder.layers.{i}."),
]
FORMATS = {"beats": Format(rules=tuple(scoped(ENCODER, "params/", "")))}
OPTIONAL = (r"^predictor\.",)
# BEATsConfig field -> (our AudioTransformer field, or None: the value BEATs must have for our model).
CFG_FIELDS = {"encoder_layers": "depth", "encoder_embed_dim": "width", "encoder_ffn_embed_dim": "mlp_dim",
              "encoder_attention_heads": "num_heads", "embed_dim": "patch_embed_dim", "input_patch_size": "patch_size",
              "conv_pos": "conv_pos", "conv_pos_groups": "conv_pos_groups", "deep_norm": "deep_norm",
              "layer_norm_first": None, "conv_bias": None, "activation_fn": None}


def from_official(state: dict, prefix: str = "") -> dict:
    """A BEATs state dict (under `prefix`) with the layouts our rules read: the patch kernel flattened (E, p*p), the
    weight-normalised `pos_conv` as its effective `weight`, the shared relative-position copies checked and
    removed. Other keys unchanged."""
    state = dict(state)
    if prefix + PATCH in state:
        kernel = state[prefix + PATCH]
        state[prefix + PATCH] = kernel.reshape(kernel.shape[0], -1)
    for g_name, v_name in WEIGHT_NORM:
        g_key, v_key = prefix + POS_CONV + g_name, prefix + POS_CONV + v_name
        if g_key in state and v_key in state:
            g, v = state.pop(g_key), state.pop(v_key)
            norm_v = np.sqrt((v.astype(np.float64) ** 2).sum(axis=(0, 1), keepdims=True))
            state[prefix + POS_CONV + "weight"] = (v * (g / norm_v)).astype(v.dtype)
    shared = state.get(prefix + REL_POS.format(i=0))
    copy = re.escape(prefix + REL_POS).replace(re.escape("{i}"), r"[1-9]\d*")
    copies = sorted(k for k in state if re.fullmatch(copy, k))
    for key in copies:
        if shared is None or not np.array_equal(state[key], shared):
            raise ConversionError(f"{key} differs from {prefix + REL_POS.format(i=0)}: BEATs shares layer 0's "
                                  "relative position bias with every layer")
        del state[key]
    return state


def to_official(state: dict, prefix: str = "", depth: int = 0) -> dict:
    """The inverse of `from_official` on our export: the patch kernel (E, 1, p, p), `pos_conv` as weight_g (its norm
    per kernel position) and weight_v (the kernel itself), the relative-position table copied to all `depth`
    layers."""
    state = dict(state)
    if prefix + PATCH in state:
        kernel = state[prefix + PATCH]
        side = int(round(np.sqrt(kernel.shape[1])))
        state[prefix + PATCH] = kernel.reshape(kernel.shape[0], 1, side, side)
    weight = state.pop(prefix + POS_CONV + "weight", None)
    if weight is not None:
        state[prefix + POS_CONV + "weight_g"] = np.sqrt((weight.astype(np.float64) ** 2).sum(
            axis=(0, 1), keepdims=True)).astype(weight.dtype)
        state[prefix + POS_CONV + "weight_v"] = weight
    shared = state.get(prefix + REL_POS.format(i=0))
    if shared is not None:
        state.update((prefix + REL_POS.format(i=i), shared.copy()) for i in range(1, depth))
    return state


def check_cfg(cfg, model: AudioTransformer) -> None:
    """Raise naming every BEATsConfig field of a release file that disagrees with `model`."""
    wrong = []
    for field, ours in CFG_FIELDS.items():
        if field not in cfg:
            continue
        want = getattr(model, ours) if ours else {"layer_norm_first": False, "conv_bias": False,
                                                  "activation_fn": "gelu"}[field]
        if cfg[field] != want:
            wrong.append(f"{field}={cfg[field]!r} (model: {ours or 'supports only'} {want!r})")
    relative = bool(cfg.get("relative_position_embedding", False))
    if relative != bool(model.rel_pos_buckets):
        wrong.append(f"relative_position_embedding={relative} (model: rel_pos_buckets={model.rel_pos_buckets})")
    elif relative:
        for field, ours in (("num_buckets", "rel_pos_buckets"), ("max_distance", "rel_pos_max_distance"),
                            ("gru_rel_pos", "rel_pos_gate")):
            if field in cfg and cfg[field] != getattr(model, ours):
                wrong.append(f"{field}={cfg[field]!r} (model: {ours}={getattr(model, ours)!r})")
    if wrong:
        raise ConversionError("the BEATs file's cfg does not describe the model: " + "; ".join(wrong))


def expected_variables(model: AudioTransformer) -> dict:
    fbank = jax.ShapeDtypeStruct((1, model.patch_size, model.num_mel_bins), jnp.float32)
    return common.abstract_variables(model, fbank)


def load_variables(checkpoint, model: AudioTransformer, fmt: str = "beats", drop=()):
    """A BEATs file or {'cfg', 'model'} dict (or a bare state dict) -> ({'params': ...}, common.Report)."""
    base = common.pick_format(FORMATS, fmt, "BEATs")
    if not isinstance(model, AudioTransformer):
        raise ConversionError(f"--format=beats converts into a BEATs-style AudioTransformer, not a "
                              f"{type(model).__name__}")
    raw = common.load_file(os.fspath(checkpoint)) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    if isinstance(raw, dict) and isinstance(raw.get("cfg"), dict):
        check_cfg(raw["cfg"], model)
    state = from_official(common.normalize_keys(raw, base))
    return common.convert(state, base, expected_variables(model), [*drop, *OPTIONAL])


def to_state_dict(variables, model: AudioTransformer) -> dict:
    """Our variables (or params) -> the BEATs state dict (numpy)."""
    if "params" not in variables:
        variables = {"params": variables}
    return to_official(common.export(variables, FORMATS["beats"]), depth=model.depth)

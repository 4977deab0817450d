"""UniFormerV2, InternVideo-MM and Hugging Face CLIP checkpoints <-> our UniFormerV2 / VideoTextModel variables.

Formats (each table lists every param our models can have; the target model selects the rules that apply):
  uniformerv2     official UniFormerV2: a SlowFast `.pyth` dict (`model_state`) or a raw K710 state dict, keys
                  prefixed `backbone.` <-> UniFormerV2 params and the LMHRA BatchNorm running statistics.
  internvideo_mm  InternVideo-MM: a Lightning `state_dict`, keys prefixed `clip.` (the caption decoder's
                  `caption_decoder.` are not) <-> VideoTextModel.
  clip_hf         transformers `CLIPModel` <-> VideoTextModel, or its vision tower <-> a UniFormerV2 backbone. CLIP
                  has no UniBlocks (local, global, query token, fusion weight), caption decoder, MLM mask embedding
                  or classifier head: those stay at their initial values and are listed in the report.

Layouts: the fused `in_proj_weight` (3C, C) of nn.MultiheadAttention, rows [q; k; v] <-> our qkv kernel
(C, 3, H, hd) (global blocks: q (C, H, hd) from the first third, kv (C, 2, H, hd) from the rest); Conv3d
(O, I, T, H, W) <-> (T, H, W, I, O), depthwise ones with I = 1; the LMHRA 1x1x1 convs <-> Dense kernels; CLIP's 2-D
patch kernel is the centre time slice of our conv1 (zeros elsewhere when k_t = 3). Saving writes the keys without
the `backbone.` / `clip.` prefixes and without the buffers (`num_batches_tracked`, the caption decoder's zero LayerNorm
`beta` and rotary `inv_freq`), which loading ignores.
"""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from invideo_jax.convert import common
from invideo_jax.convert.common import Format, conv3d, linear, norm, rule, scoped
from invideo_jax.models.multimodal import VideoTextModel
from invideo_jax.models.uniformerv2 import UniFormerV2

CLIP_BLOCK = [  # OpenAI CLIP's ResidualAttentionBlock: the UniFormerV2 backbone and the text tower
    *norm("norm1", "ln_1"),
    rule("attn/qkv/kernel", "attn.in_proj_weight", "linear"),
    rule("attn/qkv/bias", "attn.in_proj_bias", "vector"),
    *linear("attn/proj", "attn.out_proj", n_in=2),
    *norm("norm2", "ln_2"),
    *linear("mlp/fc1", "mlp.c_fc"),
    *linear("mlp/fc2", "mlp.c_proj"),
]
LMHRA = [  # pos_embed = BatchNorm3d, 1x1x1 Conv3d down, depthwise temporal Conv3d, 1x1x1 Conv3d up
    *norm("bn", "pos_embed.0"),
    *linear("down", "pos_embed.1", unit_axes=(2, 3, 4)),
    *conv3d("conv", "pos_embed.2"),
    *linear("up", "pos_embed.3", unit_axes=(2, 3, 4)),
]
LMHRA_STATS = [rule("bn/mean", "pos_embed.0.running_mean", "vector"),
               rule("bn/var", "pos_embed.0.running_var", "vector")]
EXTRACTOR = [  # a global UniBlock's decoder; the query projection is the first third of in_proj, keys/values the rest
    *norm("ln_1", "ln_1"),
    *norm("ln_2", "ln_2"),
    *norm("ln_3", "ln_3"),
    rule("attn/q/kernel", "attn.in_proj_weight", "linear", part=(0, 1, 3)),
    rule("attn/q/bias", "attn.in_proj_bias", "vector", part=(0, 1, 3)),
    rule("attn/kv/kernel", "attn.in_proj_weight", "linear", part=(1, 3, 3)),
    rule("attn/kv/bias", "attn.in_proj_bias", "vector", part=(1, 3, 3)),
    *linear("attn/proj", "attn.out_proj", n_in=2),
    *linear("mlp/fc1", "mlp.c_fc"),
    *linear("mlp/fc2", "mlp.c_proj"),
]


def resblocks(rules) -> list:
    return scoped(rules, "transformer/blocks_{i}/", "transformer.resblocks.{i}.")


def both_lmhra(rules) -> list:
    return [*scoped(rules, "lmhra1/", "lmhra1."), *scoped(rules, "lmhra2/", "lmhra2.")]


UNIFORMER = [  # the `backbone` subtree; official names below `backbone.` (UniFormerV2) or `visual.` (InternVideo-MM)
    rule("conv1/kernel", "conv1.weight", "conv3d"),
    rule("class_embedding", "class_embedding"),
    rule("positional_embedding", "positional_embedding"),
    *norm("ln_pre", "ln_pre"),
    *resblocks([*CLIP_BLOCK, *both_lmhra(LMHRA)]),
    rule("temporal_cls_token", "transformer.temporal_cls_token"),
    *conv3d("dpe_{i}", "transformer.dpe.{i}"),
    *scoped(EXTRACTOR, "dec_{i}/", "transformer.dec.{i}."),
    rule("balance", "transformer.balance"),
]
UNIFORMER_STATS = resblocks(both_lmhra(LMHRA_STATS))
HEAD = [*norm("head/norm", "transformer.proj.0"), *linear("head/dense", "transformer.proj.2")]

CLIP_TEXT = [  # OpenAI CLIP's text tower with InternVideo's MLM mask embedding (1, 1, W)
    rule("token_embedding", "token_embedding.weight"),
    rule("positional_embedding", "positional_embedding"),
    rule("text_mask_embedding", "text_mask_embedding", unit_axes=(0, 1)),
    *resblocks(CLIP_BLOCK),
    *norm("ln_final", "ln_final"),
    rule("text_projection", "text_projection"),
]
COCA_ATTENTION = [  # LayerNorm without bias (its zero `beta` is a buffer), bias-free linears
    rule("norm/scale", "norm.gamma", "vector"),
    *linear("to_q", "to_q", bias=False),
    *linear("to_kv", "to_kv", bias=False),
    *linear("to_out", "to_out", n_in=2, bias=False),
]
CAPTION = [  # the key table of invideo_jax/models/caption.py
    rule("visual_queries", "visual_queries"),
    *scoped(COCA_ATTENTION, "visual_attn_pooler/", "visual_attn_pooler."),
    rule("visual_attn_pooler/context_norm/scale", "visual_attn_pooler.context_norm.gamma", "vector"),
    *norm("visual_pooler_norm", "visual_pooler_norm"),
    *norm("text_norm", "text_norm"),
    *scoped([rule("norm/scale", "norm.gamma", "vector"),
             *linear("fused_attn_ff_proj", "fused_attn_ff_proj", bias=False),
             *linear("attn_out", "attn_out", n_in=2, bias=False),
             *linear("ff_out", "ff_out.1", bias=False)], "layers_{i}/attn_ff/", "multimodal_layers.{i}.0.fn."),
    *scoped([*COCA_ATTENTION, *linear("ff_in", "ff.0", bias=False), *linear("ff_out", "ff.2", bias=False)],
            "layers_{i}/cross_attn/", "multimodal_layers.{i}.1.fn."),
    *norm("predictor/norm1", "predictor.0"),
    *linear("predictor/fc1", "predictor.1"),
    *norm("predictor/norm2", "predictor.3"),
    *linear("predictor/fc2", "predictor.4"),
]

HF_BLOCK = [
    *norm("norm1", "layer_norm1"),
    *linear("attn/qkv", [f"self_attn.{n}_proj" for n in "qkv"]),
    *linear("attn/proj", "self_attn.out_proj", n_in=2),
    *norm("norm2", "layer_norm2"),
    *linear("mlp/fc1", "mlp.fc1"),
    *linear("mlp/fc2", "mlp.fc2"),
]
HF_VISION = [  # the CLIP part of the `backbone` subtree, names below `vision_model.`
    rule("conv1/kernel", "embeddings.patch_embedding.weight", "inflated"),
    rule("class_embedding", "embeddings.class_embedding"),
    rule("positional_embedding", "embeddings.position_embedding.weight"),
    *norm("ln_pre", "pre_layrnorm"),  # sic
    *scoped(HF_BLOCK, "transformer/blocks_{i}/", "encoder.layers.{i}."),
]
HF_TEXT = [  # names below `text_model.`
    rule("token_embedding", "embeddings.token_embedding.weight"),
    rule("positional_embedding", "embeddings.position_embedding.weight"),
    *scoped(HF_BLOCK, "transformer/blocks_{i}/", "encoder.layers.{i}."),
    *norm("ln_final", "final_layer_norm"),
]
# A full CLIPModel's keys that have no place in a UniFormerV2 classifier: dropped (and reported) for that target.
HF_OUTSIDE_UNIFORMER = (r"^text_model\.", r"^(text|visual)_projection\.", r"^logit_scale$",
                        r"^vision_model\.post_layernorm\.")

# Whole models: rules for the `params` collection and, where there are any, `batch_stats`.
UNIFORMERV2_PARAMS = [*scoped(UNIFORMER, "backbone/", ""), *HEAD]
INTERNVIDEO_MM_PARAMS = [
    *scoped(UNIFORMER, "visual/backbone/", "visual."),
    *norm("visual_ln_post", "visual_ln_post"),
    rule("visual_proj", "visual_proj"),
    *scoped(CLIP_TEXT, "text/", ""),
    rule("logit_scale", "logit_scale"),
    *scoped(CAPTION, "caption_decoder/", "caption_decoder."),
]
HF_CLIP_PARAMS = [  # into a VideoTextModel, or the vision tower into a UniFormerV2 (`backbone/`)
    *scoped(HF_VISION, "backbone/", "vision_model."),
    *scoped(HF_VISION, "visual/backbone/", "vision_model."),
    *norm("visual_ln_post", "vision_model.post_layernorm"),
    rule("visual_proj", "visual_projection.weight", "linear"),
    *scoped(HF_TEXT, "text/", "text_model."),
    rule("text/text_projection", "text_projection.weight", "linear"),
    rule("logit_scale", "logit_scale"),
]


def by_collection(params, batch_stats=()) -> tuple:
    return (*scoped(params, "params/", ""), *scoped(batch_stats, "batch_stats/", ""))


NUM_BATCHES_TRACKED = r"\.num_batches_tracked$"
FORMATS = {
    "uniformerv2": Format(
        rules=by_collection(UNIFORMERV2_PARAMS, scoped(UNIFORMER_STATS, "backbone/", "")),
        prefixes=("module.", "backbone."),
        buffers=(NUM_BATCHES_TRACKED,),
    ),
    "internvideo_mm": Format(
        rules=by_collection(INTERNVIDEO_MM_PARAMS, scoped(UNIFORMER_STATS, "visual/backbone/", "visual.")),
        prefixes=("module.", "clip."),
        buffers=(NUM_BATCHES_TRACKED, r"^caption_decoder\..*\.beta$", r"\.rotary_emb\.inv_freq$"),
    ),
    "clip_hf": Format(
        rules=by_collection(HF_CLIP_PARAMS),
        buffers=(r"embeddings\.position_ids$",),  # written by transformers before 4.31
        at_init=(r"/(dpe|dec)_\d+/", r"/lmhra[12]/", r"/(temporal_cls_token|balance|text_mask_embedding)$",
                 r"^params/(head|caption_decoder)/"),
    ),
}


def model_inputs(model) -> tuple:
    """Dummy inputs of the model's configured size: (video,) for UniFormerV2, (video, ids) for VideoTextModel."""
    visual = UniFormerV2(**model.visual_config) if isinstance(model, VideoTextModel) else model
    video = jnp.zeros((1, visual.num_frames, visual.image_size, visual.image_size, 3))
    return (video, jnp.zeros((1, 2), jnp.int32)) if isinstance(model, VideoTextModel) else (video,)


def expected_variables(model) -> dict:
    """The abstract {'params': ..., 'batch_stats': ...} of a UniFormerV2 or VideoTextModel."""
    return common.abstract_variables(model, *model_inputs(model))


def load_variables(checkpoint, model, fmt: str = "uniformerv2", drop=(), initial=None):
    """A checkpoint file or state dict -> ({'params': ..., ['batch_stats': ...]}, common.Report) for `model`;
    raises common.ConversionError. Params the format does not hold come from `initial` (variables of `model`;
    default: `model.init`, run only when such params exist)."""
    state = common.load_file(os.fspath(checkpoint)) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    if fmt == "clip_hf" and not isinstance(model, VideoTextModel):
        drop = (*drop, *HF_OUTSIDE_UNIFORMER)
    inputs = model_inputs(model)

    def initial_values():
        if initial is not None:
            return initial
        # an rbg key: a whole model's threefry initialisers take long to compile on CPU
        return nn.meta.unbox(jax.jit(model.init)(jax.random.key(0, impl="rbg"), *inputs))

    return common.convert(state, _format(fmt), common.abstract_variables(model, *inputs), drop, initial_values)


def to_state_dict(variables, fmt: str = "uniformerv2") -> dict:
    """Our variables -> {name: numpy array} in the format's layout (params the format does not hold are omitted)."""
    return common.export(variables, _format(fmt))


def _format(fmt: str) -> Format:
    return common.pick_format(FORMATS, fmt, "CLIP-family")

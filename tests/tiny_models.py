"""Test-size models for the inference tests, and random weights for any model.

This file is a config file too: `tiny("vit")` is the model name `/abs/path/tests/tiny_models.py:vit`, which
`inference.load`, `--model=` of the commands and `presets.build_config` take like any config file. KIND: vit,
videomae, uniformerv2 (local UniBlocks: BatchNorm statistics), videotext, internvideo2_stage2 (the last two with
16 word tokens). Each shrinks a real recipe: 32x32 frames, patch 8, width 32, one layer, 4 frames.
"""
import os

from invideo_jax import inference, presets, sharding
from invideo_jax.train.tasks import get_task


def _tiny(**fields) -> dict:
    """Overrides shrinking a model to test size: 32x32 frames, patch 8, width 32, one layer."""
    return {**{f"data.{k}": v for k, v in dict(crop_size=32, short_side=32, sampling_rate=2).items()}, **fields}


_VISION = dict(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8, image_size=32)
_VIT = {f"model.kwargs.{k}": v for k, v in _VISION.items()}

TINY = {
    "vit": ("configs/videomae_finetune.py:vit_s,classes=8,frames=4,scan=False,dtype=float32", _tiny(**_VIT)),
    "videomae": ("configs/videomae_pretrain.py:vit_s,frames=4,scan=False,dtype=float32",
                 _tiny(**{f"model.kwargs.encoder.{k}": v for k, v in _VISION.items()},
                       **{"model.kwargs.decoder_width": 16, "model.kwargs.decoder_depth": 1,
                          "model.kwargs.decoder_heads": 2, "model.kwargs.decoder_mlp_dim": 32})),
    "uniformerv2": ("configs/uniformerv2_finetune.py:B/16,dataset=ssv2,classes=8,frames=4,scan=False,dtype=float32",
                    _tiny(**_VIT, **{"model.kwargs.global_layers": (0,)})),
    "internvideo2_stage2": (
        "configs/internvideo2_align.py:S,text=base,frames=4,scan=False,text_remat=none,dtype=float32",
        _tiny(**{f"model.kwargs.vision_config.{k}": v for k, v in _VISION.items()},
              **{"model.kwargs.vision_config.attn_pool_heads": 2, "model.kwargs.vision_config.clip_embed_dim": 16,
                 **{f"model.kwargs.text_config.{k}": v for k, v in dict(
                     width=32, depth=2, num_heads=2, mlp_dim=64, vocab_size=64, max_len=16, fusion_layer=1).items()},
                 "model.kwargs.embed_dim": 16, "data.tokenizer": "words", "data.text_length": 16})),
    "videotext": ("configs/internvideo_mm_pretrain.py:B/16,frames=4,scan=False,dtype=float32",
                  _tiny(**{f"model.kwargs.visual_config.{k}": v for k, v in _VISION.items()},
                        **{"model.kwargs.visual_config.global_layers": (0,),
                           "model.kwargs.text_config.width": 32, "model.kwargs.text_config.depth": 1,
                           "model.kwargs.text_config.num_heads": 2, "model.kwargs.text_config.mlp_dim": 64,
                           "model.kwargs.text_config.vocab_size": 64, "model.kwargs.text_config.context_length": 16,
                           "model.kwargs.caption_config": {"depth": 1, "num_heads": 2, "num_queries": 4},
                           "model.kwargs.embed_dim": 32, "data.tokenizer": "words", "data.text_length": 16})),
}


def _known(kind: str) -> str:
    if kind not in TINY:
        raise ValueError(f"unknown tiny model {kind!r}; known: {sorted(TINY)}")
    return kind


def get_config(kind: str):
    config, overrides = TINY[_known(kind)]
    return presets.build_config(presets.Preset(f"tiny_{kind}", config, presets.OURS, "test size", overrides=overrides))


def tiny(kind: str) -> str:
    """The model name of the tiny `kind` (this config file, absolute, with its argument)."""
    return f"{os.path.abspath(__file__)}:{_known(kind)}"


def random_variables(name: str, seed: int = 0, overrides=None) -> dict:
    """Random {'params', ['batch_stats']} of the model `name` (a preset or config file, with config `overrides` as
    `inference.load`'s), drawn from its shapes without running the initialisers (fast): N(0, 0.1) values, LayerNorm
    scales and BatchNorm variances around 1."""
    config = presets.build_config(presets.get(name), overrides=overrides)
    boxed = inference.abstract_variables(get_task(config), config)
    from tests.random_trees import draw_like  # here: the commands load this file by path, without `tests`

    shapes = {k: sharding.strip_boxes(boxed[k]) for k in ("params", "batch_stats") if boxed.get(k)}
    return draw_like(shapes, seed, std=0.1, unit_norms=True)

"""Named models for inference: a config, the checkpoint format their published weights come in, how to run them.

  python -m invideo_jax.registry list        names, parameter counts (from shapes, no weights), formats

`load(NAME, CHECKPOINT)` builds the model exactly as training does (the config's task) and reads CHECKPOINT:
  - a directory: an Orbax checkpoint of ours -- a run's workdir or its `checkpoints/` (latest step), one step,
    or what `python -m invideo_jax.convert.cli` wrote: `params`, and `batch_stats` where the model has them;
  - a file: official / Hugging Face PyTorch weights in the preset's converter format (`format=` overrides it),
    converted in memory (torch is needed except for .safetensors).
NAME may also be a single-stage config file `PATH.py[:ARG]` (its checkpoint: a directory of ours).

The loaded `InferenceModel` is data parallel over every local device (parameters replicated; `shard_params`
shards them FSDP-style instead) and gives per-clip `features` (the representation a head or a retrieval index
uses) and last-layer `tokens`, shaped (B, t, n, D):
  vit (fine-tuned VideoMAE)  the mean-pooled, fc-normed pre-logits; tokens (B, t, h*w, D)
  videomae (pre-training)    the encoder alone on every token (final norm), tokens averaged; tokens (B, t, h*w, D)
  uniformerv2                the fused (global query + frame CLS) pre-head feature; tokens (B, t, 1 + h*w, C)
  videotext                  the projected video embedding (unnormalised); tokens of the video tower as above
  internvideo2 (InternVideo2 encoder / classifier)  the attention-pooled `pooled`; tokens (B, t, h*w, D), no CLS
  distill (stage-1 checkpoint)  the `student` InternVideo2 as above, on every `frame_stride`-th frame of the clip
  align (stage-2 video-text)    the unit projected video embedding; tokens of `vision_encoder` as above
Text (videotext, align): the task's `encode_text` (align: attention mask ids != pad_id); `logit_scale`: videotext
exp(the learned log scale), align 1 / temp (clamped to the loss's [temp_min, temp_max], as in training).
"""
import argparse
import copy
import dataclasses
import fnmatch
import math
import os
import sys
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging

from invideo_jax import config_files, paths, sharding, stages
from invideo_jax.convert import cli, common
from invideo_jax.train import init_from, trainer
from invideo_jax.train.tasks import get_task
from invideo_jax.data import transforms
from invideo_jax.models.align import VideoTextAlign
from invideo_jax.models.internvideo2 import InternVideo2
from invideo_jax.models.uniformerv2 import UniFormerV2
from invideo_jax.models.vit import VisionTransformer

OURS = "ours"
CONVERTER_FORMATS = cli.FORMATS  # the converter CLI's
FORMATS = (OURS,) + CONVERTER_FORMATS
KINDS = ("vit", "videomae", "uniformerv2", "videotext", "internvideo2", "distill", "align")
INTERNVIDEO2_KINDS = ("internvideo2", "distill", "align")
TEXT_KINDS = ("videotext", "align")


@dataclasses.dataclass(frozen=True)
class Preset:
    """`config` is 'configs/FILE.py[:ARG]' (with `stage`: one stage of a pipeline config); `overrides` maps dotted
    config fields to values; `format` is what the published weights are: 'ours' or a converter format."""

    name: str
    config: str
    format: str
    description: str
    stage: str = ""
    overrides: dict = dataclasses.field(default_factory=dict)


def _tiny(**fields) -> dict:
    """Overrides shrinking a model to test size: 32x32 frames, patch 8, width 32, one layer."""
    return {**{f"data.{k}": v for k, v in dict(crop_size=32, short_side=32, sampling_rate=2).items()}, **fields}


_TINY_VISION = dict(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8, image_size=32)
_TINY_VIT = {f"model.kwargs.{k}": v for k, v in _TINY_VISION.items()}

_IV2_STUDENT_ONLY = {"model.kwargs.teacher_image": {}, "model.kwargs.teacher_video": {}, "model.kwargs.image_layers": 0,
                     "model.kwargs.video_layers": 0, "model.kwargs.image_pooled": False,
                     "model.kwargs.mask_source": "random"}

PRESETS = {p.name: p for p in [
    # ---------------------------------------------------------------- VideoMAE / VideoMAE V2 (official weights)
    Preset("videomae_vit_b_k400", "configs/videomae_finetune.py:vit_b,classes=400", "videomae",
           "VideoMAE ViT-B/16 fine-tuned on Kinetics-400, 16x224 (81.5% top-1)"),
    Preset("videomae_vit_l_k400", "configs/videomae_finetune.py:vit_l,classes=400", "videomae",
           "VideoMAE ViT-L/16 fine-tuned on Kinetics-400, 16x224 (85.2% top-1)"),
    Preset("videomae_v2_g_pretrain", "configs/videomae_pretrain.py:vit_g,v2=True", "videomae",
           "VideoMAE V2 ViT-g/14 pre-trained (vit_g_hybrid_pt_1200e); features from the encoder"),
    # ---------------------------------------------------------------- UniFormerV2 (official weights)
    Preset("uniformerv2_b16_k400", "configs/uniformerv2_finetune.py:B/16", "uniformerv2",
           "UniFormerV2-B/16 Kinetics-400, 8x224 (84.4% top-1)"),
    Preset("uniformerv2_l14_k400", "configs/uniformerv2_finetune.py:L/14", "uniformerv2",
           "UniFormerV2-L/14 Kinetics-400, 8x224 (87.7% top-1)"),
    # ---------------------------------------------------------------- InternVideo-MM video-text (official weights)
    Preset("internvideo_mm_b16", "configs/internvideo_mm_pretrain.py:B/16", "internvideo_mm",
           "InternVideo-MM-B-16 video-text model, 8x224, CLIP tokens"),
    Preset("internvideo_mm_l14", "configs/internvideo_mm_pretrain.py:L/14", "internvideo_mm",
           "InternVideo-MM-L-14 video-text model, 8x224, CLIP tokens"),
    # ---------------------------------------------------------------- InternVideo2 (official weights)
    # Stage 1: the distillation config without teachers and heads (their keys are dropped on conversion): the
    # student encoder, as `params/student`, which the stage-2 config's init_from.vision restores.
    Preset("internvideo2_1b_stage1", "configs/internvideo2_distill.py:1B", "internvideo2",
           "InternVideo2-1B stage-1 encoder (the student), 8x224; distillation heads dropped",
           overrides=_IV2_STUDENT_ONLY),
    Preset("internvideo2_1b_stage2", "configs/internvideo2_align.py:1B", "internvideo2_stage2",
           "InternVideo2-1B stage-2 video-text model (InternVideo2-stage2_1b-224p-f4.pt), 4x224, BERT-large"),
    # ---------------------------------------------------------------- the demo's models (checkpoints of `make demo`)
    Preset("demo_classifier", "configs/demo.py", OURS,
           "the demo's fine-tuned tiny ViT (runs/demo/finetune), 8x32, 8 motion classes", stage="finetune"),
    Preset("demo_videotext", "configs/demo.py", OURS,
           "the demo's tiny video-text model (runs/demo/multimodal), 8x32, word tokens", stage="multimodal"),
    Preset("demo_iv2_stage1", "configs/demo.py", OURS,
           "the demo's InternVideo2 stage-1 student (runs/demo/iv2_distill), 16x32 (the student sees 8)",
           stage="iv2_distill"),
    Preset("demo_iv2_stage2", "configs/demo.py", OURS,
           "the demo's InternVideo2 video-text model (runs/demo/iv2_align), 8x32, word tokens", stage="iv2_align"),
    Preset("demo_iv2_classifier", "configs/demo.py", OURS,
           "the demo's fine-tuned InternVideo2 (runs/demo/iv2_finetune), 8x32, 8 motion classes",
           stage="iv2_finetune"),
    # ---------------------------------------------------------------- tiny random models (tests)
    Preset("tiny_vit", "configs/videomae_finetune.py:vit_s,classes=8,frames=4,scan=False,dtype=float32", OURS,
           "test-size VideoMAE classifier, 4x32", overrides=_tiny(**_TINY_VIT)),
    Preset("tiny_videomae", "configs/videomae_pretrain.py:vit_s,frames=4,scan=False,dtype=float32", OURS,
           "test-size VideoMAE pre-training model (encoder features), 4x32",
           overrides=_tiny(**{f"model.kwargs.encoder.{k}": v for k, v in _TINY_VISION.items()},
                           **{"model.kwargs.decoder_width": 16, "model.kwargs.decoder_depth": 1,
                              "model.kwargs.decoder_heads": 2, "model.kwargs.decoder_mlp_dim": 32})),
    Preset("tiny_uniformerv2",
           "configs/uniformerv2_finetune.py:B/16,dataset=ssv2,classes=8,frames=4,scan=False,dtype=float32", OURS,
           "test-size UniFormerV2 with local UniBlocks (BatchNorm statistics), 4x32",
           overrides=_tiny(**_TINY_VIT, **{"model.kwargs.global_layers": (0,)})),
    Preset("tiny_internvideo2_stage2",
           "configs/internvideo2_align.py:S,text=base,frames=4,scan=False,text_remat=none,dtype=float32",
           "internvideo2_stage2", "test-size InternVideo2 stage-2 video-text model, 4x32, word tokens (16)",
           overrides=_tiny(**{f"model.kwargs.vision_config.{k}": v for k, v in _TINY_VISION.items()},
                           **{"model.kwargs.vision_config.attn_pool_heads": 2,
                              "model.kwargs.vision_config.clip_embed_dim": 16,
                              **{f"model.kwargs.text_config.{k}": v for k, v in dict(
                                  width=32, depth=2, num_heads=2, mlp_dim=64, vocab_size=64, max_len=16,
                                  fusion_layer=1).items()},
                              "model.kwargs.embed_dim": 16, "data.tokenizer": "words", "data.text_length": 16})),
    Preset("tiny_videotext", "configs/internvideo_mm_pretrain.py:B/16,frames=4,scan=False,dtype=float32", OURS,
           "test-size video-text model, 4x32, word tokens (16)",
           overrides=_tiny(**{f"model.kwargs.visual_config.{k}": v for k, v in _TINY_VISION.items()},
                           **{"model.kwargs.visual_config.global_layers": (0,),
                              "model.kwargs.text_config.width": 32, "model.kwargs.text_config.depth": 1,
                              "model.kwargs.text_config.num_heads": 2, "model.kwargs.text_config.mlp_dim": 64,
                              "model.kwargs.text_config.vocab_size": 64, "model.kwargs.text_config.context_length": 16,
                              "model.kwargs.caption_config": {"depth": 1, "num_heads": 2, "num_queries": 4},
                              "model.kwargs.embed_dim": 32, "data.tokenizer": "words", "data.text_length": 16})),
]}


def names() -> list:
    return sorted(PRESETS)


def get(name: str) -> Preset:
    """The preset called `name`, or an ad hoc one for a config file `PATH.py[:ARG]` (format 'ours')."""
    if name in PRESETS:
        return PRESETS[name]
    if name.partition(":")[0].endswith(".py"):
        return Preset(name, name, OURS, "config file")
    raise ValueError(f"unknown model {name!r}; known: {', '.join(names())}, or a config file PATH.py[:ARG]")


# ----------------------------------------------------------------------------------------------------------
# Configs and shapes
# ----------------------------------------------------------------------------------------------------------


def build_config(preset: Preset, workdir: str = "{workdir}", overrides=None) -> ml_collections.ConfigDict:
    """The preset's (stage) config with its overrides, then `overrides`; `{workdir}` of a pipeline stage filled."""
    config = config_files.load(preset.config)
    if "stages" in config:
        if not preset.stage:
            raise ValueError(f"{preset.config} is a pipeline of stages {tuple(config.stage_order)}: name one")
        config = stages.stage_config(config, preset.stage, workdir)
    config = copy.deepcopy(config)
    config.unlock()
    for key, value in {**preset.overrides, **(overrides or {})}.items():
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[last] = value
    config.lock()
    return config


def model_kind(config) -> str:
    if config.task == "videomae_pretrain":
        return "videomae"
    if config.task in ("videotext", "distill", "align"):
        return config.task
    if config.task == "classification" and config.model.name in ("vit", "uniformerv2", "internvideo2"):
        return config.model.name
    raise ValueError(f"inference supports task/model {KINDS}; this config has task={config.task!r}"
                     f"{', model ' + repr(config.model.name) if config.task == 'classification' else ''}")


def abstract_variables(task, config, batch_size: int = 1):
    """The task's variables as ShapeDtypeStructs, still boxed with their logical axis names (no weights)."""
    return jax.eval_shape(task.init_variables, jax.random.PRNGKey(0), trainer.batch_shapes(config, batch_size))


def count_params(name: str) -> int:
    """Parameters of a preset's model, from `jax.eval_shape` (nothing is allocated)."""
    config = build_config(get(name))
    if config.task == "videotext":
        # The video-text task checks its tokenizer's vocabulary when built (the CLIP BPE takes seconds to load);
        # counting parameters needs shapes only, so the check is skipped by naming no vocabulary.
        config = build_config(get(name), overrides={"data.tokenizer": "words", "data.tokenizer_path": ""})
    boxed = abstract_variables(get_task(config), config)
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(sharding.strip_boxes(boxed["params"])))


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def random_variables(name: str, seed: int = 0, overrides=None) -> dict:
    """Random {'params', ['batch_stats']} of a preset's model (with config `overrides`, as `load`'s), drawn from its
    shapes without running the initialisers (fast): N(0, 0.1) values, LayerNorm scales and BatchNorm variances
    around 1. For tests and dry runs."""
    config = build_config(get(name), overrides=overrides)
    boxed = abstract_variables(get_task(config), config)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        value = rng.normal(0, 0.1, leaf.shape)
        if jax.tree_util.keystr(path[-1:]).strip("[]'") in ("scale", "var"):
            value = 1 + np.abs(value)
        return value.astype(leaf.dtype)

    return {k: jax.tree_util.tree_map_with_path(draw, sharding.strip_boxes(boxed[k]))
            for k in ("params", "batch_stats") if boxed.get(k)}


def _stage_workdir(checkpoint: str, stage: str) -> str:
    """The pipeline workdir above a stage's checkpoint (`WORKDIR/STAGE/checkpoints/...`), or '{workdir}'."""
    parts = os.path.abspath(checkpoint).split(os.sep)
    if stage and stage in parts:
        return os.sep.join(parts[:len(parts) - parts[::-1].index(stage) - 1]) or os.sep
    return "{workdir}"


def _ours_dir(path: str) -> str:
    """A run's workdir -> its checkpoints directory; anything else as given."""
    return os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path


def restore(abstract: dict, checkpoint: str) -> dict:
    """{'params', ['batch_stats']} from an Orbax checkpoint of ours, into `abstract`'s shapes and shardings."""
    source = {"checkpoint": _ours_dir(checkpoint), "mapping": {"": "params"}}
    variables = {"params": init_from.restore_subtrees(abstract["params"], source)}
    if abstract.get("batch_stats"):
        stats = init_from.restore_batch_stats(abstract["batch_stats"], source)
        if any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(stats)):
            raise ValueError(f"{checkpoint} has no batch_stats for this model (it has BatchNorm statistics)")
        variables["batch_stats"] = stats
    return variables


def convert(model, checkpoint: str, fmt: str, shardings) -> dict:
    """PyTorch weights -> variables placed in `shardings`, through the converter of `fmt`."""
    try:
        variables, report = cli.convert(argparse.Namespace(format=fmt, input=checkpoint, drop=[]), model)
    except common.ConversionError as e:
        raise ValueError(f"{checkpoint} does not fit as --format={fmt}: {e}") from None
    logging.info("%s", report.summary())
    return jax.device_put({k: v for k, v in variables.items() if k in shardings}, shardings)


def load(name: str, checkpoint: str, *, format: str | None = None, shard_params: bool = False,
         overrides=None) -> "InferenceModel":
    """The preset (or config file) `name` with weights from `checkpoint` (see the module docstring).

    `overrides`: {dotted config field: value}, e.g. {'data.tokenizer_path': DIR}. `shard_params`: FSDP over the
    local devices (for models too large to replicate); the batch is split over every device either way.
    """
    preset, checkpoint = get(name), paths.resolve(checkpoint)
    fmt = format or (OURS if os.path.isdir(checkpoint) else preset.format)
    if fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; expected one of {FORMATS}")
    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    if fmt == OURS and not os.path.isdir(checkpoint):
        raise ValueError(f"{checkpoint} is a file: a checkpoint of ours is a directory; for PyTorch weights give "
                         f"a converter format, one of {CONVERTER_FORMATS}")
    config = build_config(preset, _stage_workdir(checkpoint, preset.stage), overrides)
    kind = model_kind(config)
    task = get_task(config)
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1} if shard_params else {"data": -1})
    rule_table = sharding.rules("fsdp" if shard_params else "dp")
    with jax.set_mesh(mesh), nn.logical_axis_rules(rule_table):
        batch = int(np.prod([mesh.shape[a] for a in sharding.BATCH_AXES]))
        boxed = abstract_variables(task, config, batch)
        shardings = {k: sharding.logical_shardings(boxed[k], mesh, rule_table) for k in ("params", "batch_stats")
                     if boxed.get(k)}
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            {k: sharding.strip_boxes(boxed[k]) for k in shardings}, shardings)
    if fmt == OURS:
        variables = restore(abstract, checkpoint)
    else:  # outside the mesh context: the converters trace the model on their own
        variables = convert(task.model, checkpoint, fmt, shardings)
    return InferenceModel(preset, config, kind, task, variables, mesh, rule_table)


_JITTED = {}


@dataclasses.dataclass
class InferenceModel:
    """A loaded model: clip preprocessing and jitted, data-parallel feature (and text) encoders."""

    preset: Preset
    config: Any
    kind: str
    task: Any
    variables: dict
    mesh: Any
    rules: Any

    def _jitted(self, name: str, make):
        """A jitted function shared by every model loaded with the same config and mesh (each compiles once)."""
        key = (str(self.config), self.mesh, self.rules, name)
        if key not in _JITTED:
            _JITTED[key] = make()
        return _JITTED[key]

    @property
    def model(self):
        return self.task.model

    @property
    def data(self):
        return self.config.data

    @property
    def num_frames(self) -> int:
        """Frames per clip (T) the model takes."""
        return self.data.num_frames

    @property
    def batch_multiple(self) -> int:
        """Batches must be a multiple of this: the number of devices the batch is split over."""
        return int(np.prod([self.mesh.shape[a] for a in sharding.BATCH_AXES]))

    # ------------------------------------------------------------------ clips
    def crop(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (..., H, W, 3) -> (..., S, S, 3): resized to the short side, centre crop (evaluation's view)."""
        height, width = frames.shape[-3:-1]
        box = transforms.short_side_crop_box(height, width, self.data.short_side, self.data.crop_size)
        out = transforms.resize_box(frames.reshape(-1, height, width, 3), box, self.data.crop_size)
        return out.reshape(frames.shape[:-3] + out.shape[1:])

    def normalize(self, clips: np.ndarray) -> np.ndarray:
        """uint8 crops -> the model's float32 input (the config's mean/std)."""
        return transforms.normalize(clips, self.data.normalize)

    def token_grid(self) -> tuple:
        """(t, n) of `tokens` (B, t, n, D)."""
        if self.kind in INTERNVIDEO2_KINDS:
            t, h, w = _internvideo2(self.kind, self.model)[0].grid
            return t, h * w
        if self.kind in ("uniformerv2", "videotext"):
            t, h, w = (UniFormerV2(**self.model.visual_config) if self.kind == "videotext" else self.model).grid
            return t, 1 + h * w
        t, h, w = _vit(self.kind, self.model).grid
        return t, h * w

    def encode_video(self, video: np.ndarray, tokens: bool = False) -> dict:
        """Numpy {'features', ['tokens']} of a float32 batch (B, T, S, S, 3); B a multiple of `batch_multiple`."""
        if video.shape[0] % self.batch_multiple:
            raise ValueError(f"batch of {video.shape[0]} clips: must be a multiple of {self.batch_multiple} devices")
        keys = ("features", "tokens") if tokens else ("features",)
        encode = self._jitted(f"video:{tokens}", lambda: jax.jit(
            _video_encoder(self.kind, self.model, self.token_grid(), keys),
            in_shardings=(self._variable_shardings(), sharding.batch_sharding(self.mesh))))
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            out = encode(self.variables, video)
        return jax.tree.map(np.asarray, out)

    def _variable_shardings(self):
        return jax.tree.map(lambda x: x.sharding, self.variables)

    # ------------------------------------------------------------------ text (video-text models)
    def tokenizer(self):
        self._require_videotext()
        return self.task.tokenizer()

    def encode_text(self, ids: np.ndarray) -> np.ndarray:
        """(N, E) text embeddings of token ids (N, L): the task's `encode_text` (videotext unnormalised, align unit)."""
        self._require_videotext()
        task = self.task  # not `self`: the shared function must not keep these weights alive
        encode = self._jitted("text", lambda: jax.jit(
            lambda v, ids: task.encode_text(v["params"], v.get("batch_stats"), ids),
            in_shardings=(self._variable_shardings(), sharding.replicated(self.mesh))))
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return np.asarray(encode(self.variables, np.asarray(ids, np.int32)))

    @property
    def logit_scale(self) -> float:
        """The factor on cosine similarities before a softmax: exp(learned log scale), or 1 / temperature (align,
        clamped as the loss clamps it)."""
        self._require_videotext()
        params = self.variables["params"]
        if self.kind == "align":
            return float(1 / np.clip(np.asarray(params["temp"], np.float32), self.config.loss.temp_min,
                                     self.config.loss.temp_max))
        return float(np.exp(np.asarray(params["logit_scale"])))

    def _require_videotext(self):
        if self.kind not in TEXT_KINDS:
            raise ValueError(f"{self.preset.name} is a {self.kind} model: text needs a video-text model")


def _vit(kind: str, model) -> VisionTransformer:
    """The ViT whose features a 'vit' or 'videomae' model gives (the pre-training encoder on every token)."""
    if kind == "videomae":
        return VisionTransformer(**dict(model.encoder, pool="none", num_classes=0, final_norm=True))
    return model


def _internvideo2(kind: str, model) -> tuple:
    """(the InternVideo2 encoder of an 'internvideo2' / 'distill' / 'align' model, its params subtree or '')."""
    if kind == "distill":
        return InternVideo2(**model.student), "student"
    if kind == "align":
        return InternVideo2(**dict(dict(dtype=model.dtype, param_dtype=model.param_dtype), **model.vision_config)), \
            "vision_encoder"
    return model, ""


def _video_encoder(kind: str, model, grid: tuple, keys: tuple):
    """(variables, normalised clips (B, T, S, S, 3)) -> {'features': (B, D), 'tokens': (B, t, n, D)} restricted to
    `keys`; built from the module definition only (no weights)."""

    def encode(variables, video):
        if kind == "videotext":
            from invideo_jax.models.multimodal import VideoTextModel
            features, tokens = model.apply(variables, video, method=VideoTextModel.encode_video)
        elif kind == "uniformerv2":
            out = model.apply(variables, video)
            features, tokens = out["features"], out["tokens"]
        elif kind in INTERNVIDEO2_KINDS:
            encoder, subtree = _internvideo2(kind, model)
            params = variables["params"][subtree] if subtree else variables["params"]
            out = encoder.apply({"params": params}, video[:, ::model.frame_stride] if kind == "distill" else video)
            features, tokens = out["pooled"], out["tokens"][:, 1:]  # without CLS
            if kind == "align":
                features = model.apply(variables, features, method=VideoTextAlign.video_features)
        else:
            vit = _vit(kind, model)
            params = variables["params"]["encoder"] if kind == "videomae" else variables["params"]
            out = vit.apply({"params": params}, video)
            tokens = out["tokens"][:, int(vit.cls_token):]
            features = out["pooled"] if "pooled" in out else tokens.mean(axis=1)
        out = {"features": features, "tokens": tokens.reshape(video.shape[0], *grid, tokens.shape[-1])}
        return {k: out[k] for k in keys}

    return encode


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------


def format_count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def match(patterns=()) -> list:
    """Preset names matching any of the glob `patterns` (all without patterns); none matching is an error."""
    chosen = [n for n in names() if not patterns or any(fnmatch.fnmatch(n, p) for p in patterns)]
    if not chosen:
        raise ValueError(f"no model matches {' '.join(patterns)}; known: {', '.join(names())}")
    return chosen


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m invideo_jax.registry", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="presets with parameter counts (from shapes) and checkpoint formats")
    listing.add_argument("patterns", nargs="*", help="glob patterns of names (default: all)")
    args = parser.parse_args(argv)
    try:
        chosen = match(args.patterns)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    configs = {n: PRESETS[n].config + (f" [{PRESETS[n].stage}]" if PRESETS[n].stage else "") for n in chosen}
    widths = (max(map(len, chosen)), 8, max(map(len, FORMATS)), max(map(len, configs.values())))
    row = lambda *values: "  ".join(str(v).ljust(w) for v, w in zip(values, widths + (0,))).rstrip()
    print(row("name", "params", "format", "config", "description"))
    for name in chosen:  # a row as soon as its count is known: each model is traced (about a second)
        preset = PRESETS[name]
        print(row(name, format_count(count_params(name)), preset.format, configs[name], preset.description),
              flush=True)
    print("\nformat: 'ours' = an Orbax checkpoint directory (from training or invideo_jax.convert.cli); others = "
          "PyTorch weights read by that converter (a converted directory of ours works for every model)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

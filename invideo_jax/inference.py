"""Loading a named model (invideo_jax/presets.py) for inference, and the loaded model's clip and text encoders.

`load(NAME, CHECKPOINT)` builds the model exactly as training does (the config's task) and reads CHECKPOINT:
  - a directory: an Orbax checkpoint of ours -- a run's workdir or its `checkpoints/` (latest step), one step,
    or what `python -m invideo_jax.convert.cli` wrote: `params`, and `batch_stats` where the model has them;
  - a file: official / Hugging Face PyTorch weights in the preset's converter format (`format=` overrides it),
    converted in memory (torch is needed except for .safetensors).

The loaded `InferenceModel` is data parallel over every local device (parameters replicated; `shard_params`
shards them FSDP-style instead) and delegates to its task (invideo_jax/train/tasks/), whose inference interface is:
  encode_video(params, model_state, video) -> {'features': (B, D), 'tokens': (B, t, n, D)}: per-clip features (the
      representation a head or a retrieval index uses) and last-layer tokens on the encoder's grid
      (evaluate/clip_features.py; each task's docstring says which features)
  video-text tasks also: tokenizer(), encode_text(params, model_state, ids) -> (N, E), logit_scale(params) -> float
"""
import copy
import dataclasses
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from invideo_jax import paths, presets, sharding
from invideo_jax.convert import api, common
from invideo_jax.data import pipeline, transforms
from invideo_jax.train import init_from
from invideo_jax.train.tasks import get_task


def abstract_variables(task, config, batch_size: int = 1):
    """The task's variables as ShapeDtypeStructs, still boxed with their logical axis names (no weights)."""
    return jax.eval_shape(task.init_variables, jax.random.PRNGKey(0), pipeline.batch_spec(config.data, batch_size))


def count_params(name: str) -> int:
    """Parameters of a preset's model, from `jax.eval_shape` (nothing is allocated)."""
    config = presets.build_config(presets.get(name))
    if config.data.tokenizer:
        # A text task checks its tokenizer's vocabulary when built (the CLIP BPE takes seconds to load); counting
        # parameters needs shapes only, so the check is skipped by naming no vocabulary.
        config = presets.build_config(presets.get(name), overrides={"data.tokenizer": "words",
                                                                    "data.tokenizer_path": ""})
    boxed = abstract_variables(get_task(config), config)
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(sharding.strip_boxes(boxed["params"])))


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
        variables, report = api.convert_checkpoint(checkpoint, fmt, model)
    except common.ConversionError as e:
        raise ValueError(f"{checkpoint} does not fit as --format={fmt}: {e}") from None
    logging.info("%s", report.summary())
    return jax.device_put({k: v for k, v in variables.items() if k in shardings}, shardings)


def cpu_float32(config):
    """`config` with each bfloat16 compute `dtype` of its model set to float32 (a copy). CPUs without bfloat16 matmul
    units emulate bfloat16: ViT-B 16x224 features came 23% slower than in float32 (docs/benchmarks.md). Parameters
    are float32 in both, so the same weights load."""
    config = copy.deepcopy(config)

    def walk(node):
        for key, value in node.items():
            if hasattr(value, "items"):
                walk(value)
            elif key == "dtype" and value is not None and jnp.dtype(value) == jnp.bfloat16:
                del node[key]  # a ConfigDict field keeps its first type: bfloat16's, for a dtype object
                node[key] = "float32" if isinstance(value, str) else jnp.dtype(jnp.float32)

    with config.unlocked():
        walk(config.model)
    return config


def load(name: str, checkpoint: str, *, format: str | None = None, shard_params: bool = False,
         overrides=None) -> "InferenceModel":
    """The preset (or config file) `name` with weights from `checkpoint` (see the module docstring).

    `overrides`: {dotted config field: value}, e.g. {'data.tokenizer_path': DIR}. `shard_params`: FSDP over the
    local devices (for models too large to replicate); the batch is split over every device either way. On the CPU
    backend the model computes in float32 whatever its config's `dtype` (`cpu_float32`); elsewhere as configured.
    """
    preset, checkpoint = presets.get(name), paths.resolve(checkpoint)
    fmt = format or (presets.OURS if os.path.isdir(checkpoint) else preset.format)
    if fmt not in presets.FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; expected one of {presets.FORMATS}")
    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    if fmt == presets.OURS and not os.path.isdir(checkpoint):
        raise ValueError(f"{checkpoint} is a file: a checkpoint of ours is a directory; for PyTorch weights give "
                         f"a converter format, one of {api.FORMATS}")
    config = presets.build_config(preset, _stage_workdir(checkpoint, preset.stage), overrides)
    if jax.default_backend() == "cpu":
        config = cpu_float32(config)
    task = get_task(config)
    if not hasattr(task, "encode_video"):
        raise ValueError(f"{name}: task {config.task!r} has no inference interface (encode_video); see "
                         "invideo_jax/inference.py")
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1} if shard_params else {"data": -1})
    rule_table = sharding.rules("fsdp" if shard_params else "dp")
    with jax.set_mesh(mesh), nn.logical_axis_rules(rule_table):
        batch = int(np.prod([mesh.shape[a] for a in sharding.BATCH_AXES]))
        boxed = abstract_variables(task, config, batch)
        shardings = {k: sharding.logical_shardings(boxed[k], mesh, rule_table) for k in ("params", "batch_stats")
                     if boxed.get(k)}
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            {k: sharding.strip_boxes(boxed[k]) for k in shardings}, shardings)
    if fmt == presets.OURS:
        variables = restore(abstract, checkpoint)
    else:  # outside the mesh context: the converters trace the model on their own
        variables = convert(task.model, checkpoint, fmt, shardings)
    return InferenceModel(preset, config, task, variables, mesh, rule_table)


@dataclasses.dataclass
class InferenceModel:
    """A loaded model: clip preprocessing and its task's video (and text) encoders, jitted and data parallel."""

    preset: presets.Preset
    config: Any
    task: Any
    variables: dict
    mesh: Any
    rules: Any
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)  # jitted functions and the token grid

    def _cached(self, name: str, make):
        """`make()`, called once per loaded model."""
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]

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

    def _encode(self, variables, video):
        return self.task.encode_video(variables["params"], variables.get("batch_stats"), video)

    def token_grid(self) -> tuple:
        """(t, n) of `tokens` (B, t, n, D), from the shapes the task's `encode_video` gives (nothing is computed)."""
        d = self.data
        clip = jax.ShapeDtypeStruct((1, d.num_frames, d.crop_size, d.crop_size, 3), np.float32)

        def grid():
            with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
                return tuple(jax.eval_shape(self._encode, self.variables, clip)["tokens"].shape[1:3])

        return self._cached("grid", grid)

    def encode_video(self, video: np.ndarray, tokens: bool = False) -> dict:
        """Numpy {'features', ['tokens']} of a float32 batch (B, T, S, S, 3); B a multiple of `batch_multiple`."""
        if video.shape[0] % self.batch_multiple:
            raise ValueError(f"batch of {video.shape[0]} clips: must be a multiple of {self.batch_multiple} devices")
        keys = ("features", "tokens") if tokens else ("features",)
        encode = self._cached(f"video:{tokens}", lambda: jax.jit(
            lambda v, x: {k: self._encode(v, x)[k] for k in keys},
            in_shardings=(self._variable_shardings(), sharding.batch_sharding(self.mesh))))
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            out = encode(self.variables, video)
        return jax.tree.map(np.asarray, out)

    def _variable_shardings(self):
        return jax.tree.map(lambda x: x.sharding, self.variables)

    # ------------------------------------------------------------------ text (video-text models)
    def tokenizer(self):
        self._require_text()
        return self.task.tokenizer()

    def encode_text(self, ids: np.ndarray) -> np.ndarray:
        """(N, E) text embeddings of token ids (N, L): the task's `encode_text` (videotext unnormalised, align unit)."""
        self._require_text()
        encode = self._cached("text", lambda: jax.jit(
            lambda v, ids: self.task.encode_text(v["params"], v.get("batch_stats"), ids),
            in_shardings=(self._variable_shardings(), sharding.replicated(self.mesh))))
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return np.asarray(encode(self.variables, np.asarray(ids, np.int32)))

    @property
    def logit_scale(self) -> float:
        """The factor on cosine similarities before a softmax (the task's `logit_scale`)."""
        self._require_text()
        return self.task.logit_scale(self.variables["params"])

    def _require_text(self):
        if not hasattr(self.task, "encode_text"):
            raise ValueError(f"{self.preset.name} is a {self.config.task!r} model: text needs a video-text model")

"""Named models for inference: each ties a config to the checkpoint format its published weights come in.

`python -m invideo_jax.registry list` prints them with parameter counts; `inference.load(NAME, CHECKPOINT)` loads
one. A config file `PATH.py[:ARG]` works as a name too (its checkpoint: a directory of ours). What each model gives
for inference is its task's (`config.task`) `encode_video` and, for video-text models, `encode_text`.
"""
import copy
import dataclasses

import ml_collections

from invideo_jax import config_files, stages
from invideo_jax.convert import api

OURS = "ours"
FORMATS = (OURS,) + api.FORMATS


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
]}


def names() -> list:
    return sorted(PRESETS)


def is_config_file(name: str) -> bool:
    return name.partition(":")[0].endswith(".py")


def get(name: str) -> Preset:
    """The preset called `name`, or an ad hoc one for a config file `PATH.py[:ARG]` (format 'ours')."""
    if name in PRESETS:
        return PRESETS[name]
    if is_config_file(name):
        return Preset(name, name, OURS, "config file")
    raise ValueError(f"unknown model {name!r}; known: {', '.join(names())}, or a config file PATH.py[:ARG]")


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

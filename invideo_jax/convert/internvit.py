"""The InternViT-6B image teacher of InternVideo2 stage 1 <-> our image teacher (an InternVideo2 trunk on one frame).

Format `internvit`: the file the official stage 1 loads as its `clip_teacher` (`internvl_c_13b_224px.pth`, InternVL-C:
InternViT-6B plus its QLLaMA text tower; multi_modality/models/backbones/internvideo2/internvl_clip_vision.py reads
its `module` dict into `InternVL_CLIP`, strict=False). Its vision keys sit at the root, in the InternVideo2 layout
(convert/internvideo2.py's BLOCK and POOL tables): `patch_embed.proj` (a Conv2d: weight (D, 3, p, p), which the
official inflates to (D, 3, 1, p, p)), `cls_token`, `pos_embed` (1, 1 + h*w, D), `blocks.{i}.{norm1, attn.qkv (no
bias), attn.q_norm, attn.k_norm, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}` (RMSNorm weights),
`clip_projector.*` (the attention pool to 768). Every other key (the text tower: `transformer.*`, `text_projection`,
`logit_scale`) is dropped and listed. A `pos_embed` of another resolution is resampled (spatial bicubic, CLS kept), as
the official `process_checkpoint`.

Targets: an `InternVideo2` with num_frames 1 (written as its {'params': ...}), or the stage-1 `Distiller`, whose
`teacher_image` (teacher_image_kind 'internvideo2') it builds; configs/internvideo2_distill.py's
`init_from.teacher_image` restores the result (`teacher_image` <- `params`). The official teacher runs the fused MLP
(tanh GELU: the teacher's `act` 'gelu_tanh', its default).
"""
import os

import jax

from invideo_jax.convert import common, internvideo2
from invideo_jax.convert.common import ConversionError, Format, rule, scoped
from invideo_jax.models.distill import Distiller
from invideo_jax.models.internvideo2 import InternVideo2

TEACHER = [
    rule("encoder/patch_embed/proj/kernel", "patch_embed.proj.weight", "inflated"),
    rule("encoder/patch_embed/proj/bias", "patch_embed.proj.bias", "vector"),
    *[r for r in internvideo2.ENCODER if not r.ours.startswith("encoder/patch_embed/")],
]
FORMATS = {"internvit": Format(rules=tuple(scoped(TEACHER, "params/", "")))}
VISION_KEYS = r"^(?!patch_embed\.|cls_token$|pos_embed$|blocks\.|clip_projector\.)"  # what is not vision: dropped


def teacher_model(model) -> InternVideo2:
    """The image teacher a target holds: an InternVideo2 on one frame, or a Distiller's `teacher_image`."""
    if isinstance(model, Distiller):
        if not model.teacher_image or model.teacher_image_kind != "internvideo2":
            raise ConversionError("--format=internvit converts into a Distiller's teacher_image of kind "
                                  f"'internvideo2'; this one has teacher_image_kind={model.teacher_image_kind!r} "
                                  f"and teacher_image={'set' if model.teacher_image else 'none'}")
        kw = dict(dtype=model.dtype, param_dtype=model.param_dtype)
        model = InternVideo2(**dict(kw, **dict(model.teacher_image), num_classes=0))
    if not isinstance(model, InternVideo2) or model.num_frames != 1 or model.tubelet_size != 1:
        raise ConversionError("--format=internvit converts into a one-frame InternVideo2 (num_frames 1, tubelet 1) "
                              f"or the stage-1 Distiller, not {type(model).__name__}")
    if model.num_classes:
        raise ConversionError(f"the image teacher has no classifier (num_classes={model.num_classes})")
    return model


def load_variables(checkpoint, model, fmt: str = "internvit", drop=()):
    """The teacher file (or state dict) -> ({'params': ...} of `teacher_model(model)`, internvideo2.Report)."""
    base = common.pick_format(FORMATS, fmt, "InternViT")
    teacher = teacher_model(model)
    state = common.load_file(os.fspath(checkpoint)) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    state = common.normalize_keys(state, base)
    expected = internvideo2.expected_variables(teacher)
    wanted = common.flatten(jax.eval_shape(common.scan_to_loop, expected))
    resampled = internvideo2.resample_pos_embeds(state, wanted, base, teacher.grid, src_frames=1)
    variables, report = common.convert(state, base, expected, [*drop, VISION_KEYS])
    return variables, internvideo2.Report(**vars(report), resampled=resampled)


def to_state_dict(variables) -> dict:
    """Our teacher variables (or params) -> the official vision keys (numpy; no text tower)."""
    if "params" not in variables:
        variables = {"params": variables}
    return common.export(variables, FORMATS["internvit"])


"""InternViT-6B image-teacher converter (convert/internvit.py): an official-layout teacher file (random values under the
names and torch shapes of InternVideo2's `InternVL_CLIP` / InternVL-C: 2-D patch Conv2d, `blocks.*` with RMSNorm,
QK-norm, LayerScale, no qkv bias, `clip_projector`, plus text-tower keys) converts into the one-frame InternVideo2
teacher, whose tokens and pooled feature equal the float64 numpy forward of tests/test_convert_internvideo2.py (written
from the official block and pool math; InternVL_CLIP's forward is the same per frame: CLS, pos_embed, blocks, pool).
Also: the Distiller target, the round trip, a pos_embed of another resolution, the errors.

Tolerance: max abs error <= 1e-4 (float32 model vs float64 reference; measured about 1e-6).
"""
import jax
import numpy as np
import pytest

from invideo_jax.convert import internvit
from invideo_jax.convert.common import ConversionError
from invideo_jax.models.distill import Distiller
from invideo_jax.models.internvideo2 import InternVideo2
from invideo_jax.models.posembed import resample_pos_embed
from tests.test_convert_internvideo2 import D, IMAGE, PATCH, VISION, max_err, official_forward, randomise, \
    shapes_vision

SIDE = IMAGE // PATCH
TEACHER = dict(VISION, num_frames=1, layer_scale=0.1)
TEXT_KEYS = {"transformer.embed_tokens.weight": (10, 8), "transformer.layers.0.mlp.up_proj.weight": (16, 8),
             "transformer.norm.weight": (8,), "text_projection": (8, 6), "logit_scale": ()}


def official_teacher(side=SIDE, seed=0):
    """An InternVL-C file's keys: the vision tower (Conv2d patch weight) and a few text-tower keys."""
    shapes = dict(shapes_vision(tokens=side * side), **TEXT_KEYS)
    shapes["patch_embed.proj.weight"] = (D, 3, PATCH, PATCH)
    return randomise(shapes, seed)


def images(seed=2):
    return np.random.default_rng(seed).standard_normal((2, 1, IMAGE, IMAGE, 3)).astype(np.float32)


def reference(state, frames):
    """InternVL_CLIP per frame (float64): the official forward with the Conv2d weight as its inflated Conv3d."""
    inflated = dict(state, **{"patch_embed.proj.weight": state["patch_embed.proj.weight"][:, :, None]})
    return official_forward(inflated, frames)


def test_teacher_file_matches_the_official_forward():
    state = official_teacher()
    model = InternVideo2(**TEACHER)
    variables, report = internvit.load_variables({"module": state}, model)
    assert report.dropped == sorted(TEXT_KEYS) and not report.resampled
    frames = images()
    out = jax.jit(lambda v, x: model.apply(v, x))(variables, frames)
    want = reference(state, frames)
    max_err("teacher tokens", out["tokens"], want["tokens"])
    max_err("teacher pooled", out["pooled"], want["pooled"])


def test_distiller_target_builds_its_teacher_and_round_trips():
    student = dict(VISION, num_frames=2)
    distiller = Distiller(student=student, teacher_image=TEACHER, teacher_video=None, image_layers=2, video_layers=0)
    state = official_teacher()
    variables, _ = internvit.load_variables(state, distiller)
    direct, _ = internvit.load_variables(state, InternVideo2(**TEACHER))
    assert jax.tree.structure(variables) == jax.tree.structure(direct)
    back = internvit.to_state_dict(variables)
    vision = {k: v for k, v in state.items() if k not in TEXT_KEYS}
    assert back.keys() == vision.keys() and all(np.array_equal(back[k], vision[k]) for k in vision)
    scanned, _ = internvit.load_variables(state, InternVideo2(**dict(TEACHER, scan=True)))
    assert np.array_equal(scanned["params"]["encoder"]["transformer"]["blocks"]["ls1"]["gamma"][1],
                          state["blocks.1.ls1.gamma"])


def test_pos_embed_of_another_resolution_is_resampled():
    state = official_teacher(side=SIDE + 1)
    variables, report = internvit.load_variables(state, InternVideo2(**TEACHER))
    assert report.resampled == [f"pos_embed (1, {SIDE + 1}, {SIDE + 1}) -> (1, {SIDE}, {SIDE})"]
    want = resample_pos_embed(state["pos_embed"], (1, SIDE + 1, SIDE + 1), (1, SIDE, SIDE))
    np.testing.assert_allclose(variables["params"]["encoder"]["pos_embed"], want, rtol=1e-6)


def test_errors_name_the_target_and_keys():
    state = official_teacher()
    vit_teacher = Distiller(student=dict(VISION, num_frames=2), teacher_image=dict(width=D), teacher_image_kind="vit")
    with pytest.raises(ConversionError, match="teacher_image_kind='vit'"):
        internvit.load_variables(state, vit_teacher)
    with pytest.raises(ConversionError, match="num_frames 1"):
        internvit.load_variables(state, InternVideo2(**VISION))
    missing = {k: v for k, v in state.items() if not k.startswith("clip_projector.norm1_q")}
    with pytest.raises(ConversionError, match=r"missing keys:\n    clip_projector.norm1_q"):
        internvit.load_variables(missing, InternVideo2(**TEACHER))


def test_cli_format_and_preset(tmp_path):
    import safetensors.numpy

    from invideo_jax.convert import api, cli
    state = official_teacher()
    path = tmp_path / "internvl_c.safetensors"
    safetensors.numpy.save_file({k: np.asarray(v) for k, v in state.items()}, str(path))  # logit_scale: 0-d
    distiller = Distiller(student=dict(VISION, num_frames=2), teacher_image=TEACHER, image_layers=2, video_layers=0)
    variables, report = api.convert_checkpoint(str(path), "internvit", distiller)
    direct, _ = internvit.load_variables(state, InternVideo2(**TEACHER))
    assert report.dropped == sorted(TEXT_KEYS)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(direct)))
    preset = cli.build_model(cli.parse_args(["--format=internvit", "--model=6B", "--input=x", "--output=y"]))
    assert (preset.width, preset.depth, preset.num_heads, preset.num_frames, preset.layer_scale) == (
        3200, 48, 25, 1, 0.1)


def test_clip_teacher_return_interval_picks_the_official_layers():
    from invideo_jax.models.distill import teacher_return_layers
    # the S/B/L recipe (40-layer teacher, 6 layers, interval 3.34), by hand: 39 - int(i * 3.34) for i = 0..5
    assert teacher_return_layers(40, 6, 3.34) == (23, 26, 29, 33, 36, 39)
    assert teacher_return_layers(48, 6) == (42, 43, 44, 45, 46, 47)
    # wiring: the Distiller's image_layers targets are the teacher's layers 1 and 3 (depth 4, interval 2), each
    # L2-normalised (one frame, every token visible)
    teacher = dict(TEACHER, depth=4)
    distiller = Distiller(student=dict(VISION, num_frames=1), teacher_image=teacher, teacher_video=None,
                          image_layers=2, video_layers=0, frame_stride=1, mask_source="random", mask_ratio=0.0,
                          clip_teacher_return_interval=2.0, parts="teachers")
    video = images()
    variables = distiller.init(jax.random.PRNGKey(0), video)
    target = distiller.apply(variables, video)["target"]["image_layers"]
    every = InternVideo2(**dict(teacher, return_layers=(0, 1, 2, 3))).apply(
        {"params": variables["params"]["teacher_image"]}, video)["layers"]
    want = np.stack([np.asarray(every[i]) for i in (1, 3)])
    want /= np.linalg.norm(want, axis=-1, keepdims=True)
    np.testing.assert_allclose(target, want, atol=1e-5)
    with pytest.raises(ValueError, match="too few layers for image_layers=2 every 4.0"):
        distiller.clone(clip_teacher_return_interval=4.0).init(jax.random.PRNGKey(0), video)

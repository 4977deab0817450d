"""Official InternVideo2 checkpoints <-> our InternVideo2 / Distiller / VideoTextAlign variables.

Formats:
  internvideo2         single_modality files (stage-1 pre-training, distilled S/B/L, fine-tunes): a DeepSpeed
                       `{'module': ...}` (or `{'model': ...}`) dict, keys at the root (a `module.` prefix is
                       stripped). Targets: an `InternVideo2` encoder (with `fc_norm` / `head` when it has classes:
                       the classification model `model.name=internvideo2`), or the stage-1 `Distiller`, whose
                       `student` takes the encoder and whose heads take `clip_decoder.*`, `final_clip_decoder.*`,
                       `mae_decoder.*`, `clip_pos_embed`, `mae_pos_embed` (its frozen teachers are not in these
                       files: they are neither read nor written, nor built: the heads' widths come from
                       `Distiller.head_dims`, so a `parts='student'` Distiller with `clip_teacher_embed_dim`,
                       `clip_teacher_final_dim`, `mae_teacher_embed_dim` takes any official stage-1 file; restore
                       teachers with `init_from`).
  internvideo2_stage2  multi_modality stage-2 files (`InternVideo2-stage2_1b-224p-f4.pt`, ...) <-> `VideoTextAlign`:
                       `vision_encoder.*` (the encoder above), `text_encoder.bert.*` / `text_encoder.cls.*` (the BERT
                       rules of convert/bert.py), `vision_proj`, `text_proj`, `itm_head`, `temp`; the 6B
                       audio-visual file (`InternVideo2_Stage2_audiovisual`) also `audio_encoder.*` (a BEATs: the
                       table of convert/beats.py), `audio_proj`, `av_concat_{audio,vision}_proj.{0,1}` (Linear,
                       LayerNorm), `av_fusion`, `avtm_head`, into a VideoTextAlign with `audio_config`.
  internvideo2_clip    the InternVideo2-CLIP extra file (`InternVideo2-CLIP-1B-224p-f8.pth`, ~14 MB): the attention
                       pooler it post-trained (`vision_encoder.clip_projector.*`) -> `params/clip_projector` of an
                       `InternVideo2` encoder, and nothing else (its other keys -- the InternVL-C LLaMA text tower's
                       LoRA / projection, `temp` -- have no model here and are dropped, listed). The official CLIP
                       model loads the stage-2 vision encoder, then this file over it; here: convert the stage-2 file,
                       then restore this checkpoint's `params/clip_projector` over the encoder's with a second
                       `init_from` source (docs/checkpoints.md). Video features are then the CLIP model's (InternVL-C
                       text space).

Layouts (ours <- official): Conv3d patch weight (D, 3, 1, p, p) -> kernel (1, p, p, 3, D); fused `attn.qkv.weight`
(3D, D), rows [q; k; v], no bias -> qkv kernel (D, 3, heads, hd); `attn.proj` -> (heads, hd, D); RMSNorm `norm1`,
`norm2`, `attn.q_norm`, `attn.k_norm` weights -> `scale`; `ls1.gamma`, `ls2.gamma` -> `gamma`; `clip_projector`:
LayerNorms `norm1_{q,k,v}`, `cross_attn.{q,k,v}.weight` (D, D) -> kernels (D, pool_heads, D / pool_heads) with
`cross_attn.{q,k,v}_bias` (D,) -> biases (pool_heads, D / pool_heads), `cross_attn.proj` -> (pool_heads, hd, 768).

Dropped and listed in the report (never an error): what a target has no place for -- the stage-1 distillation
heads and their position embeddings for an encoder or stage-2 target, `fc_norm` / `head` for an encoder without
classes, `img_pos_embed` for an encoder without `sep_image_video_pos_embed` (with it, it converts to
`encoder/img_pos_embed`: the one-frame table images run with), the stage-1 heads' `clip_img_pos_embed` (used only by
the UTA loss of image batches, weight 0 in the released configs), a stage-2 file's `clip_teacher.*` and
BERT's pooler, position-id buffers and tied MLM decoder (checked to equal the word embeddings /
`cls.predictions.bias`), the audio-visual file's `atm_head` (ATM, weight 0 in its configs) and a BEATs `predictor`.
An audio-visual file into a model without `audio_config` is refused, naming its audio keys.
Left at their initial values (listed): `fc_norm` / `head` of a classifier when the file has none (a pre-trained
file into a fine-tuning model; `--drop='^head\\.'` does the same for a head with another number of classes).
Position embeddings (`pos_embed`, and a Distiller's `clip_pos_embed` / `mae_pos_embed`) holding another number of
frames are resampled to the target's grid (temporal linear, then spatial bicubic, CLS kept, as the official
loaders; `posembed.resample_pos_embed`); the source grid is the target's h x w with as many frames as the table
holds, or, for another resolution, `src_frames` frames of a square grid. Saving writes the file's layout back
(without what loading dropped; the tied MLM decoder included); a resampled table is saved at the target's size.
"""
import dataclasses
import math
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from invideo_jax.convert import beats, bert, common
from invideo_jax.convert.common import ConversionError, Format, conv3d, linear, norm, rule, scoped
from invideo_jax.models import posembed
from invideo_jax.models.align import VideoTextAlign
from invideo_jax.models.audio import AudioTransformer
from invideo_jax.models.distill import Distiller
from invideo_jax.models.internvideo2 import InternVideo2

BLOCK = [  # blocks.{i}. (the fused-RMSNorm `DropoutAddRMSNorm` holds `weight` only, as the plain RMSNorm)
    rule("norm1/scale", "norm1.weight", "vector"),
    *linear("attn/qkv", "attn.qkv", bias=False),
    rule("attn/q_norm/scale", "attn.q_norm.weight", "vector"),
    rule("attn/k_norm/scale", "attn.k_norm.weight", "vector"),
    *linear("attn/proj", "attn.proj", n_in=2),
    rule("ls1/gamma", "ls1.gamma", "vector"),
    rule("norm2/scale", "norm2.weight", "vector"),
    *linear("mlp/fc1", "mlp.fc1"),
    *linear("mlp/fc2", "mlp.fc2"),
    rule("ls2/gamma", "ls2.gamma", "vector"),
]
POOL = [  # clip_projector. (AttentionPoolingBlock): bias-free q/k/v Linears plus separate bias parameters
    *norm("norm1_q", "norm1_q"),
    *norm("norm1_k", "norm1_k"),
    *norm("norm1_v", "norm1_v"),
    *[rule(f"cross_attn/{n}/kernel", f"cross_attn.{n}.weight", "linear") for n in "qkv"],
    *[rule(f"cross_attn/{n}/bias", f"cross_attn.{n}_bias", "vector") for n in "qkv"],
    *linear("cross_attn/proj", "cross_attn.proj", n_in=2),
]
ENCODER = [  # an InternVideo2 module's params (official names at a single_modality file's root)
    *conv3d("encoder/patch_embed/proj", "patch_embed.proj"),
    rule("encoder/cls_token", "cls_token"),
    rule("encoder/pos_embed", "pos_embed"),
    rule("encoder/img_pos_embed", "img_pos_embed"),
    *scoped(BLOCK, "encoder/transformer/blocks_{i}/", "blocks.{i}."),
    *scoped(POOL, "clip_projector/", "clip_projector."),
]
HEAD = [*norm("fc_norm", "fc_norm"), *linear("head", "head")]
DECODER = [  # Linear_Decoder (head, norm) / MLP_Decoder (head.0, GELU, head.2, norm)
    *linear("head", "head"), *linear("head_0", "head.0"), *linear("head_2", "head.2"), *norm("norm", "norm")]
DISTILL_HEADS = [  # a Distiller's own params besides `student` (the stage-1 file's root keys)
    rule("clip_pos_embed", "clip_pos_embed"),
    rule("mae_pos_embed", "mae_pos_embed"),
    *scoped(DECODER, "clip_decoder_{i}/", "clip_decoder.{i}."),
    *scoped(DECODER, "final_clip_decoder/", "final_clip_decoder."),
    *scoped(DECODER, "mae_decoder_{i}/", "mae_decoder.{i}."),
]
PROJECT_NORM = [*linear("dense", "0"), *norm("norm", "1")]  # nn.Sequential(Linear, LayerNorm)
AUDIO_VISUAL = [  # the 6B InternVideo2_Stage2_audiovisual's own modules (audio_encoder: a BEATs)
    *scoped(beats.ENCODER, "audio_encoder/", "audio_encoder."),
    *linear("audio_proj", "audio_proj"),
    *scoped(PROJECT_NORM, "av_concat_audio_proj/", "av_concat_audio_proj."),
    *scoped(PROJECT_NORM, "av_concat_vision_proj/", "av_concat_vision_proj."),
    *linear("av_fusion", "av_fusion"),
    *linear("avtm_head", "avtm_head"),
]
STAGE2 = [
    *scoped(ENCODER, "vision_encoder/", "vision_encoder."),
    *AUDIO_VISUAL,
    *scoped(bert.BERT, "text_encoder/", "text_encoder.bert."),
    *scoped(bert.MLM, "text_encoder/", "text_encoder."),
    *linear("vision_proj", "vision_proj"),
    *linear("text_proj", "text_proj"),
    *linear("itm_head", "itm_head"),
    rule("temp", "temp"),
]
TEXT_TIED = {"text_encoder." + k: ("text_encoder.bert." if v.startswith("embeddings.") else "text_encoder.") + v
             for k, v in bert.TIED.items()}
FORMATS = {
    "internvideo2_clip": Format(rules=tuple(scoped(POOL, "params/clip_projector/", "vision_encoder.clip_projector."))),
    "internvideo2": Format(
        rules=tuple(scoped([*ENCODER, *HEAD, *scoped(ENCODER, "student/", ""), *DISTILL_HEADS], "params/", ""))),
    "internvideo2_stage2": Format(
        rules=tuple(scoped(STAGE2, "params/", "")),
        buffers=(r"^text_encoder\.bert\.embeddings\.(position_ids|token_type_ids)$",)),
}
# Checkpoint keys a target may have no place for: dropped (and listed) unless one of our params matches the regex
# paired with them (None: never held).
OPTIONAL = {
    "internvideo2_clip": ((r"^(?!vision_encoder\.clip_projector\.)", None),),
    "internvideo2": (
        (r"^clip_decoder\.", r"^params/clip_decoder_\d+/"),
        (r"^final_clip_decoder\.", r"^params/final_clip_decoder/"),
        (r"^mae_decoder\.", r"^params/mae_decoder_\d+/"),
        (r"^clip_pos_embed$", r"^params/clip_pos_embed$"),
        (r"^mae_pos_embed$", r"^params/mae_pos_embed$"),
        (r"^(fc_norm|head)\.", r"^params/(fc_norm|head)/"),
        (r"^img_pos_embed$", r"^params/(student/)?encoder/img_pos_embed$"),
        (r"^clip_img_pos_embed$", None),
    ),
    "internvideo2_stage2": (
        (r"^vision_encoder\.(clip_decoder|final_clip_decoder|mae_decoder)\.", None),
        (r"^vision_encoder\.(clip_pos_embed|mae_pos_embed|clip_img_pos_embed)$", None),
        (r"^vision_encoder\.img_pos_embed$", r"^params/vision_encoder/encoder/img_pos_embed$"),
        (r"^vision_encoder\.(fc_norm|head)\.", None),
        (r"^clip_teacher\.", None),
        (r"^text_encoder\.bert\.pooler\.", None),
        (r"^atm_head\.", None),
        (r"^audio_encoder\.predictor\.", None),
    ),
}
# An audio-visual stage-2 file's keys, which only a VideoTextAlign with `audio_config` holds.
AUDIO_KEYS = r"^(audio_encoder|audio_proj|av_concat_audio_proj|av_fusion|avtm_head)\."
# A classifier's parts that start at init when the file holds none of their keys: (our path regex, key regex).
AT_INIT_PARTS = ((r"^params/fc_norm/", r"^fc_norm\."), (r"^params/head/", r"^head\."))
POS_EMBEDS = ("pos_embed", "clip_pos_embed", "mae_pos_embed")
TEACHERS = ("teacher_image", "teacher_video")


@dataclasses.dataclass
class Report(common.Report):
    """common.Report plus the position tables resampled and our subtrees neither read nor written."""

    resampled: list = dataclasses.field(default_factory=list)
    omitted: list = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        lines = [super().summary()]
        if self.resampled:
            lines.append(f"resampled position embeddings: {', '.join(self.resampled)}")
        if self.omitted:
            lines.append(f"not in this format, not converted (restore them with init_from): {', '.join(self.omitted)}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------------------


def vision_module(model) -> InternVideo2:
    """The InternVideo2 inside a target (itself, a Distiller's student, a VideoTextAlign's vision encoder)."""
    if isinstance(model, InternVideo2):
        return model
    if isinstance(model, Distiller):
        return InternVideo2(**dict(model.student))
    if isinstance(model, VideoTextAlign):
        return InternVideo2(**dict(model.vision_config))
    raise TypeError(f"expected an InternVideo2, Distiller or VideoTextAlign model, got {type(model).__name__}")


def init_inputs(model) -> tuple:
    """(the module, its positional inputs, its keyword inputs) whose `init` creates every param these formats hold:
    a Distiller as parts='student' taking its teachers' outputs as shapes (its teachers are never built)."""
    vision = vision_module(model)
    frames = vision.num_frames * (model.frame_stride if isinstance(model, Distiller) else 1)
    video = jax.ShapeDtypeStruct((1, frames, vision.image_size, vision.image_size, 3), jnp.float32)
    if isinstance(model, Distiller):
        return model.clone(parts="student"), (video,), {"teacher": model.teacher_shapes(1)}
    if isinstance(model, VideoTextAlign):
        audio = {}
        if model.audio_config is not None:  # one patch of frames creates every audio param
            sound = AudioTransformer(**model.audio_config)
            audio = {"audio": jax.ShapeDtypeStruct((1, sound.patch_size, sound.num_mel_bins), jnp.float32)}
        return model, (video, jax.ShapeDtypeStruct((1, 2), jnp.int32)), audio
    return model, (video,), {}


def expected_variables(model, fmt: str = "internvideo2") -> dict:
    """The abstract {'params': ...} this format converts: the whole model, except a Distiller's teachers (the
    CLIP file: the encoder's `clip_projector` only)."""
    module, args, kwargs = init_inputs(model)
    variables = common.abstract_variables(module, *args, **kwargs)
    if fmt == "internvideo2_clip":
        variables = {**variables, "params": {"clip_projector": variables["params"]["clip_projector"]}}
    return variables


def _check_target(model, fmt: str) -> None:
    if fmt == "internvideo2_stage2" and not isinstance(model, VideoTextAlign):
        raise ConversionError(f"--format=internvideo2_stage2 converts into the stage-2 VideoTextAlign "
                              f"(configs/internvideo2_align.py), not a {type(model).__name__}")
    if fmt == "internvideo2_clip" and not isinstance(model, InternVideo2):
        raise ConversionError(f"--format=internvideo2_clip converts the attention pooler into an InternVideo2 encoder "
                              f"(--model=1B), not a {type(model).__name__}")
    if isinstance(model, Distiller) and model.parts == "teachers":
        raise ConversionError("Distiller(parts='teachers') holds no student: convert into parts='all' or 'student'")
    if fmt == "internvideo2" and not isinstance(model, (InternVideo2, Distiller)):
        raise ConversionError(
            f"--format=internvideo2 converts into an InternVideo2 encoder / classifier or the stage-1 Distiller, "
            f"not a {type(model).__name__} (a stage-2 file: --format=internvideo2_stage2; a stage-1 file for "
            f"stage 2: convert it into configs/internvideo2_distill.py, whose `params/student` the align "
            f"config's init_from.vision restores)")


# ----------------------------------------------------------------------------------------------------------
# Loading and saving
# ----------------------------------------------------------------------------------------------------------


def load_variables(checkpoint, model, fmt: str = "internvideo2", drop=(), initial=None, src_frames=None):
    """A checkpoint file or state dict -> ({'params': ...}, Report) for `model` (InternVideo2, Distiller or
    VideoTextAlign; see the module docstring); raises common.ConversionError naming every missing, unexpected or
    mis-shaped key. `initial`: variables of `model` for the parts left at init (default: `model.init`, run only
    when needed); `src_frames`: the frames of the file's position table when its resolution differs too."""
    base = _format(fmt)
    _check_target(model, fmt)
    state = common.load_file(os.fspath(checkpoint)) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    state = common.normalize_keys(state, base)
    expected = expected_variables(model, fmt)
    wanted = common.flatten(jax.eval_shape(common.scan_to_loop, expected))
    drop = list(drop)
    if fmt == "internvideo2_stage2":
        audio = sorted(k for k in state if re.match(AUDIO_KEYS, k))
        if audio and model.audio_config is None:
            raise ConversionError(
                f"{audio[0]} (and {len(audio) - 1} more): an audio-visual stage-2 file (6B) needs a model with its "
                "audio encoder (configs/internvideo2_align.py with audio=beats_iter3)")
        state = beats.from_official(state, "audio_encoder.")
        _check_tied(state)
        drop += [rf"^{re.escape(k)}$" for k in TEXT_TIED]
    for key_regex, ours_regex in OPTIONAL[fmt]:
        if ours_regex is None or not any(re.search(ours_regex, p) for p in wanted):
            drop.append(key_regex)
    kept = [k for k in state if not any(re.search(d, k) for d in drop)]
    at_init = tuple(ours for ours, theirs in AT_INIT_PARTS
                    if any(re.search(ours, p) for p in wanted) and not any(re.search(theirs, k) for k in kept))
    resampled = resample_pos_embeds(state, wanted, base, vision_module(model).grid, src_frames)

    def initial_values():
        if initial is not None:
            return initial
        # Only the parts left at init are returned, so the rest of the initialisation is compiled away.
        module, args, kwargs = init_inputs(model)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (args, kwargs))
        pick = lambda v: {"params": {k: v["params"][k] for k in ("fc_norm", "head") if k in v["params"]}}
        return jax.jit(lambda key: pick(nn.meta.unbox(module.init(key, *zeros[0], **zeros[1]))))(
            jax.random.key(0, impl="rbg"))

    variables, report = common.convert(state, dataclasses.replace(base, at_init=at_init), expected, drop,
                                       initial_values)
    omitted = [f"params/{k}/" for k in TEACHERS if isinstance(model, Distiller) and model.parts == "all"
               and getattr(model, k)]
    return variables, Report(**vars(report), resampled=resampled, omitted=omitted)


def to_state_dict(variables, fmt: str = "internvideo2") -> dict:
    """Our variables (or params) -> {name: numpy array} in the official layout (a Distiller's teachers and the
    parts `load_variables` leaves at init are not written; stage 2: the tied MLM decoder is)."""
    if "params" not in variables:
        variables = {"params": variables}
    params = {k: v for k, v in variables["params"].items() if k not in TEACHERS}
    if fmt == "internvideo2_clip":
        params = {"clip_projector": params["clip_projector"]}
    out = common.export({"params": params}, _format(fmt))
    if fmt == "internvideo2_stage2":
        out.update((tied, out[source].copy()) for tied, source in TEXT_TIED.items() if source in out)
        depth = 1 + max((int(k.split(".")[3]) for k in out if k.startswith("audio_encoder.encoder.layers.")),
                        default=0)
        out = beats.to_official(out, "audio_encoder.", depth)
    return out


def resample_pos_embeds(state: dict, wanted: dict, fmt: Format, grid: tuple, src_frames) -> list:
    """Resample (in `state`) every position table whose token count differs from the target's; returns lines
    'KEY (t, h, w) -> (t', h', w')'."""
    done = []
    for path, spec in wanted.items():
        if path.rsplit("/", 1)[-1] not in POS_EMBEDS:
            continue
        key = common.find_rule(fmt.rules, path)[1][0]
        pe = state.get(key)
        if pe is None or pe.shape == tuple(spec.shape) or pe.ndim != 3 or pe.shape[::2] != spec.shape[::2]:
            continue  # absent or otherwise mis-shaped: the conversion reports it
        prefix = spec.shape[1] - math.prod(grid)  # 1 with a CLS position, 0 without
        tokens, (_, h, w) = pe.shape[1] - prefix, grid
        if src_frames:
            side = math.isqrt(max(tokens // src_frames, 0))
            src = (src_frames, side, side)
        else:
            src = (tokens // (h * w), h, w)
        if tokens <= 0 or math.prod(src) != tokens:
            what = f"{src_frames} frames of a square grid" if src_frames else f"frames of {h}x{w} positions"
            hint = "" if src_frames else "; for another resolution give the file's frames (src_frames)"
            raise ConversionError(f"{key} {pe.shape}: its {tokens} positions are not {what} (the model expects "
                                  f"{tuple(spec.shape)}, grid {tuple(grid)}){hint}")
        state[key] = posembed.resample_pos_embed(pe, src, grid).astype(pe.dtype)
        done.append(f"{key} {src} -> {tuple(grid)}")
    return done


def _check_tied(state: dict) -> None:
    for tied, source in TEXT_TIED.items():
        if tied in state and source in state and not np.array_equal(state[tied], state[source]):
            raise ConversionError(f"{tied} differs from {source}: the text encoder ties its MLM decoder to it")


def _format(fmt: str) -> Format:
    return common.pick_format(FORMATS, fmt, "InternVideo2")

"""The converters as a library: PyTorch weights of a format -> our variables, written as an Orbax checkpoint.

  model = preset_model("videomae", "B/16", num_classes=400)        # or any model, e.g. get_task(config).model
  variables, report = convert_checkpoint("vit_b_k400_ft.pth", "videomae", model)
  save(variables, "/tmp/videomae_b_k400")

`convert_checkpoint` takes the whole model a config builds and converts into the part the format holds
(`part_for`): `bert_hf` the text encoder of a VideoTextAlign, `beats` its audio encoder. The command line
(convert/cli.py) and the inference loader (invideo_jax/inference.py) both call it.
"""
import os

from invideo_jax import paths, sizes
from invideo_jax.convert import beats, bert, clip, internvideo2, internvit, videomae
from invideo_jax.models.align import VideoTextAlign
from invideo_jax.models.audio import AUDIO_SIZES, AudioTransformer
from invideo_jax.models.bert import Bert
from invideo_jax.models.internvideo2 import InternVideo2
from invideo_jax.models.videomae import VideoMAE
from invideo_jax.models.vit import VisionTransformer

BERT_FORMATS = ("bert_hf",)  # convert/bert.py's `internvideo2` text-only reading is part of internvideo2_stage2
FORMATS = tuple(sorted([*videomae.FORMATS, *clip.FORMATS, *internvideo2.FORMATS, *internvit.FORMATS, *beats.FORMATS,
                        *BERT_FORMATS]))
CONFIG_ONLY_FORMATS = (*clip.FORMATS, *BERT_FORMATS, "internvideo2_stage2")  # no size preset builds their model
BEATS_MEL_BINS = 128  # BEATs' own filterbank (a preset's num_mel_bins; the parameters do not depend on it)
DEFAULT_FRAMES = {"internvideo2": 8, "internvideo2_clip": 8, "internvit": 1}  # preset frames by format (else 16)
READERS = {fmt: module for module, formats in ((clip, clip.FORMATS), (internvit, internvit.FORMATS),
                                               (beats, beats.FORMATS), (bert, BERT_FORMATS)) for fmt in formats}


def preset_model(fmt: str, size: str, *, kind: str = "finetune", num_classes: int = 0, num_frames: int | None = None,
                 image_size: int = 224, scan: bool = False):
    """The model a file of `fmt` converts into, from a size: VideoMAE `SIZE/PATCH` (`kind` 'pretrain' with its
    decoder, or 'finetune' with `num_classes`), an InternVideo2 size (S, B, L, 1B, 6B; `internvit` the one-frame
    image teacher), a BEATs-style audio size (AUDIO_SIZES). `num_frames` defaults to DEFAULT_FRAMES (else 16)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if fmt in beats.FORMATS:
        if size not in AUDIO_SIZES:
            raise ValueError(f"--format=beats needs a config file or an audio size {sorted(AUDIO_SIZES)}, "
                             f"got {size!r}")
        return AudioTransformer(**AUDIO_SIZES[size], num_mel_bins=BEATS_MEL_BINS, scan=scan)
    if fmt in CONFIG_ONLY_FORMATS:
        raise ValueError(f"--format={fmt} needs a config file --model=PATH[:ARG], e.g. "
                         "configs/uniformerv2_finetune.py:B/16, configs/internvideo_mm_pretrain.py:B/16 or "
                         "configs/internvideo2_align.py:1B")
    frames = num_frames or DEFAULT_FRAMES.get(fmt, 16)
    if fmt == "internvit":  # the image teacher as configs/internvideo2_distill.py builds it
        return InternVideo2(**sizes.internvideo2_encoder(size, frames=1, image_size=image_size, scan=scan,
                                                         layer_scale=0.1))
    if fmt in ("internvideo2", "internvideo2_clip"):
        return InternVideo2(**sizes.internvideo2_encoder(size, frames=frames, image_size=image_size, scan=scan,
                                                         num_classes=num_classes))
    encoder = sizes.vit_encoder(size, num_frames=frames, image_size=image_size, scan=scan)
    if kind == "pretrain":
        name = sizes.decode_variant(size)[0]
        if name not in sizes.DECODER_SIZES:
            raise ValueError(f"no pre-training decoder for size {name!r}; known: {sorted(sizes.DECODER_SIZES)}")
        return VideoMAE(encoder=encoder, **sizes.DECODER_SIZES[name])
    return VisionTransformer(**encoder, pool="mean", final_norm=False, num_classes=num_classes)


def part_for(fmt: str, model):
    """The part of `model` a file of `fmt` holds: its text encoder (bert_hf), its audio encoder (beats), else all."""
    if fmt in BERT_FORMATS:
        return text_encoder(model)
    if fmt in beats.FORMATS:
        return audio_encoder(model)
    return model


def text_encoder(model) -> Bert:
    """The Bert a config's model holds as its text encoder (VideoTextAlign: with its fusion layers and MLM head)."""
    if isinstance(model, Bert):
        return model
    if isinstance(model, VideoTextAlign):
        kw = dict(dtype=model.dtype, param_dtype=model.param_dtype)
        return Bert(**dict(kw, **model.text_config, encoder_width=model.av_concat_dim or model.vision_config["width"],
                            mlm_head=True))
    raise ValueError(f"--format=bert_hf converts into a BERT text encoder; this config builds a "
                     f"{type(model).__name__} (use e.g. configs/internvideo2_align.py:1B)")


def audio_encoder(model) -> AudioTransformer:
    """The AudioTransformer a config's model holds (VideoTextAlign with `audio_config`)."""
    if isinstance(model, AudioTransformer):
        return model
    if isinstance(model, VideoTextAlign) and model.audio_config is not None:
        return AudioTransformer(**dict(dict(dtype=model.dtype, param_dtype=model.param_dtype), **model.audio_config))
    raise ValueError(f"--format=beats converts into an audio encoder; this config builds a {type(model).__name__} "
                     "without one (use e.g. configs/internvideo2_align.py:6B,audio=beats_iter3)")


def convert_checkpoint(path: str, fmt: str, model, *, drop=(), src_frames: int | None = None):
    """(variables {'params': ..., ['batch_stats': ...]}, common.Report) of the file `path` read as `fmt` into
    `model`'s part (`part_for`). `drop`: regexes of checkpoint keys to ignore; `src_frames`: internvideo2 formats,
    the frames of the file's pos_embed when its resolution differs from the model's.
    Raises common.ConversionError when the file does not fit."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    model, drop = part_for(fmt, model), list(drop)
    if fmt in videomae.FORMATS:
        params, report = videomae.load_params(path, model, fmt, drop)
        return {"params": params}, report
    if fmt in internvideo2.FORMATS:
        return internvideo2.load_variables(path, model, fmt, drop, src_frames=src_frames)
    return READERS[fmt].load_variables(path, model, fmt, drop)


def save(variables, output_dir: str) -> str:
    """Writes `variables` as step 0 of `CheckpointManager(output_dir, item_names=('state',))`; returns its path."""
    import orbax.checkpoint as ocp
    output_dir = paths.resolve(output_dir)
    manager = ocp.CheckpointManager(output_dir, item_names=("state",))
    manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(variables)))
    manager.wait_until_finished()
    manager.close()
    return os.path.join(output_dir, "0")

"""Convert a PyTorch checkpoint into an Orbax checkpoint laid out like our training checkpoints.

python -m invideo_jax.convert.cli --format=videomae --model=configs/videomae_pretrain.py:vit_b --input=F --output=DIR
python -m invideo_jax.convert.cli --format=videomae_hf --model=B/16 --kind=finetune --num_classes=400 ...
python -m invideo_jax.convert.cli --format=clip_hf --model=configs/internvideo_mm_pretrain.py:B/16 --input=F ...
python -m invideo_jax.convert.cli --format=internvideo2 --model=1B --num_frames=8 --input=F --output=DIR
python -m invideo_jax.convert.cli --format=internvideo2_stage2 --model=configs/internvideo2_align.py:1B --input=F ...
python -m invideo_jax.convert.cli --format=internvideo2_clip --model=1B --input=F --output=DIR
python -m invideo_jax.convert.cli --format=internvit --model=configs/internvideo2_distill.py:1B --input=F ...
python -m invideo_jax.convert.cli --format=bert_hf --model=configs/internvideo2_align.py:1B --input=F ...
python -m invideo_jax.convert.cli --format=beats --model=configs/internvideo2_align.py:6B,audio=beats_iter3 ...

`--model` is a training config file `PATH[:ARG]` (the model its task builds, so scanning matches the run that
restores it) or a preset: for the VideoMAE formats `SIZE/PATCH`, for `internvideo2` an InternVideo2 size (S, B, L,
1B, 6B; the encoder, or a classifier with --num_classes; `internvideo2_clip` writes only its `clip_projector`;
`internvit`: the one-frame image teacher, or with the distill config its Distiller's `teacher_image`).
`bert_hf` converts into the text encoder of the config's model (a VideoTextAlign: BERT with its fusion layers, whose
cross-attention starts at init); `beats` into its audio encoder (or a preset: an AUDIO_SIZES row, `beats_iter3`,
at BEATs' 128 mel bins). The output is step 0 of
`CheckpointManager(DIR, item_names=('state',))` holding {'params': ...} (and 'batch_stats' for UniFormerV2 models
with local UniBlocks).
"""
import argparse
import os
import sys

from invideo_jax import config_files, paths, sizes
from invideo_jax.convert import beats, bert, clip, common, internvideo2, internvit, videomae
from invideo_jax.models.align import VideoTextAlign
from invideo_jax.models.audio import AUDIO_SIZES, AudioTransformer
from invideo_jax.models.bert import Bert
from invideo_jax.models.internvideo2 import InternVideo2
from invideo_jax.models.videomae import VideoMAE
from invideo_jax.models.vit import VisionTransformer

BERT_FORMATS = ("bert_hf",)  # convert/bert.py's `internvideo2` text-only reading is part of internvideo2_stage2
FORMATS = tuple(sorted([*videomae.FORMATS, *clip.FORMATS, *internvideo2.FORMATS, *internvit.FORMATS, *beats.FORMATS,
                        *BERT_FORMATS]))
BEATS_MEL_BINS = 128  # BEATs' own filterbank (a preset's num_mel_bins; the parameters do not depend on it)
DEFAULT_FRAMES = {"internvideo2": 8, "internvideo2_clip": 8, "internvit": 1}  # preset --num_frames by format (else 16)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="invideo-convert", description=__doc__.splitlines()[0])
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--model", "--config", dest="model", required=True,
                        help="config file PATH[:ARG], or a preset: SIZE/PATCH for VideoMAE (B/16), "
                        "SIZE for internvideo2 (1B)")
    parser.add_argument("--input", required=True, help=".pth/.bin/.pt (torch.save) or .safetensors file")
    parser.add_argument("--output", required=True, help="directory of the Orbax checkpoint")
    parser.add_argument("--kind", choices=("pretrain", "finetune"), default="finetune", help="preset only")
    parser.add_argument("--num_classes", type=int, default=0, help="preset only (finetune)")
    parser.add_argument("--num_frames", type=int, default=None,
                        help="preset only (default 16; internvideo2: 8, the stage-1 files' own frames)")
    parser.add_argument("--image_size", type=int, default=224, help="preset only")
    parser.add_argument("--scan", action="store_true", help="preset only: scanned (stacked) layers")
    parser.add_argument("--drop", action="append", default=[], help="regex of checkpoint keys to ignore (repeatable)")
    parser.add_argument("--src_frames", type=int, default=None,
                        help="internvideo2 formats: frames of the file's pos_embed, needed when its resolution "
                        "differs from the model's (other frame counts are inferred and resampled)")
    return parser.parse_args(argv)


def build_model(args):
    if args.model.partition(":")[0].endswith(".py"):
        from invideo_jax.train.tasks import get_task
        model = get_task(config_files.load(args.model)).model
        if args.format in beats.FORMATS:
            return audio_encoder(model)
        return text_encoder(model) if args.format in BERT_FORMATS else model
    if args.format in beats.FORMATS:
        if args.model not in AUDIO_SIZES:
            raise ValueError(f"--format=beats needs a config file or an audio size {sorted(AUDIO_SIZES)}, "
                             f"got {args.model!r}")
        return AudioTransformer(**AUDIO_SIZES[args.model], num_mel_bins=BEATS_MEL_BINS, scan=args.scan)
    if args.format in (*clip.FORMATS, *BERT_FORMATS, "internvideo2_stage2"):
        raise ValueError(f"--format={args.format} needs a config file --model=PATH[:ARG], e.g. "
                         "configs/uniformerv2_finetune.py:B/16, configs/internvideo_mm_pretrain.py:B/16 or "
                         "configs/internvideo2_align.py:1B")
    frames = args.num_frames or DEFAULT_FRAMES.get(args.format, 16)
    if args.format == "internvit":  # the image teacher as configs/internvideo2_distill.py builds it
        return InternVideo2(**sizes.internvideo2_encoder(args.model, frames=1, image_size=args.image_size,
                                                         scan=args.scan, layer_scale=0.1))
    if args.format in ("internvideo2", "internvideo2_clip"):
        return InternVideo2(**sizes.internvideo2_encoder(args.model, frames=frames, image_size=args.image_size,
                                                         scan=args.scan, num_classes=args.num_classes))
    encoder = sizes.vit_encoder(args.model, num_frames=frames, image_size=args.image_size, scan=args.scan)
    if args.kind == "pretrain":
        size = sizes.decode_variant(args.model)[0]
        if size not in sizes.DECODER_SIZES:
            raise ValueError(f"no pre-training decoder for size {size!r}; known: {sorted(sizes.DECODER_SIZES)}")
        return VideoMAE(encoder=encoder, **sizes.DECODER_SIZES[size])
    return VisionTransformer(**encoder, pool="mean", final_norm=False, num_classes=args.num_classes)


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


def convert(args, model):
    """(variables {'params': ..., ['batch_stats': ...]}, common.Report) read from args.input."""
    if args.format in clip.FORMATS:
        return clip.load_variables(args.input, model, args.format, args.drop)
    if args.format in internvit.FORMATS:
        return internvit.load_variables(args.input, model, args.format, args.drop)
    if args.format in beats.FORMATS:
        return beats.load_variables(args.input, model, args.format, args.drop)
    if args.format in BERT_FORMATS:
        return bert.load_variables(args.input, text_encoder(model), args.format, args.drop)
    if args.format in internvideo2.FORMATS:
        return internvideo2.load_variables(args.input, model, args.format, args.drop,
                                           src_frames=getattr(args, "src_frames", None))
    params, report = videomae.load_params(args.input, model, args.format, args.drop)
    return {"params": params}, report


def save(variables, output_dir: str) -> str:
    import orbax.checkpoint as ocp
    output_dir = paths.resolve(output_dir)
    manager = ocp.CheckpointManager(output_dir, item_names=("state",))
    manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(variables)))
    manager.wait_until_finished()
    manager.close()
    return os.path.join(output_dir, "0")


def main(argv) -> int:
    args = parse_args(argv)
    args.input, args.output = paths.resolve(args.input), paths.resolve(args.output)
    try:
        model = build_model(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        variables, report = convert(args, model)
    except (common.ConversionError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"wrote {save(variables, args.output)}")
    return 0


def run():
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    run()

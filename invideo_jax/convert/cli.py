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
with local UniBlocks). In Python: invideo_jax/convert/api.py (this command is a thin wrapper over it).
"""
import argparse
import sys

from invideo_jax import config_files, paths
from invideo_jax.convert import api, common


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="invideo-convert", description=__doc__.splitlines()[0])
    parser.add_argument("--format", required=True, choices=api.FORMATS)
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
    """The model `--model` names: a config file's (its task builds it), or `api.preset_model` from a size."""
    if args.model.partition(":")[0].endswith(".py"):
        from invideo_jax.train.tasks import get_task
        return api.part_for(args.format, get_task(config_files.load(args.model)).model)
    return api.preset_model(args.format, args.model, kind=args.kind, num_classes=args.num_classes,
                            num_frames=args.num_frames, image_size=args.image_size, scan=args.scan)


def main(argv) -> int:
    args = parse_args(argv)
    args.input, args.output = paths.resolve(args.input), paths.resolve(args.output)
    try:
        model = build_model(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        variables, report = api.convert_checkpoint(args.input, args.format, model, drop=args.drop,
                                                   src_frames=args.src_frames)
    except (common.ConversionError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"wrote {api.save(variables, args.output)}")
    return 0


def run():
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    run()

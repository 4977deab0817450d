"""UniFormerV2 fine-tuning of a CLIP ViT on Kinetics (global UniBlocks only) or Something-Something V2 (all UniBlocks).

  python -m invideo_jax.main --config=configs/uniformerv2_finetune.py:B/16,dataset=kinetics --workdir=$WORKDIR \
      --config.data.train_annotations=k400/train.csv --config.data.eval_annotations=k400/val.csv \
      --config.data.root=k400/videos --config.init_from.checkpoint=$CHECKPOINT

ARG: the variant (B/16, L/14, L/14@336) then options: dataset=kinetics|ssv2, classes, frames, epochs, batch
(global), train_size (videos in the list, for the schedule) -- 0 takes the dataset's default below --, frozen=False
(no fusion weight, backbone frozen by the optimiser), scan=True, remat=none|full|dots, dtype. The default
`init_from` mapping restores `backbone` from `params/visual/backbone`; pass `--config.init_from.mapping` for
other checkpoint layouts (the CLIP weights themselves come through a converter).

Recipe (official run.sh; SlowFast lr is not scaled by batch): AdamW (0.9, 0.999), eps 1e-8, wd 0.05 (none on 1-D
parameters), cosine to 1e-6 after linear warm-up from 1e-6; sparse 'segment' sampling, RandAugment m7-n4, random
resized crop (area 0.08-1), no mixup / label smoothing / random erasing, UniFormer normalisation (0.45 / 0.225),
dropout 0.5 in the global MLPs and before the head; softmax averaged over test views.
  kinetics: global blocks after the last 4 layers, no local blocks or temporal downsampling, 8 frames, 400
    classes, lr 1e-5, batch 256, 55 epochs (5 warm-up), flip, test 4 clips x 3 crops.
  ssv2: local blocks (double LMHRA, reduction 1.5), temporal downsampling, global blocks after layers 4-11 (B) /
    8-23 (L), drop-path 0.2 (backbone) / 0.4 (global), 16 frames, 174 classes, lr 4e-5 (B) / 2e-5 (L), batch 128,
    22 epochs (5 warm-up), no flip, test 1 clip x 3 crops.
Expect top-1 (published, from CLIP-400M): Kinetics-400 84.4 (B/16, 8x3x4), 87.7 (L/14); with K710 post-pretraining
85.6 (B/16), 88.8 (L/14, 8 frames), 89.7 (L/14@336, 32 frames). SSv2: 69.5 (B/16, 16 frames), 72.1 (L/14, 16).

Fits (TPU compiler via `python -m invideo_jax.aot`, docs/scale.md; bf16, remat=full, FSDP over every chip): L/14 with
710 classes at batch 512 on v5e-16 with `--config.grad_accum_steps=2` (16 clips per chip, peak 12.3 of 16 GiB).
"""
from configs import common

DATASETS = {
    "kinetics": dict(classes=400, frames=8, epochs=55, batch=256, train_size=240436),
    "ssv2": dict(classes=174, frames=16, epochs=22, batch=128, train_size=168913),
}


def model_config(variant: str, *, ssv2: bool, frames: int, **overrides) -> dict:
    """UniFormerV2 kwargs of the released designs: SSv2 (local + global UniBlocks, temporal downsampling) or
    Kinetics (global UniBlocks on the last four layers only)."""
    size = common.CLIP_VISION_SIZES[variant]
    depth = size["depth"]
    num_global = depth * 2 // 3 if ssv2 else 4  # SSv2: layers 4-11 (B) / 8-23 (L); Kinetics: the last four
    return dict(size, num_frames=frames, temporal_downsample=ssv2, local_blocks=ssv2, local_reduction=1.5,
                global_layers=tuple(range(depth - num_global, depth)), global_mlp_dropout=0.5,
                drop_path=0.2 if ssv2 else 0.0, global_drop_path=0.4 if ssv2 else 0.0, **overrides)


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="B/16", dataset="kinetics", classes=0, frames=0, epochs=0, batch=0,
                           train_size=0, frozen=False, scan=True, remat="full", dtype="bfloat16")
    if arg.variant not in common.CLIP_VISION_SIZES:
        raise ValueError(f"unknown variant {arg.variant!r}; expected one of {sorted(common.CLIP_VISION_SIZES)}")
    if arg.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {arg.dataset!r}; expected one of {sorted(DATASETS)}")
    for key, default in DATASETS[arg.dataset].items():
        arg[key] = arg[key] or default
    size = common.CLIP_VISION_SIZES[arg.variant]
    depth, ssv2 = size["depth"], arg.dataset == "ssv2"
    model = model_config(arg.variant, ssv2=ssv2, frames=arg.frames, frozen=arg.frozen, num_classes=arg.classes,
                         head_dropout=0.5, scan=arg.scan, remat=arg.remat, dtype=arg.dtype)
    c = common.train_config("classification", model, model_name="uniformerv2")
    steps_per_epoch = max(arg.train_size // arg.batch, 1)
    c.batch_size = arg.batch
    c.mesh.update(dict(data=1, fsdp=-1))  # FSDP over every chip (docs/scale.md)
    c.total_steps = arg.epochs * steps_per_epoch
    c.checkpoint_every = steps_per_epoch
    c.data.update(dict(num_frames=arg.frames, sampling="segment", crop_size=size["image_size"],
                       short_side=size["image_size"], train_crop="rrc", rrc_scale=(0.08, 1.0), rrc_ratio=(0.75, 4 / 3),
                       flip=not ssv2, randaug="rand-m7-n4-mstd0.5-inc1", num_classes=arg.classes,
                       normalize="uniformer", eval_clips=1 if ssv2 else 4, eval_crops=3, workers=8))
    lr = (4e-5 if depth == 12 else 2e-5) if ssv2 else 1e-5
    c.optim.update(dict(base_lr=lr, lr_batch_denom=0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05,
                        warmup_steps=5 * steps_per_epoch, warmup_lr=1e-6, min_lr=1e-6))
    if arg.frozen:
        c.optim.frozen = (r"backbone/(conv1|class_embedding|positional_embedding|ln_pre|transformer)(/|$)",)
    return c

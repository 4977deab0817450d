"""VideoMAE supervised fine-tuning / post-pretraining of a video ViT (mean-pool + fc_norm + head).

  python -m invideo_jax.main --config=configs/videomae_finetune.py:vit_b --workdir=$WORKDIR \
      --config.data.train_annotations=k400/train.csv --config.data.eval_annotations=k400/val.csv \
      --config.data.root=k400/videos --config.init_from.checkpoint=$PRETRAIN_WORKDIR/checkpoints

ARG: the variant (vit_s, vit_b, vit_l, vit_h, vit_g) then options: classes=400, epochs=75, batch=384 (global),
train_size=240436, frames=16, flip=True (False for SSv2), scan=True, remat=full|none|dots, dtype=bfloat16,
attn=auto|xla|tpu_flash (the attention kernel).

Recipe (official scripts, ViT-B K400): AdamW (0.9, 0.999), lr 5e-4 x batch/256 (1e-3 for the 800-epoch
checkpoint), wd 0.05, 5 warm-up epochs, min lr 1e-6, layer decay 0.75, drop-path 0.1, RandAugment m7-n4, random
resized crop, random erasing 0.25, mixup 0.8 / cutmix 1.0, label smoothing 0.1; test 5 clips x 3 crops with
softmax averaged. Expect about 81.5% top-1 on Kinetics-400 from the 1600-epoch ViT-B (paper).

Fits (TPU compiler via `python -m invideo_jax.aot`, docs/scale.md) with the defaults (bf16, remat=full, FSDP over
every chip, 1568 tokens): ViT-B on v5e-4 with 4 clips per chip per microbatch peaks at 2.06 GiB per chip (XLA
attention) and 1.25 GiB with `attn=tpu_flash`; the paper batch 384 puts 24 clips on each chip of a v5e-16, so use
`--config.grad_accum_steps=6` there (4 clips per chip, as compiled). ViT-L / H at paper batch were not compiled.
"""
from configs import common
from configs.videomae_pretrain import VARIANTS


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="vit_b", classes=400, epochs=75, batch=384, train_size=240436, frames=16,
                           flip=True, scan=True, remat="full", dtype="bfloat16", attn="auto")
    if arg.variant not in VARIANTS:
        raise ValueError(f"unknown variant {arg.variant!r}; expected one of {sorted(VARIANTS)}")
    model = common.vit_encoder(VARIANTS[arg.variant], num_frames=arg.frames, final_norm=False, pool="mean",
                               num_classes=arg.classes, drop_path=0.1, scan=arg.scan, remat=arg.remat,
                               dtype=arg.dtype, attn_impl=arg.attn)
    c = common.train_config("classification", model)
    steps_per_epoch = max(arg.train_size // arg.batch, 1)
    c.batch_size = arg.batch
    c.mesh.update(dict(data=1, fsdp=-1))  # FSDP over every chip (docs/scale.md)
    c.total_steps = arg.epochs * steps_per_epoch
    c.checkpoint_every = steps_per_epoch
    c.data.update(dict(num_frames=arg.frames, sampling_rate=4, crop_size=224, short_side=224, train_crop="rrc",
                       flip=arg.flip, randaug="rand-m7-n4-mstd0.5-inc1", random_erase=0.25, mixup=0.8, cutmix=1.0,
                       label_smoothing=0.1, num_classes=arg.classes, normalize="imagenet", eval_clips=5,
                       eval_crops=3, workers=8))
    c.optim.update(dict(base_lr=5e-4, b1=0.9, b2=0.999, weight_decay=0.05, warmup_steps=5 * steps_per_epoch,
                        min_lr=1e-6, layer_decay=0.75, num_layers=model["depth"]))
    return c

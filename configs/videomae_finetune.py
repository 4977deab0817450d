"""VideoMAE supervised fine-tuning / post-pretraining of a video ViT (mean-pool + fc_norm + head).

  python -m invideo_jax.main --config=configs/videomae_finetune.py:vit_b --workdir=$WORKDIR \
      --config.data.train_annotations=k400/train.csv --config.data.eval_annotations=k400/val.csv \
      --config.data.root=k400/videos --config.init_from.checkpoint=$PRETRAIN_WORKDIR/checkpoints

ARG: the variant (vit_s, vit_b, vit_l, vit_h, vit_g) then options: dataset=k400|ssv2 (the official recipe of that
size and dataset, `RECIPES`), classes, epochs, batch (global clips), lr (base, x batch/256), drop_path,
layer_decay (each defaults to the recipe's), train_size=240436 (SSv2: 168913), frames=16, scan=True,
remat=full|none|dots, dtype=bfloat16, attn=auto|xla|tpu_flash (the attention kernel).

Recipes (official MCG-NJU/VideoMAE `scripts/*/finetune.sh`, 64 GPUs unless noted, all with `--num_sample 2`
repeated augmentation; the batch here counts clips, and these presets decode one clip per video: add
`--config.data.num_sample=2 --config.batch_size=<2 x batch> --config.optim.lr_batch_denom=512` for the official
layout, two augmented clips per decoded video at the official learning rate):
  K400 (dense 16x4 sampling, test 5 clips x 3 crops)
    vit_s  lr 5e-4, 150 ep, batch 12 x 32 GPUs, drop-path 0.1, layer decay 0.75
    vit_b  lr 5e-4, 75 ep (1600-ep model; 1e-3 and 100 ep for the 800-ep one), drop-path 0.1, layer decay 0.75
    vit_l  lr 2e-3, 35 ep, batch 2 x 64, drop-path 0.1 (the script's default), layer decay 0.75
    vit_h  lr 1e-3, 50 ep, batch 8 x 64, drop-path 0.2, layer decay 0.75, min lr 1e-5, head dropout 0.5
  SSv2 (segment sampling: one frame per 16 equal parts, no flip, test 2 clips x 3 crops, 174 classes)
    vit_b  lr 5e-4, 30 ep (2400-ep model), batch 6 x 64, drop-path 0.1, layer decay 0.75
Every recipe: AdamW (0.9, 0.999), wd 0.05, 5 warm-up epochs, min lr 1e-6 (H: 1e-5), RandAugment m7-n4, random
resized crop, random erasing 0.25, mixup 0.8 / cutmix 1.0, label smoothing 0.1, softmax averaged over views.
Official top-1 (MODEL_ZOO.md at commit 26abf53): K400 ViT-B 80.9 (1600-ep pre-training), ViT-L 84.7; SSv2 ViT-B
70.6 (2400 ep). The paper reports K400 ViT-B 81.5 with a later recipe. No stored MODEL_ZOO row for S, H or
SSv2 L. The other sizes/datasets (vit_g; ssv2 with s/l/h) take the ViT-B values of their dataset.

Fits (TPU compiler via `python -m invideo_jax.aot`, docs/scale.md) with the defaults (bf16, remat=full, FSDP over
every chip, 1568 tokens): ViT-B on v5e-4 with 4 clips per chip per microbatch peaks at 2.06 GiB per chip (XLA
attention) and 1.25 GiB with `attn=tpu_flash`; the paper batch 384 puts 24 clips on each chip of a v5e-16, so use
`--config.grad_accum_steps=6` there (4 clips per chip, as compiled); at paper batch, ViT-B 384 on v5e-16 with
`grad_accum_steps=2` (12 clips, 4.4 GiB), ViT-L 128 on v5e-16 (8 clips, 4.4 GiB), ViT-H 384 on v5e-32 with
`grad_accum_steps=2` (6 clips, 4.4 GiB).
"""
from configs import common
from configs.videomae_pretrain import VARIANTS

# (dataset, variant) -> the official script's values; a missing pair takes (dataset, 'vit_b').
RECIPES = {
    ("k400", "vit_s"): dict(lr=5e-4, epochs=150, batch=384, drop_path=0.1, layer_decay=0.75),
    ("k400", "vit_b"): dict(lr=5e-4, epochs=75, batch=384, drop_path=0.1, layer_decay=0.75),
    ("k400", "vit_l"): dict(lr=2e-3, epochs=35, batch=128, drop_path=0.1, layer_decay=0.75),
    ("k400", "vit_h"): dict(lr=1e-3, epochs=50, batch=512, drop_path=0.2, layer_decay=0.75, min_lr=1e-5,
                            head_dropout=0.5),
    ("ssv2", "vit_b"): dict(lr=5e-4, epochs=30, batch=384, drop_path=0.1, layer_decay=0.75),
}
DATASETS = {
    "k400": dict(classes=400, train_size=240436, sampling="dense", flip=True, eval_clips=5),
    "ssv2": dict(classes=174, train_size=168913, sampling="segment", flip=False, eval_clips=2),
}


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="vit_b", dataset="k400", classes=0, epochs=0, batch=0, lr=0.0, drop_path=-1.0,
                           layer_decay=0.0, train_size=0, frames=16, scan=True, remat="full", dtype="bfloat16",
                           attn="auto")
    if arg.variant not in VARIANTS:
        raise ValueError(f"unknown variant {arg.variant!r}; expected one of {sorted(VARIANTS)}")
    if arg.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {arg.dataset!r}; expected one of {sorted(DATASETS)}")
    data = DATASETS[arg.dataset]
    recipe = dict(dict(min_lr=1e-6, head_dropout=0.0),
                  **RECIPES.get((arg.dataset, arg.variant), RECIPES[(arg.dataset, "vit_b")]))
    for field in ("epochs", "batch", "lr", "layer_decay"):
        recipe[field] = arg[field] or recipe[field]
    recipe["drop_path"] = recipe["drop_path"] if arg.drop_path < 0 else arg.drop_path
    classes, train_size = arg.classes or data["classes"], arg.train_size or data["train_size"]
    model = common.vit_encoder(VARIANTS[arg.variant], num_frames=arg.frames, final_norm=False, pool="mean",
                               num_classes=classes, drop_path=recipe["drop_path"], head_dropout=recipe["head_dropout"],
                               scan=arg.scan, remat=arg.remat, dtype=arg.dtype, attn_impl=arg.attn)
    c = common.train_config("classification", model)
    steps_per_epoch = max(train_size // recipe["batch"], 1)
    c.batch_size = recipe["batch"]
    c.mesh.update(dict(data=1, fsdp=-1))  # FSDP over every chip (docs/scale.md)
    c.total_steps = recipe["epochs"] * steps_per_epoch
    c.checkpoint_every = steps_per_epoch
    c.data.update(dict(num_frames=arg.frames, sampling=data["sampling"], sampling_rate=4, crop_size=224,
                       short_side=224, train_crop="rrc", flip=data["flip"], randaug="rand-m7-n4-mstd0.5-inc1",
                       random_erase=0.25, mixup=0.8, cutmix=1.0, label_smoothing=0.1, num_classes=classes,
                       normalize="imagenet", eval_clips=data["eval_clips"], eval_crops=3, workers=8))
    c.optim.update(dict(base_lr=recipe["lr"], b1=0.9, b2=0.999, weight_decay=0.05, warmup_steps=5 * steps_per_epoch,
                        min_lr=recipe["min_lr"], layer_decay=recipe["layer_decay"], num_layers=model["depth"]))
    return c

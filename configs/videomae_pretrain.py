"""VideoMAE / VideoMAE V2 pre-training (tube masking 0.9, normalised-pixel targets, 16x224 clips).

  python -m invideo_jax.main --config=configs/videomae_pretrain.py:vit_b --workdir=$WORKDIR \
      --config.data.train_annotations=k400/train.csv --config.data.root=k400/videos

ARG: the variant (vit_s, vit_b, vit_l, vit_h, vit_g) then options: v2=True (dual masking with running-cell decoder
masks, as VideoMAE V2), epochs=800, batch=256 (global), train_size=240436 (videos in the list, for the schedule),
frames=16, scan=True, remat=full|none|dots, dtype=bfloat16|float32, attn=auto|xla|tpu_flash (the attention kernel).

Recipe (official scripts): AdamW (0.9, 0.95), lr 1.5e-4 x batch/256, wd 0.05, 40 warm-up epochs of 800, min lr
1e-5, multi-scale crop, no flip, ImageNet normalisation, stride 4 (SSv2: 2). V2-g: lr 6e-4, clip_grad 0.02,
warm-up 30 of 300 (x4 repeated sampling in the original). Expect the loss to fall from ~1.0 towards ~0.5 on
Kinetics-400 (normalised targets).

Fits (TPU compiler via `python -m invideo_jax.aot`, docs/scale.md) with the defaults (bf16, remat=full, FSDP over
every chip): ViT-B at batch 2048 on v5e-8 with `--config.grad_accum_steps=8` (32 clips per chip per microbatch, peak
10.7 of 16 GiB per chip), ViT-L at batch 512 on v5e-8 with `grad_accum_steps=4` (16 clips, 7.8 GiB); a slice k times
larger holds the same clips per chip with k times less accumulation (v5e-64 / v5e-32 with the default 1). ViT-H at
batch 1024 on v5e-32 with `grad_accum_steps=4` (8 clips, 3.9 GiB); V2-g (`vit_g,v2=True`) at batch 2048 on v5e-32
with `grad_accum_steps=8` (8 clips, 4.2 GiB).
"""
from configs import common

VARIANTS = {"vit_s": "S/16", "vit_b": "B/16", "vit_l": "L/16", "vit_h": "H/16", "vit_g": "g/14"}


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="vit_b", v2=False, epochs=800, batch=256, train_size=240436, frames=16,
                           scan=True, remat="full", dtype="bfloat16", attn="auto")
    if arg.variant not in VARIANTS:
        raise ValueError(f"unknown variant {arg.variant!r}; expected one of {sorted(VARIANTS)}")
    size, _ = common.decode_variant(VARIANTS[arg.variant])
    encoder = common.vit_encoder(VARIANTS[arg.variant], num_frames=arg.frames, scan=arg.scan, remat=arg.remat,
                                 dtype=arg.dtype, attn_impl=arg.attn)
    c = common.train_config("videomae_pretrain", dict(encoder=encoder, **common.DECODER_SIZES[size]))
    c.mask = common.mask_config(v2=arg.v2)
    steps_per_epoch = max(arg.train_size // arg.batch, 1)
    c.batch_size = arg.batch
    c.mesh.update(dict(data=1, fsdp=-1))  # FSDP over every chip (docs/scale.md)
    c.total_steps = arg.epochs * steps_per_epoch
    c.checkpoint_every = 5 * steps_per_epoch
    c.data.update(dict(num_frames=arg.frames, sampling_rate=4, crop_size=224, short_side=224, train_crop="multiscale",
                       flip=False, normalize="imagenet", workers=8))
    c.optim.update(dict(base_lr=6e-4 if arg.v2 else 1.5e-4, b1=0.9, b2=0.95, weight_decay=0.05,
                        warmup_steps=(30 if arg.v2 else 40) * steps_per_epoch, min_lr=1e-5,
                        clip_grad=0.02 if arg.v2 else 0.0))
    return c

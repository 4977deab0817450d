"""A one-stage pipeline small enough for multi-process CPU tests: a tiny classifier on 16 + 8 generated videos.

  python -m invideo_jax.main --config=tests/tiny_config.py:fsdp=2 --workdir=DIR

ARG options: steps=4, batch=4 (global, also for evaluation), fsdp=1 (the rest of the devices go to `data`),
rules=fsdp.
"""
import ml_collections

from configs import common

ENCODER = dict(width=16, depth=1, num_heads=2, mlp_dim=32, patch_size=8, tubelet_size=2, num_frames=4,
               image_size=16, final_norm=False, pool="mean", num_classes=8)


def get_config(arg=None):
    arg = common.parse_arg(arg, steps=4, batch=4, fsdp=1, rules="fsdp")
    c = common.train_config("classification", ENCODER)
    c.data.update(dict(train_annotations="{workdir}/data/train.csv", eval_annotations="{workdir}/data/val.csv",
                       root="{workdir}/data", num_frames=4, sampling_rate=2, crop_size=16, short_side=16,
                       train_crop="resize_crop", flip=False, num_classes=8, eval_clips=1))
    c.batch_size = c.eval_batch_size = arg.batch
    c.total_steps, c.log_every, c.checkpoint_every = arg.steps, 2, 2
    c.mesh.update(dict(data=-1, fsdp=arg.fsdp))
    c.sharding_rules = arg.rules
    c.optim.update(dict(base_lr=1e-3, lr_batch_denom=0, warmup_steps=1))
    pipeline = ml_collections.ConfigDict()
    pipeline.synthetic_data = dict(num_train=16, num_val=8, num_frames=8, size=16, seed=0)
    pipeline.stages = ml_collections.ConfigDict(dict(classify=c))
    pipeline.stage_order = ("classify",)
    return pipeline

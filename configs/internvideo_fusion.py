"""InternVideo stage 3 at paper scale: VideoMAE ViT-H/16 and UniFormerV2-L/14 coordinated by cross-model attention.

  python -m invideo_jax.main --config=configs/internvideo_fusion.py --workdir=$WORKDIR \
      --config.data.train_annotations=k710/train.csv --config.data.eval_annotations=k400/val.csv \
      --config.data.root=videos

Both encoders are frozen (`optim.frozen`, and `stop_gradient` at their trunks); the tanh-gated cross-attention
blocks (gates at 0: training starts exactly from the two encoders), the classification head and the multimodal
encoder's query token train, as in the paper. The
multimodal clip feature attends to the masked encoder's last `fusion` layers (`direction=symmetric` adds the
reverse); both encoders see the same 16-frame 224 clip (ImageNet normalisation: both released encoders were
fine-tuned on it). Each encoder is restored from its supervised checkpoint by the named `init_from` sources:
`--config.init_from.masked.checkpoint=$VIDEOMAE_K710/checkpoints` (a VideoMAE classifier: its encoder) and
`--config.init_from.multimodal.checkpoint=$UNIFORMERV2_K710/checkpoints` (a UniFormerV2 classifier: its backbone and
its head, so that the fused model starts with exactly that classifier's predictions).
configs/internvideo_pipeline.py runs every stage in order.

ARG options: classes=710, frames=16, fusion=4, direction=multimodal_queries, epochs=20, batch=256,
train_size=658340, scan=True, remat=full, dtype=bfloat16.
Parameter counts (jax.eval_shape; tests/test_configs.py): 1,041,664,462 in all, 56,370,894 trainable (the four
fusion blocks, the head and the 1024-wide query token).

Fits (TPU compiler via `python -m invideo_jax.aot`, docs/scale.md; bf16, remat=full, FSDP over every chip): batch
256 on v5e-16 (16 clips per chip, peak 13.5 of 16 GiB).
"""
import ml_collections

from configs import common
from configs.uniformerv2_finetune import model_config


# Both encoders stay fixed but for the multimodal query token (trained in the paper).
FROZEN = (r"masked/", r"multimodal/backbone/(?!temporal_cls_token$)")


def init_from(masked: str = "", multimodal: str = "") -> ml_collections.ConfigDict:
    """Named `init_from` sources of the fused model: the encoder of a VideoMAE classifier checkpoint, and the backbone
    and head of a UniFormerV2 classifier checkpoint (checkpoint dirs or, in a pipeline, stage names)."""
    return ml_collections.ConfigDict(dict(
        masked=dict(checkpoint=masked, mapping={"masked": "params"}),
        multimodal=dict(checkpoint=multimodal, mapping={"multimodal": "params", "head_multimodal": "params/head"})))


def get_config(arg=None):
    arg = common.parse_arg(arg, classes=710, frames=16, fusion=4, direction="multimodal_queries", epochs=20, batch=256,
                           train_size=658340, scan=True, remat="full", dtype="bfloat16")
    masked = common.vit_encoder("H/16", num_frames=arg.frames, final_norm=False, pool="mean", scan=arg.scan,
                                remat=arg.remat)
    multimodal = model_config("L/14", ssv2=False, frames=arg.frames, scan=arg.scan, remat=arg.remat)
    depth = masked["depth"]
    model = dict(masked=masked, multimodal=multimodal, fusion_layers=tuple(range(depth - arg.fusion, depth)),
                 direction=arg.direction, num_heads=16, num_classes=arg.classes, dtype=arg.dtype)
    c = common.train_config("classification", model, model_name="fusion")
    steps_per_epoch = max(arg.train_size // arg.batch, 1)
    c.batch_size = arg.batch
    c.mesh.update(dict(data=1, fsdp=-1))  # FSDP over every chip (docs/scale.md)
    c.total_steps = arg.epochs * steps_per_epoch
    c.checkpoint_every = steps_per_epoch
    c.data.update(dict(num_frames=arg.frames, sampling="dense", sampling_rate=4, crop_size=224, short_side=224,
                       train_crop="rrc", flip=True, num_classes=arg.classes, label_smoothing=0.1,
                       normalize="imagenet", eval_clips=4, eval_crops=3, workers=8))
    c.optim.update(dict(base_lr=1e-4, b1=0.9, b2=0.999, weight_decay=0.05, warmup_steps=steps_per_epoch,
                        min_lr=1e-6, frozen=FROZEN))
    c.init_from = init_from()
    return c

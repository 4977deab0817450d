"""InternVideo2 stage 1: unmasked-token distillation of the 1B (or 6B) encoder from two frozen teachers.

  python -m invideo_jax.main --config=configs/internvideo2_distill.py:1B --workdir=$WORKDIR \
      --config.data.train_annotations=kmash/train.csv --config.data.root=videos \
      --config.init_from.teacher_image.checkpoint=$INTERNVIT_6B --config.init_from.teacher_video.checkpoint=$VMAEV2_G

ARG: the student size (1B, 6B; S, B, L build too) then options: frames=8 (student; the video teacher sees
2x as many), image_teacher=6B (InternVideo2 size row of the image teacher), video_teacher=g/14 (ViT row of the
VideoMAE V2 teacher), image_layers=6, video_layers=4, mask_ratio=0.8, epochs=300, batch (default 4096 for 1B,
2048 for 6B), train_size=1100000 (clips in the list, for the schedule), scan=True, remat=full, dtype=bfloat16,
attn=auto (the attention kernel of the student and both teachers: xla, tpu_flash, ...), targets='' (a directory
of stored teacher targets to train from, below), act=gelu_tanh (the student's MLP activation; gelu: exact, for a
student trained with the official use_fused_mlp=False, configs/internvideo2.py).

Recipe (internvideo.md 1.8, 5.4): 16-frame clips (segment sampling, flip); the VideoMAE V2-g teacher sees all 16
(tubelet 2: 8x16x16 tokens), the student and the image teacher every 2nd frame (8 frames, tubelet 1: 8x16x16).
Attention-guided masking 0.8: per frame 256 - int(256 * 0.8) = 52 visible tokens drawn without replacement in
proportion to the image teacher's attention-pool weights over the frame's patches (`mask_source='image_pool'`,
`mask_sampling='multinomial'`), CLS always kept. Targets, each L2-normalised, loss 2 - 2 cos, weights 1 / 1 / 1:
the image teacher's last 6 layers (per-frame CLS averaged over time, patches concatenated), its attention-pooled
768-d feature averaged over frames, the video teacher's last 4 layers (the last after its final norm), aligned with
the student's last 6 / its pooled feature / its last 4 layers through `clip_decoder` (Linear -> LN -> L2),
`final_clip_decoder` and `mae_decoder` (MLP -> LN -> L2) heads with their own position embeddings.
AdamW (0.9, 0.98), eps 1e-6, lr 1.5e-4 x batch / 256 (1B at 4096: 2.4e-3), wd 0.05, clip_grad 3.0, 40 warm-up
epochs of 300, drop_path 0.25 (1B) / 0.3 (6B), LayerScale 1e-5, bf16 compute, activation checkpointing.
Not given by the reference and chosen here: the minimum lr (1e-6), the crop (VideoMAE's multi-scale crop), ImageNet
normalisation, and `train_size` (set it to your list's length).

Teachers: InternViT-6B (InternVL-C's vision encoder: D 3200, depth 48, 25 heads, MLP 12800, RMSNorm, QK-norm,
LayerScale 0.1, no qkv bias, patch 14, learned pos-emb, attention pool to 768) is modelled as our InternVideo2 6B
trunk on one frame (`teacher_image_kind='internvideo2'`, LayerScale 0.1); VideoMAE V2-g (pre-trained, not
fine-tuned: D 1408, depth 40, patch 14, tubelet 2, q/v bias, fixed sin-cos, final LayerNorm) is our
VisionTransformer g/14. Both are configurable ViTs: any rows of the size tables build. Their weights come from the
named `init_from` sources (`teacher_image`: mapping `teacher_image` <- `params`, a checkpoint holding an
InternVideo2-layout model; `teacher_video`: `teacher_video` <- `params/encoder`, a VideoMAE pre-training checkpoint,
e.g. our videomae_pretrain stage or converted official weights); without a checkpoint they keep their random
initialisation (a warning says so), which only makes sense for smoke tests. The official image teacher file
(InternVL-C's `internvl_c_13b_224px.pth`, the one the official stage 1 loads; its text tower is dropped) converts
into `teacher_image` with

  python -m invideo_jax.convert.cli --format=internvit --model=configs/internvideo2_distill.py:1B \
      --input=internvl_c_13b_224px.pth --output=$INTERNVIT_6B

(`$INTERNVIT_6B` is then the `init_from.teacher_image` checkpoint above). `clip_teacher_return_interval` (model
kwargs; 1 here, as the official 1B / 6B scripts) spaces the image-teacher layers aligned as the official
`return_index`; the distilled S/B/L scripts use 3.34 with an InternVideo2-1B teacher that sees the whole clip, which
this Distiller does not model (its image teacher runs per frame).

Cost: the teachers live in the train state, so every checkpoint carries them (fp32: InternViT-6B 5.94e9 params =
23.7 GB, VideoMAE V2-g 4.0 GB) besides the student and its AdamW moments; they have no optimiser state (frozen).
Activations: a scanned stack with `return_layers` (layers.Transformer) carries only the k requested layers' outputs
(it once kept all of them: for the 6B image teacher at 32 clips, 256 frames, per device about
48 x 256 x 257 x 3200 x 2 B = 20 GB of bf16 per device; docs/scale.md measures before and after).

Stored targets (large runs): run the teachers once per clip instead of in every step, then train the student alone
(no teacher in the train state, its checkpoints or the step; `targets=` sets `config.teacher_targets`, freezes
nothing and restores no teacher):

  python -m invideo_jax.precompute_targets --config=configs/internvideo2_distill.py:1B --workdir=$TARGETS --views=2 \
      --config.data.train_annotations=... --config.init_from.teacher_image.checkpoint=$INTERNVIT_6B \
      --config.init_from.teacher_video.checkpoint=$VMAEV2_G
  python -m invideo_jax.main --config=configs/internvideo2_distill.py:1B,targets=$TARGETS --workdir=$WORKDIR \
      --config.data.train_annotations=...

Each of the K views of a training example is the clip the pipeline builds from the seed [seed, example, view]; only
that seed is kept, with the visible tokens and the targets on them (`teacher_targets_dtype`, float16 by default):
20.7 MB per clip and view for 1B (docs/scale.md), so training sees K different augmentations and masks per example
over all epochs. The cache must match the run's data config, teacher settings and seed (checked, naming the fields).

Parameter counts (jax.eval_shape; tests/test_distill.py), 1B student at 8 frames of 224:
  student 1,020,708,608; heads 43,565,568 and their position embeddings 5,768,576; image teacher
  5,936,000,768; video teacher 1,011,610,752; total 8,017,654,272, trainable 1,070,042,752 (student and heads).

Fits (TPU compiler via `python -m invideo_jax.aot`, docs/scale.md): 1B with its teachers at batch 4096 on v5p-64
(32 chips) with `--config.grad_accum_steps=4` (32 clips per chip per microbatch): peak 54.8 of 95 GiB per chip
(defaults: bf16, remat=full, FSDP over every chip); with `attn=tpu_flash` 20.9 GiB, or 38.4 GiB with
`grad_accum_steps=2`. From stored targets (`targets=DIR`): v5p-64 with `grad_accum_steps=2`, peak 26.8 GiB (34.4
with `attn=tpu_flash`). 6B: not compiled at paper scale.
"""
import ml_collections

from configs import common, internvideo2

BATCH = {"1B": 4096, "6B": 2048}
TEACHER_PARAMS = (r"teacher_image/", r"teacher_video/")


def init_from(teacher_image: str = "", teacher_video: str = "") -> ml_collections.ConfigDict:
    """Named `init_from` sources of the two teachers (checkpoint dirs or, in a pipeline, stage names)."""
    return ml_collections.ConfigDict(dict(
        teacher_image=dict(checkpoint=teacher_image, mapping={"teacher_image": "params"}),
        teacher_video=dict(checkpoint=teacher_video, mapping={"teacher_video": "params/encoder"})))


def model_config(size: str = "1B", frames: int = 8, image_teacher: str = "6B", video_teacher: str = "g/14",
                 image_layers: int = 6, video_layers: int = 4, mask_ratio: float = 0.8, image_size: int = 224,
                 scan: bool = True, remat: str = "full", dtype: str = "bfloat16", act: str = "gelu_tanh") -> dict:
    """`Distiller` kwargs: the student, the InternViT-like image teacher (one frame), the VideoMAE V2 teacher (2x
    the student's frames, tubelet 2) and the stage-1 settings."""
    student = internvideo2.encoder_config(size, frames=frames, image_size=image_size, scan=scan, remat=remat,
                                          dtype=dtype, drop_path=internvideo2.PRETRAIN_DROP_PATH.get(size, 0.0),
                                          act=act)
    teacher_image = internvideo2.encoder_config(image_teacher, frames=1, image_size=image_size, layer_scale=0.1,
                                                scan=scan, dtype=dtype)
    teacher_video = common.vit_encoder(video_teacher, num_frames=2 * frames, image_size=image_size, tubelet_size=2,
                                       final_norm=True, scan=scan, dtype=dtype)
    return dict(student=student, teacher_image=teacher_image, teacher_video=teacher_video,
                teacher_image_kind="internvideo2", image_layers=image_layers, video_layers=video_layers,
                image_pooled=True, frame_stride=2, mask_source="image_pool", mask_ratio=mask_ratio,
                mask_sampling="multinomial", image_decoder="linear", video_decoder="mlp", dtype=dtype)


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="1B", frames=8, image_teacher="6B", video_teacher="g/14", image_layers=6,
                           video_layers=4, mask_ratio=0.8, epochs=300, batch=0, train_size=1100000, scan=True,
                           remat="full", dtype="bfloat16", targets="", attn="auto", act="gelu_tanh")
    model = model_config(arg.variant, arg.frames, arg.image_teacher, arg.video_teacher, arg.image_layers,
                         arg.video_layers, arg.mask_ratio, scan=arg.scan, remat=arg.remat, dtype=arg.dtype, act=arg.act)
    for part in ("student", "teacher_image", "teacher_video"):
        model[part]["attn_impl"] = arg.attn
    c = common.train_config("distill", model, model_name="distiller")
    c.batch_size = arg.batch or BATCH.get(arg.variant, 4096)
    c.mesh.update(dict(data=1, fsdp=-1))  # FSDP over every chip (docs/scale.md)
    steps_per_epoch = max(arg.train_size // c.batch_size, 1)
    c.total_steps = arg.epochs * steps_per_epoch
    c.checkpoint_every = 5 * steps_per_epoch
    c.loss = ml_collections.ConfigDict(dict(image_layers=1.0, image_pooled=1.0, video_layers=1.0))
    c.data.update(dict(num_frames=2 * arg.frames, sampling="segment", crop_size=224, short_side=224,
                       train_crop="multiscale", flip=True, normalize="imagenet", workers=8))
    c.optim.update(dict(base_lr=1.5e-4, lr_batch_denom=256, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.05,
                        clip_grad=3.0, warmup_steps=40 * steps_per_epoch, min_lr=1e-6, frozen=TEACHER_PARAMS,
                        no_decay=(r"(clip|mae)_pos_embed$",)))  # no decay, as the encoder's pos_embed
    c.init_from = init_from()
    c.teacher_targets = ""  # a directory of pre-computed targets (invideo_jax/precompute_targets.py); '': online
    c.teacher_targets_dtype = "float16"  # how precompute_targets stores them: float16 or float32
    if arg.targets:
        train_from_targets(c, arg.targets)
    return c


def train_from_targets(c, directory: str) -> None:
    """Makes `c` train the student from the teacher targets stored in `directory`: the model has no teachers, so
    nothing to freeze and no teacher to restore (`init_from` is one empty source: an earlier stage's student may go
    there)."""
    c.teacher_targets = directory
    c.optim.frozen = ()
    c.init_from = ml_collections.ConfigDict(dict(checkpoint="", mapping={}))

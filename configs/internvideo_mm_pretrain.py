"""InternVideo-MM video-text pre-training: UniFormerV2 (global UniBlocks) + CLIP text tower + caption decoder.

  python -m invideo_jax.main --config=configs/internvideo_mm_pretrain.py:B/16 --workdir=$WORKDIR \
      --config.data.train_annotations=webvid/train.json --config.data.eval_annotations=msrvtt/test_1k.json \
      --config.data.root=videos --config.init_from.checkpoint=$CONVERTED_CLIP   # restores the whole model

Data: InternVideo JSON lists ({"video": path, "caption": str | [str, ...]}), CLIP BPE tokens (77), 8 frames, one per
equal segment, CLIP mean/std; evaluation resizes the short side to 224 and takes the centre crop. Start from CLIP
weights converted with `python -m invideo_jax.convert.cli --format=clip_hf` (the UniBlocks start at zero, so the
video tower starts as CLIP on every frame).

ARG: the variant (B/16, L/14) then options: epochs=10, batch=1024 (global), train_size=10_000_000, frames=8,
caption_weight=1.0, scan=True, remat=none|full|dots, dtype.

Recipe: the model is the official one (vit_only_global_{b16,l14}: 4 global blocks on the last 4 layers; caption
decoder 4 layers, 256 queries). The official pre-training hyper-parameters are not published with the code; the
optimiser values here (AdamW 0.9/0.98, wd 0.2, lr 1e-5 x batch/256 with 1 warm-up epoch, cosine) are CLIP
fine-tuning practice. Expect, from the released L/14 model, about 40% zero-shot MSR-VTT text-to-video R@1 with
dual-softmax re-ranking and 64% zero-shot Kinetics-400 top-1 (README).

Fits (TPU compiler via `python -m invideo_jax.aot`, docs/scale.md; bf16, remat=full, FSDP over every chip): L/14 at
batch 1024 on v5e-32 with `--config.grad_accum_steps=2` (16 clips per chip, peak 12.1 of 16 GiB).
"""
from configs import common

def model_config(variant: str, *, frames: int, **overrides) -> dict:
    """VideoTextModel kwargs of the official InternVideo-MM model for a CLIP variant ('B/16' or 'L/14')."""
    vision = common.CLIP_VISION_SIZES[variant]
    text = dict(common.CLIP_TEXT_SIZES[variant])
    embed_dim = text.pop("embed_dim")
    visual = dict(vision, num_frames=frames, global_layers=tuple(range(vision["depth"] - 4, vision["depth"])),
                  **overrides)
    text = dict(text, vocab_size=common.CLIP_VOCAB_SIZE, context_length=common.CLIP_CONTEXT_LENGTH,
                **{k: v for k, v in overrides.items() if k in ("scan", "remat")})
    return dict(visual_config=visual, text_config=text, caption_config=dict(depth=4, num_queries=256),
                embed_dim=embed_dim)


def videotext_fields(c, caption_weight: float = 1.0, class_names=(), templates=(), captions: str = "first"):
    """The videotext task's own fields: the caption loss weight, the zero-shot class names and prompts, and the
    retrieval caption protocol ('first', 'all': MSVD/VATEX, 'paragraph': DiDeMo/ActivityNet; evaluate/retrieval.py)."""
    c.loss = dict(caption_weight=caption_weight)
    c.retrieval = dict(captions=captions)
    c.zero_shot = dict(class_names=class_names, templates=templates)
    return c


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="B/16", epochs=10, batch=1024, train_size=10_000_000, frames=8,
                           caption_weight=1.0, scan=True, remat="full", dtype="bfloat16")
    if arg.variant not in common.CLIP_TEXT_SIZES:
        raise ValueError(f"unknown variant {arg.variant!r}; expected one of {sorted(common.CLIP_TEXT_SIZES)}")
    model = model_config(arg.variant, frames=arg.frames, scan=arg.scan, remat=arg.remat)
    c = videotext_fields(common.train_config("videotext", dict(model, dtype=arg.dtype)), arg.caption_weight)
    steps_per_epoch = max(arg.train_size // arg.batch, 1)
    c.batch_size = arg.batch
    c.mesh.update(dict(data=1, fsdp=-1))  # FSDP over every chip (docs/scale.md)
    c.total_steps = arg.epochs * steps_per_epoch
    c.checkpoint_every = steps_per_epoch // 10 or 1
    c.data.update(dict(format="json", num_frames=arg.frames, sampling="segment", crop_size=224, short_side=224,
                       train_crop="rrc", rrc_scale=(0.5, 1.0), flip=True, normalize="clip", tokenizer="clip",
                       text_length=common.CLIP_CONTEXT_LENGTH, workers=8))
    c.optim.update(dict(base_lr=1e-5, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.2, warmup_steps=steps_per_epoch,
                        min_lr=0.0))
    return c

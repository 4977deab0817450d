"""InternVideo2 stage 3 / VideoChat2: the size tables, the model of each variant and the three training stages.

  python -m invideo_jax.main --config=configs/videochat2.py:8b,stage=1 --workdir=W1 \
      --config.data.train_annotations=CAPTIONS.json --config.data.root=VIDEOS
  python -m invideo_jax.main --config=configs/videochat2.py:8b,stage=2 --workdir=W2 \
      --config.init_from.stage1.checkpoint=W1/checkpoints --config.init_from.llm.checkpoint=LLM_CKPT \
      --config.videochat.llm_tokenizer=MISTRAL_DIR --config.data.train_annotations=CAPTIONS.json
  python -m invideo_jax.main --config=configs/videochat2.py:8b,stage=3,epoch_steps=N --workdir=W3 \
      --config.init_from.stage1.checkpoint=W1/checkpoints --config.init_from.stage2.checkpoint=W2/checkpoints \
      --config.videochat.llm_tokenizer=MISTRAL_DIR --config.videochat.instruction_files="(('IT.json', 'ROOT'),)"
  python -m invideo_jax.aot --config=configs/videochat2.py:8b,stage=3 --topology=v5p-32 --predict=false
      (fits: stage 3 at the paper batch 128 on v5p-32, FSDP over the 16 chips, bf16, remat=full, no accumulation,
      peaks at 43.9 GiB of 95 per chip; docs/scale.md)

Variants (`get_config(arg)`, arg 'VARIANT[,stage=3,frames=0,epoch_steps=1000,scan=True,remat=full,dtype=bfloat16,
lora=True]'; frames 0 = the stage's official count: 4 in stages 1 and 2, 8 in stage 3):
  8b       InternVideo2-Chat-8B: InternVideo2-1B (39 of 40 blocks, CLS kept, exact GELU) + Q-Former (32 + 64 queries;
           its file holds the text embeddings and FFNs, but its chat passes no instruction) +
           Mistral-7B-Instruct-v0.3 with LoRA on every linear layer and the head; template 'internvideo2'
  mistral  VideoChat2-Mistral: UMT-L/16 (23 of 24 blocks) + Q-Former with instruction text + Mistral-7B-Instruct-v0.2,
           LoRA as above; template 'mistral'
  vicuna   VideoChat2-Vicuna: UMT-L/16 + Q-Former with instruction text + Vicuna-7B v0, LoRA on q_proj / v_proj
           (peft's LLaMA default); template 'vicuna'
  tiny     a few-million-parameter model of the 8b layout, for tests; template 'mistral'

Stages (train/tasks/videochat_qformer.py, train/tasks/videochat.py; the official AdamW 0.9/0.999, weight decay 0.02
on every >= 2-D parameter, query tokens included, cosine per step with warm-up from the floor min_lr_multi x lr, no
gradient clipping; global batch = the per-GPU batch x 32 GPUs of the slurm scripts; `epoch_steps` = records / global
batch sets total_steps = epochs x epoch_steps and the warm-up):
  1  Q-Former alignment (VTC + VTM + captioning, weights 1), encoder frozen, 32 queries; captions (json annotations,
     BERT tokenizer, 32 tokens); 4 frames, batch 128 x 32, lr 1e-4, 10 epochs, warm-up 0.2 epoch, floor 0.01
  2  captioning through the frozen LLM: encoder, Q-Former (no text), 96 queries and projection train; the caption
     answers "Describe the following video concisely."; 4 frames, batch 16 x 32, max 32 text tokens, lr 1e-4,
     1 epoch, warm-up 0.2, floor 0.01. init_from: stage1 (encoder, vision_layernorm, Q-Former query side) and
     llm (a checkpoint of this model's layout holding params/llm, e.g. converted from the Hugging Face directory)
  3  instruction tuning: encoder, Q-Former (reading the instruction), queries, projection and LoRA (r 16, alpha 32,
     dropout 0.1) train, the base LLM is frozen; 8 frames, batch 4 x 32 = 128, 512 text tokens + 96 visual, lr 2e-5,
     3 epochs, warm-up 0.6, floor 0.25. init_from: stage1 (the Q-Former text embeddings and FFNs, P6) then stage2
Data augmentation as the official: one random frame per segment, RandomResizedCrop(224, scale 0.5-1) + flip,
ImageNet mean/std. BOS (P1): we train with the real BOS embedding at position 0 (the official stage-3 training
writes the integer id there); see data/instruction.py. Official numbers: InternVideo2-Chat-8B MVBench 60.3,
VideoChat2-Mistral 60.4, VideoChat2-Vicuna 51.1.

Parameter counts (checked by tests/test_videochat_sizes.py; the LLMs equal transformers' own count of the official
configs, built on the meta device):
  LLMs: vicuna_7b 6,738,423,808; mistral_7b_v0.2 7,241,732,096; mistral_7b_v0.3 7,248,023,552
  8b at 8 frames: total 8,467,860,608 = vision 988,417,664 (39 blocks, pos_embed of 2,049 positions) + LayerNorm
  2,816 + Q-Former 185,733,888 (with its text parts) + projection 3,149,824 + LLM 7,248,023,552 + LoRA 42,532,864;
  trainable (everything but the base LLM) 1,219,837,056
"""
import jax.numpy as jnp
import ml_collections

from configs import common, internvideo2
from invideo_jax.models import llm as llm_lib
from invideo_jax.models import lora
from invideo_jax.models.internvideo2 import InternVideo2
from invideo_jax.models.videochat import VideoChat
from invideo_jax.models.videochat_qformer import QFormerAlign
from invideo_jax.train.tasks import videochat as videochat_task

LLM_SIZES = {  # transformers config.json values of the official checkpoints
    "vicuna_7b": dict(vocab_size=32001, width=4096, depth=32, num_heads=32, num_kv_heads=32, mlp_dim=11008,
                      norm_eps=1e-6, rope_theta=1e4),
    "mistral_7b_v0.2": dict(vocab_size=32000, width=4096, depth=32, num_heads=32, num_kv_heads=8, mlp_dim=14336,
                            norm_eps=1e-5, rope_theta=1e6),
    "mistral_7b_v0.3": dict(vocab_size=32768, width=4096, depth=32, num_heads=32, num_kv_heads=8, mlp_dim=14336,
                            norm_eps=1e-5, rope_theta=1e6),
    "tiny": dict(vocab_size=128, width=64, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=128, norm_eps=1e-5,
                 rope_theta=1e6),
}
QFORMER = dict(num_query=32, num_extra_query=64, width=768, depth=12, num_heads=12, mlp_dim=3072, vocab_size=30523,
               max_len=512, cross_attention_freq=2, dropout=0.1, drop_path=0.2)
TINY_QFORMER = dict(num_query=4, num_extra_query=4, width=32, depth=2, num_heads=2, mlp_dim=64, vocab_size=64,
                    max_len=32, cross_attention_freq=2)
UMT_L16 = dict(width=1024, depth=23, num_heads=16, mlp_dim=4096, patch_size=16, pos_embed_frames=4)
LORA = dict(lora_rank=16, lora_alpha=32.0, lora_dropout=0.1)
VARIANTS = {  # vision, LLM size, Q-Former text parameters, LoRA targets
    "8b": ("internvideo2_1b", "mistral_7b_v0.3", True, llm_lib.LORA_ALL_LINEAR),
    "mistral": ("umt_l16", "mistral_7b_v0.2", True, llm_lib.LORA_ALL_LINEAR),
    "vicuna": ("umt_l16", "vicuna_7b", True, r"(q|v)_proj$"),
    "tiny": ("tiny", "tiny", False, llm_lib.LORA_ALL_LINEAR),
}
# The official per-stage recipes (config_7b_stage{1,2,3}.py): global batch (per GPU x 32), peak lr, warm-up epochs,
# min_lr_multi, epochs, frames, text tokens.
STAGES = {
    1: dict(batch_size=128 * 32, base_lr=1e-4, warmup_epochs=0.2, min_lr_ratio=0.01, epochs=10, frames=4,
            max_text_tokens=32),
    2: dict(batch_size=16 * 32, base_lr=1e-4, warmup_epochs=0.2, min_lr_ratio=0.01, epochs=1, frames=4,
            max_text_tokens=32),
    3: dict(batch_size=4 * 32, base_lr=2e-5, warmup_epochs=0.6, min_lr_ratio=0.25, epochs=3, frames=8,
            max_text_tokens=512),
}
WEIGHT_DECAY = 0.02
TEMPLATES = {"8b": "internvideo2", "mistral": "mistral", "vicuna": "vicuna", "tiny": "mistral"}


def vision_config(name: str, frames: int = 8, image_size: int = 224, **overrides) -> tuple:
    """(vision_kind, kwargs) of a VideoChat encoder."""
    if name == "internvideo2_1b":
        cfg = InternVideo2(**internvideo2.encoder_config("1B", frames, image_size, act="gelu", **overrides))
        return "internvideo2", {**cfg.encoder_kwargs(), "depth": 39}  # return_index -2: 39 of 40 blocks
    if name == "umt_l16":
        return "umt", dict(UMT_L16, num_frames=frames, image_size=image_size, **overrides)
    if name == "tiny":
        cfg = InternVideo2(**internvideo2.encoder_config("S", frames, 28, width=32, depth=2, num_heads=2, mlp_dim=64,
                                                         act="gelu", **overrides))
        return "internvideo2", cfg.encoder_kwargs()
    raise ValueError(f"unknown VideoChat vision encoder {name!r}")


def model_kwargs(variant: str, frames: int = 8, scan: bool = True, remat: str = "full", dtype=jnp.bfloat16,
                 lora: bool = True) -> dict:
    """VideoChat kwargs of `variant` (see the module docstring)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown VideoChat2 variant {variant!r}; expected one of {sorted(VARIANTS)}")
    vision, llm_size, text_input, targets = VARIANTS[variant]
    run = dict(scan=scan, remat=remat, dtype=dtype)
    kind, vision_kwargs = vision_config(vision, frames, **run)
    encoder_width = vision_kwargs["width"]
    qformer = dict(TINY_QFORMER if variant == "tiny" else QFORMER, encoder_width=encoder_width,
                   text_input=text_input, remat=remat, dtype=dtype)
    llm = dict(LLM_SIZES[llm_size], **run, **(dict(LORA, lora_targets=targets) if lora else {}))
    return dict(vision_kind=kind, vision_config=vision_kwargs, qformer_config=qformer, llm_config=llm)


def build_model(config):
    """The model of a stage config: QFormerAlign (stage 1) or VideoChat."""
    kwargs = config.model.kwargs.to_dict() if hasattr(config.model.kwargs, "to_dict") else dict(config.model.kwargs)
    return (QFormerAlign if config.task == "videochat2_qformer" else VideoChat)(**kwargs)


def stage_model_kwargs(variant: str, stage: int, frames: int, scan: bool, remat: str, dtype, lora: bool) -> dict:
    """The kwargs of a stage's model: stage 1 QFormerAlign (32 queries, text), stage 2 VideoChat without Q-Former
    text and LoRA, stage 3 the variant's VideoChat."""
    kwargs = model_kwargs(variant, frames, scan, remat, dtype, lora and stage == 3)
    if stage == 1:
        qformer = dict(kwargs["qformer_config"], num_extra_query=0, text_input=True)
        return dict(vision_kind=kwargs["vision_kind"], vision_config=kwargs["vision_config"], qformer_config=qformer,
                    embed_dim=qformer["width"])
    if stage == 2:
        kwargs["qformer_config"]["text_input"] = False
    return kwargs


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="8b", stage=3, frames=0, epoch_steps=1000, scan=True, remat="full",
                           dtype="bfloat16", lora=True)
    if arg.stage not in STAGES:
        raise ValueError(f"config arg stage={arg.stage}: expected 1, 2 or 3")
    recipe = STAGES[arg.stage]
    frames = arg.frames or recipe["frames"]
    kwargs = stage_model_kwargs(arg.variant, arg.stage, frames, arg.scan, arg.remat, jnp.dtype(arg.dtype), arg.lora)
    task = "videochat2_qformer" if arg.stage == 1 else "videochat2"
    c = common.train_config(task, kwargs, model_name="videochat")
    c.data.update(num_frames=frames, sampling="segment", train_crop="rrc", rrc_scale=(0.5, 1.0), normalize="imagenet")
    c.batch_size = recipe["batch_size"]
    c.total_steps = int(recipe["epochs"] * arg.epoch_steps)
    c.optim.update(base_lr=recipe["base_lr"], lr_batch_denom=0, weight_decay=WEIGHT_DECAY, clip_grad=0.0,
                   warmup_steps=int(recipe["warmup_epochs"] * arg.epoch_steps),
                   warmup_lr=recipe["base_lr"] * recipe["min_lr_ratio"],
                   min_lr=recipe["base_lr"] * recipe["min_lr_ratio"])
    c.mesh.update(dict(data=1, fsdp=-1))  # FSDP over every chip (docs/scale.md)
    c.eval_batch_size = c.batch_size
    if arg.stage == 1:
        c.data.update(format="json", tokenizer="bert", text_length=recipe["max_text_tokens"])
        c.loss = ml_collections.ConfigDict(dict(vtc=1.0, vtm=1.0, cap=1.0))
        c.optim.frozen = ("vision_encoder/",)
        return c
    c.videochat = videochat_task.default_videochat_config()
    c.videochat.update(stage=arg.stage, template=TEMPLATES[arg.variant], max_text_tokens=recipe["max_text_tokens"])
    c.init_from = videochat_task.stage_init_from(arg.stage, kwargs)
    c.optim.frozen = (lora.frozen_base("llm/"),) if arg.stage == 3 and arg.lora else ("llm/",)
    return c

"""InternVideo2 stage 3 / VideoChat2: the size tables and the model of each variant (kwargs of models.videochat).

  python -c "from configs import videochat2; print(videochat2.get_config('8b'))"

Variants (`get_config(arg)`, arg 'VARIANT[,frames=8,scan=True,remat=full,dtype=bfloat16,lora=True]'):
  8b       InternVideo2-Chat-8B: InternVideo2-1B (39 of 40 blocks, CLS kept, exact GELU) + Q-Former (32 + 64 queries;
           its file holds the text embeddings and FFNs, but its chat passes no instruction) +
           Mistral-7B-Instruct-v0.3 with LoRA on every linear layer and the head
  mistral  VideoChat2-Mistral: UMT-L/16 (23 of 24 blocks) + Q-Former with instruction text + Mistral-7B-Instruct-v0.2,
           LoRA as above
  vicuna   VideoChat2-Vicuna: UMT-L/16 + Q-Former with instruction text + Vicuna-7B v0, LoRA on q_proj / v_proj
           (peft's LLaMA default)
  tiny     a few-million-parameter model of the 8b layout, for tests
LoRA r=16, alpha=32, dropout 0.1 (the released recipe); the base LLM is frozen (`optim.frozen`), everything else
trains. The stage-3 recipe: 8 frames, 4 clips per GPU on 32 GPUs (global batch 128), AdamW lr 2e-5, weight decay 0.02,
cosine schedule with warm-up 0.6 epoch from a floor of 0.25 x lr, 3 epochs, prompts up to 512 text tokens + 96 visual.
The training task and data are the next issue's: `config.task` names it, and this config serves today to build the
model abstractly (`build_model`, the parameter counts below) and, with the AOT entry point, to compile its step.

Parameter counts (checked by tests/test_videochat_sizes.py; the LLMs equal transformers' own count of the official
configs, built on the meta device):
  LLMs: vicuna_7b 6,738,423,808; mistral_7b_v0.2 7,241,732,096; mistral_7b_v0.3 7,248,023,552
  8b at 8 frames: total 8,467,860,608 = vision 988,417,664 (39 blocks, pos_embed of 2,049 positions) + LayerNorm
  2,816 + Q-Former 185,733,888 (with its text parts) + projection 3,149,824 + LLM 7,248,023,552 + LoRA 42,532,864;
  trainable (everything but the base LLM) 1,219,837,056
"""
import jax.numpy as jnp

from configs import common, internvideo2
from invideo_jax.models import llm as llm_lib
from invideo_jax.models import lora
from invideo_jax.models.internvideo2 import InternVideo2
from invideo_jax.models.videochat import VideoChat

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
STAGE3 = dict(batch_size=128, base_lr=2e-5, weight_decay=0.02, warmup_epochs=0.6, min_lr_ratio=0.25, epochs=3,
              max_text_tokens=512)


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


def build_model(config) -> VideoChat:
    kwargs = config.model.kwargs.to_dict() if hasattr(config.model.kwargs, "to_dict") else dict(config.model.kwargs)
    return VideoChat(**kwargs)


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="8b", frames=8, scan=True, remat="full", dtype="bfloat16", lora=True)
    kwargs = model_kwargs(arg.variant, arg.frames, arg.scan, arg.remat, jnp.dtype(arg.dtype), arg.lora)
    c = common.train_config("videochat2_instruct", kwargs, model_name="videochat")
    c.data.num_frames = arg.frames
    c.batch_size = STAGE3["batch_size"]
    c.optim.update(base_lr=STAGE3["base_lr"], lr_batch_denom=0, weight_decay=STAGE3["weight_decay"], clip_grad=0.0,
                   warmup_lr=STAGE3["base_lr"] * STAGE3["min_lr_ratio"],
                   min_lr=STAGE3["base_lr"] * STAGE3["min_lr_ratio"])
    if arg.lora:
        c.optim.frozen = (lora.frozen_base("llm/"),)
    c.max_text_tokens = STAGE3["max_text_tokens"]
    return c

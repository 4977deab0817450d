"""VideoChat2 / InternVideo2-Chat (InternVideo2 stage 3): video encoder -> LayerNorm -> Q-Former -> linear -> LLM.

  video (B, T, H, W, C) -> vision_encoder tokens (B, N, E) -> vision_layernorm (eps 1e-12)
    -> qformer (queries + optional instruction text) (B, Q, 768) -> project_up (B, Q, D_llm): the visual tokens,
  which replace the embeddings of the prompt's visual slots (`visual_mask`, Q per row) before the LLM runs.

Vision encoders (`vision_kind`):
  umt           VideoChat2's UMT-L/16 (`UMTEncoder`): tubelet 1, q/v biases, LayerNorm 1e-6, exact GELU, 23 of its 24
                blocks, no final norm, no CLS; the fixed interleaved sinusoid is not a parameter: it is built for the
                pre-training frame count (`pos_embed_frames` = 4) and linearly interpolated in time (align_corners
                False) to the input's frames (pitfall P3); one frame takes the first frame's table (`img_pos_embed`).
  internvideo2  InternVideo2-1B as InternVideo2-Chat-8B runs it: `VisionTransformer` in the InternVideo2 settings
                (models/internvideo2.py) with 39 of its 40 blocks, the CLS token kept, no attention pooling
                (configs/videochat2.py builds the kwargs).

Parameter tree: vision_encoder/..., vision_layernorm/{scale,bias}, qformer/... (models/qformer.py),
project_up/{kernel,bias} (VideoChat2: `llama_proj` / `mistral_proj`; InternVideo2-Chat: `project_up`), llm/...
(models/llm.py). convert/videochat2.py maps the released files onto it.
"""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from invideo_jax.models import layers, posembed
from invideo_jax.models.llm import CausalLM
from invideo_jax.models.qformer import QFormer
from invideo_jax.models.vit import VisionTransformer

VISION_KINDS = ("umt", "internvideo2")


def umt_position_table(num_frames: int, grid: int, width: int, pos_embed_frames: int = 4) -> np.ndarray:
    """(num_frames * grid^2, width): the sinusoid of `pos_embed_frames` frames, linearly resampled in time."""
    if num_frames == 1:
        return layers.sincos_1d_interleaved(grid * grid, width)
    table = layers.sincos_1d_interleaved(pos_embed_frames * grid * grid, width)
    if num_frames == pos_embed_frames:
        return table
    return posembed.resample_pos_embed(table, (pos_embed_frames, grid, grid), (num_frames, grid, grid))


class UMTEncoder(nn.Module):
    """UMT-L/16 as VideoChat2 uses it (see the module docstring); (B, T, H, W, C) -> {'tokens': (B, T*h*w, D)}."""

    width: int = 1024
    depth: int = 23
    num_heads: int = 16
    mlp_dim: int = 4096
    patch_size: int = 16
    num_frames: int = 8
    image_size: int = 224
    pos_embed_frames: int = 4
    norm_eps: float = 1e-6
    drop_path: float = 0.0
    scan: bool = False
    remat: str = "none"
    attn_impl: Optional[str] = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, video, *, train: bool = False):
        expected = (self.num_frames, self.image_size, self.image_size)
        if tuple(video.shape[1:4]) != expected:
            raise ValueError(f"video (B, T, H, W, C) has T, H, W = {tuple(video.shape[1:4])}; model expects {expected}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = layers.PatchEmbed(self.width, self.patch_size, 1, name="patch_embed", **kw)(video.astype(self.dtype))
        table = umt_position_table(self.num_frames, self.image_size // self.patch_size, self.width,
                                   self.pos_embed_frames)
        x = layers.constrain(x + jnp.asarray(table, x.dtype)[None])
        block = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, qkv_bias="qv", norm="layernorm",
                     norm_eps=self.norm_eps, act="gelu", attn_impl=self.attn_impl, **kw)
        x, _ = layers.Transformer(self.depth, block, self.drop_path, self.scan, self.remat, name="transformer")(
            x, deterministic=not train)
        return {"tokens": x}


def splice(embeds, visual, visual_mask):
    """embeds (B, L, D) with the positions where visual_mask (B, L) is True replaced, in order, by visual (B, Q, D);
    each row must mark exactly Q positions."""
    index = jnp.clip(jnp.cumsum(visual_mask.astype(jnp.int32), axis=1) - 1, 0, visual.shape[1] - 1)
    picked = jnp.take_along_axis(visual, index[..., None], axis=1)
    return jnp.where(visual_mask[..., None], picked.astype(embeds.dtype), embeds)


class VideoChat(nn.Module):
    """Encoder -> vision_layernorm -> Q-Former -> project_up -> LLM; see the module docstring."""

    vision_kind: str
    vision_config: dict
    qformer_config: dict
    llm_config: dict
    vision_norm_eps: float = 1e-12
    param_dtype: Any = jnp.float32

    def setup(self):
        if self.vision_kind not in VISION_KINDS:
            raise ValueError(f"vision_kind={self.vision_kind!r}: expected one of {VISION_KINDS}")
        encoder = UMTEncoder if self.vision_kind == "umt" else VisionTransformer
        self.vision_encoder = encoder(**self.vision_config)
        self.vision_layernorm = layers.Norm("layernorm", self.vision_norm_eps, self.param_dtype)
        self.qformer = QFormer(**self.qformer_config)
        self.llm = CausalLM(**self.llm_config)
        self.project_up = layers.Dense((self.llm.width,), (None, "embed"), dtype=self.llm.dtype,
                                       param_dtype=self.param_dtype)

    def encode_video(self, video, instruction=None, instruction_mask=None, *, train: bool = False):
        """video (B, T, H, W, C) [+ Q-Former instruction ids / mask (B, L)] -> visual tokens (B, Q, D_llm)."""
        tokens = self.vision_encoder(video, train=train)["tokens"]
        tokens = self.vision_layernorm(tokens)
        queries = self.qformer(tokens, instruction, instruction_mask, train=train)
        return self.project_up(queries)

    def prompt_embeds(self, video, ids, visual_mask, instruction=None, instruction_mask=None, *, train: bool = False):
        """The LLM input embeddings (B, L, D_llm) of prompts `ids` (B, L) with the visual tokens at `visual_mask`."""
        visual = self.encode_video(video, instruction, instruction_mask, train=train)
        return splice(self.llm.embed(ids), visual, visual_mask)

    def __call__(self, video, ids, visual_mask, mask=None, instruction=None, instruction_mask=None, *,
                 train: bool = False):
        """The LLM's outputs (models/llm.py `CausalLM.__call__`) on the spliced prompts; `mask` (B, L) 1 = token."""
        embeds = self.prompt_embeds(video, ids, visual_mask, instruction, instruction_mask, train=train)
        return self.llm(embeds=embeds, mask=mask, train=train)

    def dummy_inputs(self, batch: int = 1, length: int = 4) -> tuple:
        """(video, ids, visual_mask, mask, instruction) that create every param at init."""
        cfg = self.vision_config
        video = jnp.zeros((batch, cfg["num_frames"], cfg["image_size"], cfg["image_size"], 3), jnp.float32)
        queries = self.qformer_config.get("num_query", 32) + self.qformer_config.get("num_extra_query", 64)
        ids = jnp.zeros((batch, queries + length), jnp.int32)
        visual = jnp.zeros((batch, queries + length), bool).at[:, 1:queries + 1].set(True)
        instruction = jnp.zeros((batch, 2), jnp.int32) if self.qformer_config.get("text_input", True) else None
        return video, ids, visual, jnp.ones_like(visual), instruction

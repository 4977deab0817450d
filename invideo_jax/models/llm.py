"""Decoder-only language model of the LLaMA / Mistral family (VideoChat2's Vicuna-7B and Mistral-7B).

Pre-norm decoder layers, as `transformers`' LlamaForCausalLM / MistralForCausalLM:
  x = x + o_proj(attention(rope(q_proj(h)), rope(k_proj(h)), v_proj(h)))   h = RMSNorm(x)  (input_layernorm)
  x = x + down_proj(silu(gate_proj(h)) * up_proj(h))                        h = RMSNorm(x)  (post_attention_layernorm)
then a final RMSNorm and the head (untied `lm_head`, or the transposed embedding table when tied). Rotary embeddings
rotate the two halves of each head (`rotate_half`), frequencies theta^(-2i/head_dim), at the token's position id;
grouped-query attention shares each key/value head among num_heads / num_kv_heads query heads; an optional
sliding window lets a token see the `sliding_window` most recent slots only (itself included), as Mistral.

Inputs are token ids or embeddings (visual tokens spliced into a prompt). `mask` (B, S) marks the key slots that hold
tokens (left padding is 0); `positions` (B, T) the rotary position ids (default: the running count of tokens, as
`transformers` derives them from the attention mask). Attention is causal over slots. With a `cache`
({'k', 'v'}: (layers, B, S, kv_heads, head_dim), `init_cache`), the T new tokens are written at slots
[cache_index, cache_index + T) and attend to every earlier slot: prefill and one-token decoding (invideo_jax.generate).

Parameter tree (`transformers` names below `model.` in brackets; scanned: `blocks` with a leading `layers` axis):
  embed_tokens/embedding (V, D)                                   [embed_tokens.weight]
  blocks_{i}/input_layernorm/scale, post_attention_layernorm/scale [layers.{i}.input_layernorm.weight, ...]
  blocks_{i}/self_attn/q_proj/kernel (D, heads, hd)               [layers.{i}.self_attn.q_proj.weight]
  blocks_{i}/self_attn/{k,v}_proj/kernel (D, kv_heads, hd), o_proj/kernel (heads, hd, D)
  blocks_{i}/mlp/{gate,up}_proj/kernel (D, F), down_proj/kernel (F, D)
  norm/scale                                                      [norm.weight]
  lm_head/kernel (D, V) (untied only)                             [lm_head.weight, outside `model.`]
With LoRA (`lora_rank` > 0) every Dense whose path below the model (e.g. 'self_attn/q_proj', 'mlp/down_proj',
'lm_head') matches `lora_targets` (re.search) also holds `lora_a`, `lora_b` (models/lora.py); one regex serves all
layers (the scanned layout cannot give layers different adapters).
"""
import re
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from invideo_jax.models import attention, layers
from invideo_jax.models.layers import logical
from invideo_jax.models.lora import LoraDense

Dtype = Any
embed_init = nn.initializers.normal(0.02)
# VideoChat2's Mistral recipe: every linear layer of the decoder and the head.
LORA_ALL_LINEAR = r"(q|k|v|o|gate|up|down)_proj$|^lm_head$"


def rotary(x, positions, theta: float):
    """x (B, T, heads, hd) rotated by angle position * theta^(-2i/hd) on the pairs (i, i + hd/2)."""
    hd = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    rotated = jnp.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], axis=-1)
    return x * cos + rotated * sin


def attention_mask(key_mask, q_slots, sliding_window: Optional[int]):
    """(B, 1, T, S) bool: slot j is visible from a query at slot q if it holds a token, j <= q and, with a window,
    j > q - window."""
    k_slots = jnp.arange(key_mask.shape[1])
    visible = k_slots[None, :] <= q_slots[:, None]
    if sliding_window:
        visible &= k_slots[None, :] > q_slots[:, None] - sliding_window
    return visible[None, None] & key_mask.astype(bool)[:, None, None, :]


class _Projections(nn.Module):
    """Settings shared by the attention and MLP blocks: LoRA on the Dense layers whose path matches the regex."""

    lora_rank: int = 0
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: str = LORA_ALL_LINEAR
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def dense(self, features, axes, name, in_dims=1):
        rank = self.lora_rank if re.search(self.lora_targets, f"{self.name}/{name}") else 0
        return LoraDense(tuple(features), tuple(axes), in_dims, False, rank=rank, alpha=self.lora_alpha,
                         dropout=self.lora_dropout, dtype=self.dtype, param_dtype=self.param_dtype, name=name)


class Attention(_Projections):
    """Grouped-query attention with rotary embeddings; writes its keys/values into `cache` when given."""

    num_heads: int = 1
    num_kv_heads: int = 1
    head_dim: int = 64
    rope_theta: float = 10000.0
    attn_impl: Optional[str] = None

    @nn.compact
    def __call__(self, x, positions, mask, cache, cache_index, deterministic: bool = True):
        width = x.shape[-1]
        q = self.dense((self.num_heads, self.head_dim), ("embed", "heads", "kv"), "q_proj")(x, deterministic)
        k = self.dense((self.num_kv_heads, self.head_dim), ("embed", "kv_heads", "kv"), "k_proj")(x, deterministic)
        v = self.dense((self.num_kv_heads, self.head_dim), ("embed", "kv_heads", "kv"), "v_proj")(x, deterministic)
        q, k = rotary(q, positions, self.rope_theta), rotary(k, positions, self.rope_theta)
        if cache is not None:
            k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, cache_index, 0, 0))
            v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, cache_index, 0, 0))
            cache = (k, v)
        y = attention.attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask, scale=self.head_dim ** -0.5,
                                impl=self.attn_impl)
        return self.dense((width,), ("heads", "kv", "embed"), "o_proj", in_dims=2)(y, deterministic), cache


class GatedMlp(_Projections):
    """down_proj(silu(gate_proj(x)) * up_proj(x)) (SwiGLU)."""

    mlp_dim: int = 256

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        gate = self.dense((self.mlp_dim,), ("embed", "mlp"), "gate_proj")(x, deterministic)
        up = self.dense((self.mlp_dim,), ("embed", "mlp"), "up_proj")(x, deterministic)
        return self.dense((x.shape[-1],), ("mlp", "embed"), "down_proj")(jax.nn.silu(gate) * up, deterministic)


class DecoderLayer(nn.Module):
    """x + attn(RMSNorm(x)), then x + mlp(RMSNorm(x)); `cache` None or (k, v) of this layer."""

    attention: dict  # Attention keyword arguments
    mlp: dict  # GatedMlp keyword arguments
    norm_eps: float = 1e-6
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, cache, positions, mask, cache_index, deterministic: bool = True):
        norm = lambda name: layers.Norm("rmsnorm", self.norm_eps, self.param_dtype, name=name)
        y, cache = Attention(**self.attention, name="self_attn")(norm("input_layernorm")(x), positions, mask, cache,
                                                                   cache_index, deterministic)
        x = x + y
        x = x + GatedMlp(**self.mlp, name="mlp")(norm("post_attention_layernorm")(x), deterministic)
        return layers.constrain(x.astype(y.dtype)), cache


class CausalLM(nn.Module):
    """The decoder-only LM; sizes are rows of `configs.videochat2.LLM_SIZES`. See the module docstring."""

    vocab_size: int
    width: int
    depth: int
    num_heads: int
    num_kv_heads: int
    mlp_dim: int
    head_dim: Optional[int] = None  # default width // num_heads
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    sliding_window: Optional[int] = None
    tie_embeddings: bool = False
    lora_rank: int = 0
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: str = LORA_ALL_LINEAR
    scan: bool = False
    remat: str = "none"
    attn_impl: Optional[str] = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def kv_head_dim(self) -> int:
        return self.head_dim or self.width // self.num_heads

    def setup(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.remat not in layers.REMAT_POLICIES:
            raise ValueError(f"unknown remat policy {self.remat!r}; expected one of {sorted(layers.REMAT_POLICIES)}")
        kw = dict(lora_rank=self.lora_rank, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                  lora_targets=self.lora_targets, dtype=self.dtype, param_dtype=self.param_dtype)
        attn_kwargs = dict(num_heads=self.num_heads, num_kv_heads=self.num_kv_heads, head_dim=self.kv_head_dim,
                           rope_theta=self.rope_theta, attn_impl=self.attn_impl, **kw)
        layer = dict(attention=attn_kwargs, mlp=dict(mlp_dim=self.mlp_dim, **kw), norm_eps=self.norm_eps,
                     param_dtype=self.param_dtype)
        layer_cls = DecoderLayer
        if self.remat != "none":
            layer_cls = nn.remat(DecoderLayer, policy=layers.REMAT_POLICIES[self.remat], prevent_cse=not self.scan,
                                 static_argnums=(6,))
        if self.scan:
            self.blocks = layer_cls(**layer, name="blocks")
        else:
            self.blocks = [layer_cls(**layer, name=f"blocks_{i}") for i in range(self.depth)]
        self.embed_tokens = nn.Embed(self.vocab_size, self.width, dtype=self.dtype, param_dtype=self.param_dtype,
                                     embedding_init=logical(embed_init, ("vocab", "embed")))
        self.norm = layers.Norm("rmsnorm", self.norm_eps, self.param_dtype)
        if not self.tie_embeddings:
            rank = self.lora_rank if re.search(self.lora_targets, "lm_head") else 0
            self.lm_head = LoraDense((self.vocab_size,), ("embed", "vocab"), use_bias=False, rank=rank,
                                     alpha=self.lora_alpha, dropout=self.lora_dropout, dtype=self.dtype,
                                     param_dtype=self.param_dtype)

    def embed(self, ids):
        """(B, T) ids -> (B, T, D) input embeddings (to splice other tokens in before calling the model)."""
        return self.embed_tokens(ids)

    def init_cache(self, batch: int, length: int, dtype=None) -> dict:
        """Zero key/value cache {'k', 'v'}: (layers, batch, length, kv_heads, head_dim)."""
        shape = (self.depth, batch, length, self.num_kv_heads, self.kv_head_dim)
        return {"k": jnp.zeros(shape, dtype or self.dtype), "v": jnp.zeros(shape, dtype or self.dtype)}

    def __call__(self, ids=None, *, embeds=None, mask=None, positions=None, cache=None, cache_index=0,
                 train: bool = False, return_layers: bool = False):
        """Token `ids` (B, T) or `embeds` (B, T, D) -> dict with `logits` (B, T, V) float32, `hidden` (B, T, D) (after
        the final norm), `layers` (depth, B, T, D) (each layer's output, with `return_layers`) and `cache` (with a
        cache). `mask` (B, S): 1 = the key slot holds a token (S = T without a cache, the cache length with one;
        default all); `positions` (B, T) rotary positions (default: the running token count from `mask`)."""
        if (ids is None) == (embeds is None):
            raise ValueError("CausalLM: give exactly one of `ids` and `embeds`")
        x = self.embed(ids) if embeds is None else embeds.astype(self.dtype)
        batch, length = x.shape[:2]
        slots = length if cache is None else cache["k"].shape[2]
        if mask is None:
            mask = jnp.ones((batch, slots), bool)
        if mask.shape != (batch, slots):
            raise ValueError(f"mask {mask.shape}: expected (batch, key slots) = {(batch, slots)}")
        if positions is None:
            if cache is not None:
                raise ValueError("CausalLM: with a cache, give the rotary `positions` of the new tokens")
            positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)
        q_slots = cache_index + jnp.arange(length)
        attn_mask = attention_mask(mask, q_slots, self.sliding_window)
        x = layers.constrain(x)
        deterministic = not train
        if self.scan:
            caches = None if cache is None else (cache["k"], cache["v"])
            (x, new), hidden = self._scan_layers(x, caches, positions, attn_mask, cache_index, deterministic,
                                                 return_layers)
        else:
            new_k, new_v, hidden = [], [], []
            for i, block in enumerate(self.blocks):
                layer_cache = None if cache is None else (cache["k"][i], cache["v"][i])
                x, layer_cache = block(x, layer_cache, positions, attn_mask, cache_index, deterministic)
                hidden.append(x)
                if cache is not None:
                    new_k.append(layer_cache[0])
                    new_v.append(layer_cache[1])
            new = None if cache is None else (jnp.stack(new_k), jnp.stack(new_v))
            hidden = jnp.stack(hidden) if return_layers else None
        h = self.norm(x).astype(self.dtype)
        out = {"hidden": h, "logits": self.logits(h, deterministic)}
        if return_layers:
            out["layers"] = hidden
        if cache is not None:
            out["cache"] = {"k": new[0], "v": new[1]}
        return out

    def logits(self, h, deterministic: bool = True):
        """(..., D) final hidden states -> (..., V) float32 logits."""
        if self.tie_embeddings:
            return self.embed_tokens.attend(h).astype(jnp.float32)
        return self.lm_head(h, deterministic).astype(jnp.float32)

    def _scan_layers(self, x, caches, positions, attn_mask, cache_index, deterministic, return_layers):
        """Runs the scanned `blocks`; returns ((x, new (k, v) or None), stacked layer outputs or None)."""
        def body(block, carry, layer_cache):
            out, layer_cache = block(carry, layer_cache, positions, attn_mask, cache_index, deterministic)
            return out, (layer_cache, out if return_layers else None)

        scanned = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                          in_axes=0, length=self.depth, metadata_params={nn.PARTITION_NAME: "layers"})
        x, (new, hidden) = scanned(self.blocks, x, caches)
        return (x, new), hidden

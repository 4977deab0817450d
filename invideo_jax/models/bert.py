"""BERT text encoder with InternVideo2's fusion layers (the stage-2 "multimodal decoder") and the MLM head.

Post-norm BERT: word + position + token-type embeddings -> LayerNorm, then per layer
  x = LN(x + attn(x))                       self-attention, padding keys masked out
  x = LN(x + cross_attn(x, vision tokens))  only in layers >= `fusion_layer`; keys/values from `encoder_width`
  x = LN(x + fc2(gelu(fc1(x))))             exact (erf) GELU
LayerNorm eps 1e-12, softmax scale head_dim^-0.5. The MLM head is dense -> GELU -> LayerNorm -> the word-embedding
table (tied, transposed) + a per-token bias; the optional pooler is tanh(dense(first token)).

InternVideo2 stage 2 (official `xbert.py`, config `bert_large`: 24 layers, width 1024, 16 heads, FFN 4096,
`fusion_layer` 19; `bert` base: 12 layers, `fusion_layer` 9) runs the text encoder in two halves:
  `text`    (official `mode='text'`)   embeddings + layers [0, fusion_layer): the text features (CLS -> `text_proj`);
  `fusion`  (official `mode='fusion'`) layers [fusion_layer, depth) on given text hidden states and vision tokens
            (ITM: CLS -> `itm_head`);
  `__call__` (official `mode='multi_modal'`) both; with `mlm_head` also the MLM logits (the MLM loss of stage 2 runs
            the masked text through all layers, conditioned on the vision tokens).
Without cross-attention layers (`fusion_layer` None, plain BERT / MiniLM) `text` runs every layer.

Masks follow BERT: `attention_mask` (B, L) 1/True = token, 0/False = padding (padded keys are never attended; padded
positions still get outputs, as in BERT); `context_mask` (B, N) likewise for the vision tokens (default: all).

Parameter tree (official / Hugging Face names, below `text_encoder.bert.` / `bert.`, in brackets):
  embeddings/word (V, D), position (P, D), token_type (T, D)   [embeddings.{word,position,token_type}_embeddings]
  embeddings/norm/{scale,bias}                                  [embeddings.LayerNorm]
  layer_{i}/attn/qkv/kernel (D, 3, heads, hd), bias             [encoder.layer.{i}.attention.self.{query,key,value}]
  layer_{i}/attn/proj/kernel (heads, hd, D), bias; attn_norm    [attention.output.{dense, LayerNorm}]
  layer_{i}/cross_attn/q (D, heads, hd), kv (E, 2, heads, hd)   [crossattention.self.{query; key, value}]
  layer_{i}/cross_attn/proj, cross_norm                         [crossattention.output.{dense, LayerNorm}]
  layer_{i}/mlp/fc1, fc2; layer_{i}/mlp_norm                    [intermediate.dense, output.{dense, LayerNorm}]
  pooler_dense/{kernel,bias} (pooler=True)                      [pooler.dense]
  mlm/dense, mlm/norm, mlm/bias (V,) (mlm_head=True)            [cls.predictions.{transform.dense,
                                                                 transform.LayerNorm, bias}; decoder tied]

Differences from the official code: no attention-probability dropout (`dropout` applies to the embeddings and to
every residual branch, BERT's hidden dropout; official rates 0.1/0.1, default here 0 = off); padded keys get
`jax.nn.dot_product_attention`'s large negative bias instead of -10000 (identical after the softmax unless a row has
no token at all); dense kernels start from Xavier-uniform (official: normal 0.02), which only matters for training
from scratch since released weights are converted (`invideo_jax.convert.bert`).
"""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from invideo_jax.models import layers
from invideo_jax.models.layers import logical

Dtype = Any
embed_init = nn.initializers.normal(0.02)


class BertEmbeddings(nn.Module):
    vocab_size: int
    width: int
    max_len: int
    type_vocab_size: int
    norm_eps: float
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.word = self.param("word", logical(embed_init, ("vocab", "embed")), (self.vocab_size, self.width),
                               self.param_dtype)
        self.position = self.param("position", logical(embed_init, (None, "embed")), (self.max_len, self.width),
                                   self.param_dtype)
        self.token_type = self.param("token_type", logical(embed_init, (None, "embed")),
                                     (self.type_vocab_size, self.width), self.param_dtype)
        self.norm = layers.Norm("layernorm", self.norm_eps, self.param_dtype)
        self.drop = nn.Dropout(self.dropout)

    def __call__(self, ids, token_type_ids=None, deterministic: bool = True):
        length = ids.shape[1]
        if length > self.max_len:
            raise ValueError(f"text length {length} exceeds max_len {self.max_len} (position embeddings)")
        types = jnp.zeros_like(ids) if token_type_ids is None else token_type_ids
        x = jnp.take(self.word, ids, axis=0) + jnp.take(self.token_type, types, axis=0) + self.position[:length]
        x = self.drop(self.norm(x), deterministic=deterministic)
        return layers.constrain(x.astype(self.dtype))

    def attend(self, x):
        """x (..., D) @ word^T: logits over the vocabulary (the MLM decoder, tied to the embeddings)."""
        return x.astype(self.dtype) @ self.word.astype(self.dtype).T


class BertLayer(nn.Module):
    """Post-norm: LN(x + attn(x)), [LN(x + cross_attn(x, context))], LN(x + mlp(x)); each branch with dropout."""

    num_heads: int
    mlp_dim: int
    cross_attention: bool = False
    norm_eps: float = 1e-12
    act: str = "gelu"
    dropout: float = 0.0
    attn_impl: Optional[str] = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask, context, context_mask, deterministic: bool = True):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def add_norm(x, y, name):
            y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
            return layers.Norm("layernorm", self.norm_eps, self.param_dtype, name=name)(x + y).astype(self.dtype)

        y = layers.Attention(self.num_heads, "qkv", attn_impl=self.attn_impl, name="attn", **kw)(x, mask=mask)
        x = add_norm(x, y, "attn_norm")
        if self.cross_attention:
            if context is None:
                raise ValueError("this layer has cross-attention: it needs the vision tokens (`context`)")
            y = layers.Attention(self.num_heads, "qkv", attn_impl=self.attn_impl, name="cross_attn", **kw)(
                x, context=context.astype(self.dtype), mask=context_mask)
            x = add_norm(x, y, "cross_norm")
        y = layers.Mlp(self.mlp_dim, self.act, name="mlp", **kw)(x)
        return layers.constrain(add_norm(x, y, "mlp_norm"))


class MlmHead(nn.Module):
    """dense -> act -> LayerNorm -> tied decoder (`attend`) + bias."""

    vocab_size: int
    act: str = "gelu"
    norm_eps: float = 1e-12
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, attend):
        x = layers.dense(x.shape[-1], ("embed", None), name="dense", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        x = layers.activation(self.act)(x)
        x = layers.Norm("layernorm", self.norm_eps, self.param_dtype, name="norm")(x)
        bias = self.param("bias", logical(layers.zeros, ("vocab",)), (self.vocab_size,), self.param_dtype)
        return attend(x) + bias.astype(self.dtype)


class Bert(nn.Module):
    """BERT with cross-attention in layers >= `fusion_layer`; see the module docstring for the methods."""

    vocab_size: int = 30522
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    max_len: int = 512
    type_vocab_size: int = 2
    norm_eps: float = 1e-12
    act: str = "gelu"
    fusion_layer: Optional[int] = None  # first layer with cross-attention; None: no cross-attention
    encoder_width: Optional[int] = None  # width of the vision tokens (default: width); used for dummy inputs
    mlm_head: bool = False
    pooler: bool = False
    dropout: float = 0.0
    remat: str = "none"
    attn_impl: Optional[str] = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def num_text_layers(self) -> int:
        return self.depth if self.fusion_layer is None else self.fusion_layer

    @property
    def cross_attention_layers(self) -> tuple:
        return tuple(range(self.num_text_layers, self.depth))

    def setup(self):
        if not 0 <= self.num_text_layers <= self.depth:
            raise ValueError(f"fusion_layer {self.fusion_layer} is outside [0, depth={self.depth}]")
        if self.remat not in layers.REMAT_POLICIES:
            raise ValueError(f"unknown remat policy {self.remat!r}; expected one of {sorted(layers.REMAT_POLICIES)}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.embeddings = BertEmbeddings(self.vocab_size, self.width, self.max_len, self.type_vocab_size,
                                         self.norm_eps, self.dropout, **kw)
        layer_cls = BertLayer
        if self.remat != "none":
            layer_cls = nn.remat(BertLayer, policy=layers.REMAT_POLICIES[self.remat], static_argnums=(5,))
        self.layer = [layer_cls(self.num_heads, self.mlp_dim, i >= self.num_text_layers, self.norm_eps, self.act,
                                self.dropout, self.attn_impl, **kw) for i in range(self.depth)]
        if self.pooler:
            self.pooler_dense = layers.Dense((self.width,), ("embed", None), **kw)
        if self.mlm_head:
            self.mlm = MlmHead(self.vocab_size, self.act, self.norm_eps, **kw)

    def text(self, ids, attention_mask=None, token_type_ids=None, *, train: bool = False):
        """ids (B, L) int -> hidden states (B, L, D) after the text layers [0, fusion_layer)."""
        x = self.embeddings(ids, token_type_ids, deterministic=not train)
        return self._run(range(self.num_text_layers), x, attention_mask, None, None, train)

    def fusion(self, hidden, attention_mask=None, context=None, context_mask=None, *, train: bool = False):
        """Text hidden states (B, L, D) and vision tokens `context` (B, N, E) -> (B, L, D) after the fusion layers."""
        if self.cross_attention_layers and context is None:
            raise ValueError("the fusion layers need the vision tokens (`context`)")
        return self._run(self.cross_attention_layers, hidden, attention_mask, context, context_mask, train)

    def mlm_logits(self, hidden):
        """(B, L, D) -> MLM logits (B, L, vocab), float32."""
        if not self.mlm_head:
            raise ValueError("this Bert has no MLM head (mlm_head=False)")
        return self.mlm(hidden, self.embeddings.attend).astype(jnp.float32)

    def pool(self, hidden):
        """tanh(dense(hidden[:, 0])) (B, D): BERT's pooler."""
        if not self.pooler:
            raise ValueError("this Bert has no pooler (pooler=False)")
        return jnp.tanh(self.pooler_dense(hidden[:, 0]))

    def __call__(self, ids, attention_mask=None, context=None, context_mask=None, token_type_ids=None, *,
                 train: bool = False):
        """All layers (the fusion layers only when `context` is given).

        Returns `text` (B, L, D) after the text layers, `tokens` (B, L, D) after the fusion layers (= `text` without
        fusion layers or context), and `logits` (B, L, vocab) with `mlm_head`, `pooled` (B, D) with `pooler`.
        """
        text = self.text(ids, attention_mask, token_type_ids, train=train)
        tokens = text
        if self.cross_attention_layers and context is not None:
            tokens = self.fusion(text, attention_mask, context, context_mask, train=train)
        out = {"text": text, "tokens": tokens}
        if self.mlm_head:
            out["logits"] = self.mlm_logits(tokens)
        if self.pooler:
            out["pooled"] = self.pool(tokens)
        return out

    def dummy_inputs(self, batch: int = 1, length: int = 2) -> tuple:
        """(ids, attention_mask, context) that create every param at init (context None without fusion layers)."""
        ids = jnp.zeros((batch, length), jnp.int32)
        context = None
        if self.cross_attention_layers:
            context = jnp.zeros((batch, 1, self.encoder_width or self.width), self.dtype)
        return ids, jnp.ones((batch, length), bool), context

    def _run(self, indices, x, attention_mask, context, context_mask, train):
        mask = None if attention_mask is None else attention_mask.astype(bool)[:, None, None, :]
        cmask = None if context_mask is None else context_mask.astype(bool)[:, None, None, :]
        for i in indices:
            x = self.layer[i](x, mask, context, cmask, not train)
        return x

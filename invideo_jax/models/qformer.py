"""The Q-Former bridge of BLIP-2 / VideoChat2: learned queries read the vision tokens through a BERT encoder.

Post-norm BERT layers (LayerNorm eps 1e-12, exact GELU) over [queries ; instruction text]:
  x = LN(x + attn(x))                                   queries and text attend to each other (padded text masked)
  q = LN(q + cross_attn(q, vision tokens))              queries only, in every `cross_attention_freq`-th layer
                                                        (layers 0, 2, 4, ...), keys/values from the vision width
  q = LN(q + query_mlp(q)),  t = LN(t + mlp(t))         separate FFNs for the queries (`intermediate_query` /
                                                        `output_query`) and the text (`intermediate` / `output`)
Every residual branch has dropout then drop-path (rate linear in depth from 0 to `drop_path`). The embeddings are
[queries ; word + position(0..L-1) of the text] through one LayerNorm and dropout: the queries are normalised too
and take no position. The queries are `query_tokens` (num_query, N(0, 0.02)) then `extra_query_tokens`
(num_extra_query, zeros), 32 + 64 in VideoChat2. Only the query outputs (B, num_query + num_extra_query, D) leave.
Without `text_input` (VideoChat2 stage 2) the word / position embeddings and the text FFNs do not exist.

Parameter tree (VideoChat2 names below `qformer.bert.` in brackets):
  query_tokens (1, Q, D), extra_query_tokens (1, Q', D)          [query_tokens, extra_query_tokens: model root]
  word (V, D), position (P, D) (text_input only)                 [embeddings.{word,position}_embeddings]
  embeddings_norm                                                [embeddings.LayerNorm]
  layer_{i}/attn, attn_norm, cross_attn, cross_norm, mlp, mlp_norm  as models/bert.py's BertLayer
  layer_{i}/query_mlp/fc1, fc2, query_mlp_norm                   [intermediate_query.dense, output_query.*]
"""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from invideo_jax.models import layers
from invideo_jax.models.bert import BertLayer, embed_init
from invideo_jax.models.layers import logical

Dtype = Any


class QFormerLayer(BertLayer):
    """BertLayer's settings and parameter names, with the queries / text split of the module docstring."""

    @nn.compact
    def __call__(self, x, mask, num_query, context, context_mask, rate, deterministic: bool = True):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def add_norm(x, y, name):
            y = layers.drop_path(self, nn.Dropout(self.dropout)(y, deterministic=deterministic), rate, deterministic)
            return layers.Norm("layernorm", self.norm_eps, self.param_dtype, name=name)(x + y).astype(self.dtype)

        attention = lambda name: layers.Attention(self.num_heads, "qkv", attn_impl=self.attn_impl, name=name, **kw)
        mlp = lambda name: layers.Mlp(self.mlp_dim, self.act, name=name, **kw)
        x = add_norm(x, attention("attn")(x, mask=mask), "attn_norm")
        query, text = x[:, :num_query], x[:, num_query:]
        if num_query:
            if self.cross_attention:
                y = attention("cross_attn")(query, context=context.astype(self.dtype), mask=context_mask)
                query = add_norm(query, y, "cross_norm")
            query = add_norm(query, mlp("query_mlp")(query), "query_mlp_norm")
        if text.shape[1]:
            text = add_norm(text, mlp("mlp")(text), "mlp_norm")
        return layers.constrain(jnp.concatenate([query, text], axis=1))


class QFormer(nn.Module):
    """Vision tokens (B, N, encoder_width) [+ instruction ids] -> query outputs (B, Q + Q', width)."""

    encoder_width: int = 1024
    num_query: int = 32
    num_extra_query: int = 64
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    vocab_size: int = 30523  # bert-base-uncased + [DEC]
    max_len: int = 512
    cross_attention_freq: int = 2
    text_input: bool = True
    norm_eps: float = 1e-12
    act: str = "gelu"
    dropout: float = 0.0
    drop_path: float = 0.0
    remat: str = "none"
    attn_impl: Optional[str] = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def num_queries(self) -> int:
        return self.num_query + self.num_extra_query

    @nn.compact
    def __call__(self, vision, text_ids=None, text_mask=None, vision_mask=None, *, train: bool = False,
                 use_queries: bool = True, causal_text: bool = False, return_text: bool = False):
        """vision (B, N, E); text_ids / text_mask (B, L) the instruction (left- or right-padded, mask 1 = token);
        vision_mask (B, N) (default all). Returns the query outputs (B, Q + Q', width).

        Stage 1 (BLIP-2 style alignment) also runs: the text alone (`use_queries` False: a BERT encoder, vision
        unused), and captioning (`causal_text`: the UniLM mask, queries see the queries, each text token the queries
        and the text up to itself). `return_text`: (query outputs, text outputs (B, L, width))."""
        if text_ids is not None and not self.text_input:
            raise ValueError("this Q-Former has no text input (text_input=False): give no instruction")
        batch = vision.shape[0] if text_ids is None else text_ids.shape[0]
        queries = self.param("query_tokens", logical(nn.initializers.normal(0.02), (None, None, "embed")),
                             (1, self.num_query, self.width), self.param_dtype)
        if self.num_extra_query:
            extra = self.param("extra_query_tokens", logical(layers.zeros, (None, None, "embed")),
                               (1, self.num_extra_query, self.width), self.param_dtype)
            queries = jnp.concatenate([queries, extra], axis=1)
        num_query = self.num_queries if use_queries else 0
        x = jnp.broadcast_to(queries, (batch,) + queries.shape[1:]).astype(jnp.float32)[:, :num_query]
        mask = jnp.ones((batch, num_query), bool)
        if text_ids is not None:
            length = text_ids.shape[1]
            if length > self.max_len:
                raise ValueError(f"instruction length {length} exceeds the Q-Former's max_len {self.max_len}")
            word = self.param("word", logical(embed_init, ("vocab", "embed")), (self.vocab_size, self.width),
                              self.param_dtype)
            position = self.param("position", logical(embed_init, (None, "embed")), (self.max_len, self.width),
                                  self.param_dtype)
            text = jnp.take(word, text_ids, axis=0) + position[:length]
            x = jnp.concatenate([x, text.astype(jnp.float32)], axis=1)
            text_mask = jnp.ones(text_ids.shape, bool) if text_mask is None else text_mask.astype(bool)
            mask = jnp.concatenate([mask, text_mask], axis=1)
        x = layers.Norm("layernorm", self.norm_eps, self.param_dtype, name="embeddings_norm")(x)
        x = nn.Dropout(self.dropout)(x, deterministic=not train).astype(self.dtype)
        attn_mask = mask[:, None, None, :]
        if causal_text:
            slots = jnp.arange(mask.shape[1])
            sees = (slots[None, :] < num_query) | ((slots[:, None] >= num_query) & (slots[None, :] <= slots[:, None]))
            attn_mask = attn_mask & sees[None, None]
        vision_mask = None if vision_mask is None else vision_mask.astype(bool)[:, None, None, :]
        layer_cls = QFormerLayer
        if self.remat != "none":
            layer_cls = nn.remat(QFormerLayer, policy=layers.REMAT_POLICIES[self.remat], static_argnums=(3, 6, 7))
        rates = np.linspace(0.0, self.drop_path, self.depth) if self.drop_path else [None] * self.depth
        for i in range(self.depth):
            layer = layer_cls(self.num_heads, self.mlp_dim, i % self.cross_attention_freq == 0, self.norm_eps,
                              self.act, self.dropout, self.attn_impl, self.dtype, self.param_dtype, name=f"layer_{i}")
            rate = None if rates[i] is None else float(rates[i])
            x = layer(x, attn_mask, num_query, vision, vision_mask, rate, not train)
        return (x[:, :num_query], x[:, num_query:]) if return_text else x[:, :num_query]

    def dummy_inputs(self, batch: int = 1) -> tuple:
        """(vision, text_ids) that create every param at init (text_ids None without text input)."""
        vision = jnp.zeros((batch, 1, self.encoder_width), self.dtype)
        return vision, (jnp.zeros((batch, 2), jnp.int32) if self.text_input else None)

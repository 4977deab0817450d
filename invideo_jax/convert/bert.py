"""BERT checkpoints (Hugging Face and InternVideo2's text encoder) <-> our `Bert` variables.

Formats (one key table, below the prefixes each format strips):
  bert_hf       transformers `BertModel` (keys `embeddings.*`, `encoder.layer.*`, `pooler.*`) or `BertForMaskedLM`
                (`bert.*`, `cls.predictions.*`), cross-attention layers (`crossattention.*`, HF: keys/values from
                the hidden size) included. Saving writes `BertModel` keys, or `BertForMaskedLM` keys when the model
                has an MLM head.
  internvideo2  the stage-2 checkpoint's text encoder: `text_encoder.bert.*` and `text_encoder.cls.predictions.*`,
                inside `{'module': ...}` / `{'model': ...}`; every other stage-2 key (`vision_encoder.*`,
                `vision_proj`, `text_proj`, `itm_head`, `temp`, audio) belongs to other converters and is skipped
                (not listed). Cross-attention keys/values project from `encoder_width` (the vision width).

Layouts: query/key/value Linear (D, D) each <-> our fused qkv kernel (D, 3, heads, hd); cross-attention query <-> q
(D, heads, hd), key + value <-> kv (E, 2, heads, hd); output dense <-> proj (heads, hd, D).
Tied weights: the MLM decoder (`cls.predictions.decoder.weight`, `.decoder.bias`) is the word-embedding table and
`cls.predictions.bias`; loading checks that they are tied (our model cannot hold an untied decoder) and lists them as
dropped, saving writes them. Buffers `embeddings.position_ids` / `token_type_ids` are ignored.

Dropped without error when the model lacks the part: `pooler.*` (pooler=False) and `cls.*` (mlm_head=False).
Left at their initial values (and reported) when the checkpoint has none of their keys: the cross-attention of the
fusion layers (InternVideo2 starts stage 2 from `bert-large-uncased`, whose layers have no cross-attention), the MLM
head, the pooler.
"""
import dataclasses
import os
import re

import flax.linen as nn
import jax
import numpy as np

from invideo_jax.convert import common
from invideo_jax.convert.common import ConversionError, Format, linear, norm, rule, scoped
from invideo_jax.models.bert import Bert

LAYER = [
    *linear("attn/qkv", [f"attention.self.{n}" for n in ("query", "key", "value")]),
    *linear("attn/proj", "attention.output.dense", n_in=2),
    *norm("attn_norm", "attention.output.LayerNorm"),
    *linear("cross_attn/q", "crossattention.self.query"),
    *linear("cross_attn/kv", ["crossattention.self.key", "crossattention.self.value"]),
    *linear("cross_attn/proj", "crossattention.output.dense", n_in=2),
    *norm("cross_norm", "crossattention.output.LayerNorm"),
    *linear("mlp/fc1", "intermediate.dense"),
    *linear("mlp/fc2", "output.dense"),
    *norm("mlp_norm", "output.LayerNorm"),
]
BERT = [  # names below `bert.` (BertForMaskedLM) / `text_encoder.bert.` (InternVideo2)
    rule("embeddings/word", "embeddings.word_embeddings.weight"),
    rule("embeddings/position", "embeddings.position_embeddings.weight"),
    rule("embeddings/token_type", "embeddings.token_type_embeddings.weight"),
    *norm("embeddings/norm", "embeddings.LayerNorm"),
    *scoped(LAYER, "layer_{i}/", "encoder.layer.{i}."),
    *linear("pooler_dense", "pooler.dense"),
]
MLM = [
    *linear("mlm/dense", "cls.predictions.transform.dense"),
    *norm("mlm/norm", "cls.predictions.transform.LayerNorm"),
    rule("mlm/bias", "cls.predictions.bias", "vector"),
]
RULES = tuple(scoped([*BERT, *MLM], "params/", ""))
BUFFERS = (r"^embeddings\.(position_ids|token_type_ids)$",)
TIED = {"cls.predictions.decoder.weight": "embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias"}
FORMATS = {
    "bert_hf": Format(rules=RULES, prefixes=("module.", "bert."), buffers=BUFFERS),
    "internvideo2": Format(rules=RULES, prefixes=("module.", "text_encoder.", "bert."), buffers=BUFFERS),
}
# Optional parts: (our path regex, checkpoint key regex after the prefixes)
PARTS = {
    "cross-attention": (r"^params/layer_\d+/cross_(attn|norm)/", r"\.crossattention\."),
    "mlm head": (r"^params/mlm/", r"^cls\.predictions\.(transform|bias)"),
    "pooler": (r"^params/pooler_dense/", r"^pooler\."),
}


def expected_variables(model: Bert) -> dict:
    """The abstract {'params': ...} of `model` (every optional part it is configured with)."""
    ids, mask, context = model.dummy_inputs()
    return common.abstract_variables(model, ids, mask, context)


def load_variables(checkpoint, model: Bert, fmt: str = "bert_hf", drop=(), initial=None):
    """A checkpoint file or state dict -> ({'params': ...}, common.Report) for `model`; raises
    common.ConversionError. Parts the checkpoint does not hold at all (see the module docstring) come from
    `initial` (variables of `model`; default: `model.init`, run only when needed)."""
    base = _format(fmt)
    state = common.load_file(os.fspath(checkpoint)) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    state = common.unwrap(state)
    if fmt == "internvideo2":
        state = {k: v for k, v in state.items() if k.removeprefix("module.").startswith("text_encoder.")}
    state = common.normalize_keys(state, base)
    _check_tied(state)
    drop = [*drop, *(rf"^{re.escape(k)}$" for k in TIED)]
    if not model.pooler:
        drop.append(r"^pooler\.")
    if not model.mlm_head:
        drop.append(r"^cls\.")
    at_init = tuple(ours for ours, theirs in PARTS.values() if not any(re.search(theirs, k) for k in state))
    expected = expected_variables(model)

    def initial_values():
        if initial is not None:
            return initial
        return nn.meta.unbox(jax.jit(model.init)(jax.random.key(0, impl="rbg"), *model.dummy_inputs()))

    return common.convert(state, dataclasses.replace(base, at_init=at_init), expected, drop, initial_values)


def to_state_dict(variables, fmt: str = "bert_hf") -> dict:
    """Our variables -> {name: numpy array}: `BertModel` / `BertForMaskedLM` keys (bert_hf) or the stage-2
    `text_encoder.` keys (internvideo2), with the tied MLM decoder written out."""
    flat = common.export(variables, _format(fmt))
    has_mlm = any(k.startswith("cls.") for k in flat)
    if has_mlm:
        flat.update((tied, flat[source].copy()) for tied, source in TIED.items())
    if fmt == "internvideo2":
        prefix = {"cls": "text_encoder.", "bert": "text_encoder.bert."}
    else:  # BertForMaskedLM with an MLM head, else BertModel
        prefix = {"cls": "", "bert": "bert." if has_mlm else ""}
    return {prefix["cls" if k.startswith("cls.") else "bert"] + k: v for k, v in flat.items()}


def _check_tied(state: dict) -> None:
    for tied, source in TIED.items():
        if tied in state and source in state and not np.array_equal(state[tied], state[source]):
            raise ConversionError(f"{tied} differs from {source}: this Bert ties the MLM decoder to "
                                  f"{'the word embeddings' if 'weight' in tied else 'cls.predictions.bias'}")


def _format(fmt: str) -> Format:
    return common.pick_format(FORMATS, fmt, "BERT")

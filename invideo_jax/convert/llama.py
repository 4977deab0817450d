"""Hugging Face LLaMA / Mistral checkpoints (and peft LoRA adapters) <-> our `CausalLM` params.

`load_model_dir(DIR)` reads a `transformers` model directory: config.json (`LlamaForCausalLM` / `MistralForCausalLM`,
rotary type 'default', no attention / MLP biases, SiLU) -> `CausalLM` kwargs, and the weights from
model.safetensors, a sharded model-0000X-of-0000N.safetensors set with its model.safetensors.index.json, or the
pytorch_model*.bin equivalents.

Keys (ours <- theirs): embed_tokens/embedding <- model.embed_tokens.weight; blocks_{i}/... <- model.layers.{i}.*
(q/k/v_proj (out, in) -> (D, heads, hd); o_proj (D, heads*hd) -> (heads, hd, D); the two RMSNorm weights);
norm/scale <- model.norm.weight; lm_head/kernel <- lm_head.weight (a tied model: checked to equal the embedding and
dropped). `rotary_emb.inv_freq` buffers of older checkpoints are ignored.
peft LoRA: `X.lora_A.weight` (r, in) -> X/lora_a (in..., r), `X.lora_B.weight` (out, r) -> X/lora_b (r, out...);
both naming generations are read: peft <= 0.6 (`X.weight` base, `X.lora_A.default.weight`) and later releases
(`X.base_layer.weight`), with or without the `base_model.model.` prefix of a peft model. A model with LoRA whose
checkpoint has no adapter keys keeps its fresh adapters (A random, B zero: the base model's output), listed in the
report.
"""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from invideo_jax.convert import common
from invideo_jax.convert.common import ConversionError, Format, rule, scoped
from invideo_jax.models import lora
from invideo_jax.models.llm import CausalLM

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SUPPORTED_TYPES = ("llama", "mistral")


def lora_linear(ours: str, theirs: str, n_in: int = 1) -> list:
    """A bias-free torch Linear, optionally with a peft adapter <-> our LoraDense (kernel, lora_a, lora_b)."""
    return [rule(f"{ours}/kernel", f"{theirs}.weight", "linear", n_in),
            rule(f"{ours}/lora_a", f"{theirs}.lora_A.weight", "linear", n_in),
            rule(f"{ours}/lora_b", f"{theirs}.lora_B.weight", "linear")]


LAYER = [
    rule("input_layernorm/scale", "input_layernorm.weight", "vector"),
    rule("post_attention_layernorm/scale", "post_attention_layernorm.weight", "vector"),
    *lora_linear("self_attn/q_proj", "self_attn.q_proj"),
    *lora_linear("self_attn/k_proj", "self_attn.k_proj"),
    *lora_linear("self_attn/v_proj", "self_attn.v_proj"),
    *lora_linear("self_attn/o_proj", "self_attn.o_proj", n_in=2),
    *lora_linear("mlp/gate_proj", "mlp.gate_proj"),
    *lora_linear("mlp/up_proj", "mlp.up_proj"),
    *lora_linear("mlp/down_proj", "mlp.down_proj"),
]
MODEL = [  # a CausalLM's params <- LlamaForCausalLM keys
    rule("embed_tokens/embedding", "model.embed_tokens.weight"),
    *scoped(LAYER, "blocks_{i}/", "model.layers.{i}."),
    rule("norm/scale", "model.norm.weight", "vector"),
    *lora_linear("lm_head", "lm_head"),
]
FORMAT = Format(
    rules=tuple(MODEL),
    aliases=((r"\.base_layer\.", "."), (r"\.lora_([AB])\.default\.", r".lora_\1.")),
    prefixes=("module.", "base_model.model."),
    buffers=(r"rotary_emb\.inv_freq$",),
)
ADAPTERS = r"/lora_[ab]$"


def model_kwargs(config: dict) -> dict:
    """A transformers LLaMA / Mistral config.json dict -> `CausalLM` kwargs; unsupported settings raise, naming the
    field."""
    kind = config.get("model_type")
    if kind not in SUPPORTED_TYPES:
        raise ConversionError(f"config.json model_type={kind!r}: expected one of {SUPPORTED_TYPES}")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ConversionError(f"config.json rotary type {rope_type!r}: only 'default' rotary embeddings are supported")
    for field in ("attention_bias", "mlp_bias"):
        if config.get(field):
            raise ConversionError(f"config.json {field}=true: this model has no projection biases")
    if config.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"config.json hidden_act={config['hidden_act']!r}: expected 'silu'")
    heads = config["num_attention_heads"]
    return dict(
        vocab_size=config["vocab_size"], width=config["hidden_size"], depth=config["num_hidden_layers"],
        num_heads=heads, num_kv_heads=config.get("num_key_value_heads") or heads,
        mlp_dim=config["intermediate_size"], head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        norm_eps=config.get("rms_norm_eps", 1e-6), rope_theta=rope.get("rope_theta", config.get("rope_theta", 1e4)),
        sliding_window=config.get("sliding_window") if kind == "mistral" else None,
        tie_embeddings=bool(config.get("tie_word_embeddings", False)))


def read_config(model_dir: str) -> dict:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: expected a transformers model directory (config.json + weights)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_state(model_dir: str) -> dict:
    """{key: numpy array} of every weight file of a transformers model directory (sharded or not)."""
    for name in WEIGHT_FILES:
        single, index = os.path.join(model_dir, name), os.path.join(model_dir, name + ".index.json")
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            state = {}
            for shard in shards:
                state.update(_numpy(common.load_file(os.path.join(model_dir, shard))))
            return state
        if os.path.isfile(single):
            return _numpy(common.load_file(single))
    raise FileNotFoundError(f"no weights in {model_dir}: expected one of "
                            f"{[n for w in WEIGHT_FILES for n in (w, w + '.index.json')]}")


def expected_params(model: CausalLM) -> dict:
    return common.abstract_params(model, jnp.zeros((1, 1), jnp.int32))


def load_params(state, model: CausalLM, drop=(), initial=None):
    """A state dict ({key: tensor}, HF or peft names) -> (params, common.Report) for `model`. Without adapter keys,
    a LoRA model's `lora_a` / `lora_b` come from `initial` (params of `model`; default: `lora.fresh_adapters`)."""
    state = common.normalize_keys(state, FORMAT)
    drop = list(drop)
    if model.tie_embeddings and "lm_head.weight" in state:
        if not np.array_equal(state["lm_head.weight"], state["model.embed_tokens.weight"]):
            raise ConversionError("lm_head.weight differs from model.embed_tokens.weight but the model ties them "
                                  "(tie_word_embeddings)")
        drop.append(r"^lm_head\.weight$")
    has_adapters = any(".lora_A." in k for k in state)
    fmt = FORMAT if has_adapters or not model.lora_rank else Format(FORMAT.rules, at_init=(ADAPTERS,))

    def initial_values():
        if initial is not None:
            return initial
        wanted = common.flatten(jax.eval_shape(common.scan_to_loop, expected_params(model)))
        return common.unflatten(lora.fresh_adapters({k: v.shape for k, v in wanted.items() if re.search(ADAPTERS, k)}))

    return common.convert(state, fmt, expected_params(model), drop, initial_values)


def load_model_dir(model_dir: str, **overrides):
    """A transformers model directory -> (CausalLM, params, report); `overrides` set CausalLM fields (dtype, scan,
    lora_rank, ...)."""
    model = CausalLM(**{**model_kwargs(read_config(model_dir)), **overrides})
    params, report = load_params(read_state(model_dir), model)
    return model, params, report


def to_state_dict(params) -> dict:
    """Our params (scanned or not) -> {HF key: numpy array} (`lora_A` / `lora_B` keys for adapters)."""
    return common.export(params, FORMAT)


def _numpy(state) -> dict:
    return {k: common.to_numpy(v) for k, v in state.items()}

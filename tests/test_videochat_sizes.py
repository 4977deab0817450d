"""Sizes: the LLM table against transformers' own parameter counts, and the 8B stage-3 model built abstractly."""
import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import transformers

from configs import videochat2 as recipes
from invideo_jax import sharding
from invideo_jax.models.llm import CausalLM
from invideo_jax.train import optim
from tests.compiling import FAST_COMPILE

HF = {  # the official config.json values, in transformers' names
    "vicuna_7b": (transformers.LlamaConfig, dict(vocab_size=32001, hidden_size=4096, intermediate_size=11008,
                                                 num_hidden_layers=32, num_attention_heads=32)),
    "mistral_7b_v0.2": (transformers.MistralConfig, dict(vocab_size=32000, num_key_value_heads=8)),
    "mistral_7b_v0.3": (transformers.MistralConfig, dict(vocab_size=32768, num_key_value_heads=8)),
}


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", sorted(HF))
def test_llm_sizes_equal_transformers_counts(name):
    config_cls, values = HF[name]
    with torch.device("meta"):
        reference = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_config(config_cls(**values))
                        .parameters())
    model = CausalLM(**recipes.LLM_SIZES[name], scan=True)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.numpy.zeros((1, 1), jax.numpy.int32))
    assert count(params) == reference


def test_8b_stage3_model_builds_abstractly_with_fsdp_shardings():
    config = recipes.get_config("8b")
    model = recipes.build_model(config)
    mesh = sharding.make_mesh({"fsdp": -1})
    rules = sharding.rules("fsdp_tp")
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *model.dummy_inputs()))
    shardings = sharding.logical_shardings(boxed["params"], mesh, rules)
    kernel = shardings["llm"]["blocks"]["self_attn"]["k_proj"]["kernel"]
    assert kernel.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)  # (layers, embed, kv_heads, kv)
    params = sharding.strip_boxes(boxed["params"])
    rows = optim.describe(params, config.optim)
    trainable = sum(int(np.prod(r.shape)) for r in rows if not r.frozen)
    adapters = sum(int(np.prod(r.shape)) for r in rows if r.path.endswith(("lora_a", "lora_b")))
    assert count(params["llm"]) - adapters == 7_248_023_552
    # as the config's docstring states: total, trainable (all but the frozen base LLM), LoRA
    assert (count(params), trainable, adapters) == (8_467_860_608, 1_219_837_056, 42_532_864)
    assert params["vision_encoder"]["transformer"]["blocks"]["attn"]["qkv"]["kernel"].shape[0] == 39


def test_tiny_variant_trains_the_adapters_and_bridge_only():
    """configs/videochat2.py:tiny (scan, full remat, bfloat16, LoRA): a loss gradient step through the whole model."""
    config = recipes.get_config("tiny,epoch_steps=3")  # warm-up within the 10 steps below
    model = recipes.build_model(config)
    video, ids, visual, mask, instruction = model.dummy_inputs(batch=2)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), video, ids, visual, mask, instruction)["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(np.float32), nn.meta.unbox(shapes))

    def loss(p):
        out = model.apply({"params": p}, video, ids, visual, mask, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
        return jax.numpy.mean(jax.nn.log_softmax(out["logits"])[..., 0])

    grads = jax.jit(jax.grad(loss), compiler_options=FAST_COMPILE)(params)
    assert all(bool(jax.numpy.isfinite(g).all()) for g in jax.tree.leaves(grads))
    tx, _ = optim.make_optimizer(config.optim, params, total_steps=10, global_batch=2)
    updates, _ = jax.jit(tx.update, compiler_options=FAST_COMPILE)(grads, tx.init(params), params)
    flat = {jax.tree_util.keystr(k, simple=True, separator="/"): u
            for k, u in jax.tree_util.tree_leaves_with_path(updates)}
    for path, update in flat.items():
        if path.startswith("llm/") and not path.endswith(("lora_a", "lora_b")):
            assert not bool((update != 0).any()), path
    assert any(bool((u != 0).any()) for p, u in flat.items() if p.startswith("vision_encoder/"))
    assert any(bool((u != 0).any()) for p, u in flat.items() if p.endswith("lora_a"))

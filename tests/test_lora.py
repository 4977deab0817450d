"""LoRA: zero-B identity, merging, frozen base without optimiser state, peft key layouts vs a merged PyTorch model."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from invideo_jax.convert import common, llama
from invideo_jax.models import lora
from invideo_jax.models.llm import CausalLM
from invideo_jax.train import optim
from tests import hf_tiny

RANK, ALPHA = 4, 8.0


def lora_model(hf, scan=False, targets=r"(q|k|v|o|gate|up|down)_proj$|^lm_head$"):
    kw = llama.model_kwargs(hf.config.to_dict())
    return CausalLM(**kw, scan=scan), CausalLM(**kw, scan=scan, lora_rank=RANK, lora_alpha=ALPHA, lora_targets=targets)


def randomize_adapters(params, seed=0):
    rng = np.random.default_rng(seed)
    flat = common.flatten(params)
    return common.unflatten({k: (rng.normal(0, 0.2, v.shape).astype(np.float32) if k.endswith(lora.LORA_PARAMS)
                                 else v) for k, v in flat.items()})


@pytest.mark.parametrize("scan", [False, True])
def test_fresh_adapters_leave_the_output_unchanged_and_merge_exactly(scan):
    hf = hf_tiny.hf_model("llama")
    base, adapted = lora_model(hf, scan)
    state = hf_tiny.state_dict(hf)
    base_params, _ = llama.load_params(state, base)
    params, report = llama.load_params(state, adapted)  # no adapter keys: fresh A (random), B = 0
    assert any("lora_a" in p for p in report.at_init)
    flat = common.flatten(params)
    assert sum(k.endswith("lora_a") for k in flat) == (8 if scan else 7 * 3 + 1)
    assert all(np.abs(v).max() > 0 for k, v in flat.items() if k.endswith("lora_a"))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 97, (2, 7)))
    base_apply, adapted_apply = jax.jit(base.apply), jax.jit(adapted.apply)
    reference = base_apply({"params": base_params}, ids)["logits"]
    np.testing.assert_array_equal(adapted_apply({"params": params}, ids)["logits"], reference)
    trained = randomize_adapters(params)
    changed = adapted_apply({"params": trained}, ids)["logits"]
    assert float(jnp.abs(changed - reference).max()) > 1e-2  # the adapters are live: this test can fail
    merged = lora.merge(trained, ALPHA, RANK)
    assert jax.tree.structure(merged) == jax.tree.structure(base_params)
    np.testing.assert_allclose(base_apply({"params": merged}, ids)["logits"], changed, atol=1e-5, rtol=1e-5)


def test_dropout_only_in_training():
    hf = hf_tiny.hf_model("llama")
    _, adapted = lora_model(hf)
    adapted = adapted.clone(lora_dropout=0.5)
    params = randomize_adapters(llama.load_params(hf_tiny.state_dict(hf), adapted)[0])
    ids = jnp.ones((1, 5), jnp.int32)
    apply = jax.jit(adapted.apply, static_argnames="train")
    a = apply({"params": params}, ids)["logits"]
    b = apply({"params": params}, ids)["logits"]
    c = apply({"params": params}, ids, train=True, rngs={"dropout": jax.random.PRNGKey(1)})["logits"]
    np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(a - c).max()) > 1e-3


def test_frozen_base_has_no_optimiser_state_and_does_not_move():
    hf = hf_tiny.hf_model("llama")
    _, adapted = lora_model(hf, scan=True, targets=r"(q|v)_proj$")  # the peft LLaMA default (Vicuna)
    params = llama.load_params(hf_tiny.state_dict(hf), adapted)[0]
    cfg = optim.default_optim_config().unlock()
    cfg.update(base_lr=1e-2, lr_batch_denom=0, frozen=(lora.frozen_base(),), weight_decay=0.0)
    tx, _ = optim.make_optimizer(ml_collections.ConfigDict(cfg), params, total_steps=10, global_batch=1)
    state = tx.init(params)
    moments = [x for x in jax.tree.leaves(state) if getattr(x, "ndim", 0) > 0]
    adapter_sizes = sorted(v.size for k, v in common.flatten(params).items() if k.endswith(lora.LORA_PARAMS))
    assert sorted(x.size for x in moments) == sorted(adapter_sizes * 2)  # Adam mu and nu of the adapters only
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, state, params)
    for path, update in common.flatten(updates).items():
        assert bool(jnp.any(update != 0)) == path.endswith(lora.LORA_PARAMS), path


@pytest.mark.parametrize("naming", ["peft_0.5", "base_layer", "adapter_only"])
def test_peft_key_layouts_match_the_merged_pytorch_model(naming):
    hf = hf_tiny.hf_model("mistral")
    _, adapted = lora_model(hf)
    state = hf_tiny.state_dict(hf)
    rng = np.random.default_rng(1)
    targets = [k[:-len(".weight")] for k in state if k.endswith("_proj.weight") or k == "lm_head.weight"]
    peft = {}
    merged = dict(state)
    for name in targets:
        out_dim, in_dim = state[name + ".weight"].shape
        a, b = rng.normal(0, 0.2, (RANK, in_dim)), rng.normal(0, 0.2, (out_dim, RANK))
        merged[name + ".weight"] = (state[name + ".weight"] + ALPHA / RANK * b @ a).astype(np.float32)
        adapter = ".lora_{}.weight" if naming == "adapter_only" else ".lora_{}.default.weight"
        peft[f"base_model.model.{name}{adapter.format('A')}"] = a.astype(np.float32)
        peft[f"base_model.model.{name}{adapter.format('B')}"] = b.astype(np.float32)
    for key, value in state.items():
        if naming == "base_layer" and key[:-len(".weight")] in targets:
            key = key.replace(".weight", ".base_layer.weight")
        peft["base_model.model." + key] = value
    with torch.no_grad():
        hf.load_state_dict({k: torch.tensor(v) for k, v in merged.items()})
        ids = np.array([[1, 5, 9, 14, 3]])
        expected = hf(torch.tensor(ids)).logits.numpy()
    params, report = llama.load_params(peft, adapted)
    assert not report.at_init and not report.dropped
    np.testing.assert_allclose(adapted.apply({"params": params}, jnp.asarray(ids))["logits"], expected, atol=1e-4)

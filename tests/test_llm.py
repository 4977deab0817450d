"""The LLaMA / Mistral decoder against transformers' PyTorch models (tiny random configs, float32)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from invideo_jax.convert import common, llama
from invideo_jax.models.llm import CausalLM
from tests import hf_tiny

pytestmark = pytest.mark.usefixtures("quick_compiling")  # conftest.py

TOL = 1e-4


def ours(hf, **overrides):
    kw = {**llama.model_kwargs(hf.config.to_dict()), **overrides}
    model = CausalLM(**kw)
    params, _ = llama.load_params(hf_tiny.state_dict(hf), model)
    return model, params


def hf_outputs(hf, ids, mask, positions):
    with torch.no_grad():
        out = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions),
                 output_hidden_states=True)
    return out.logits.numpy(), [h.numpy() for h in out.hidden_states]


@pytest.mark.parametrize("kind,overrides,scan,remat", [
    ("llama", {}, False, "none"),
    ("llama", {}, True, "none"),
    ("llama", {"num_key_value_heads": 4, "tie_word_embeddings": True}, False, "full"),
    ("mistral", {"sliding_window": 3, "rope_theta": 1e6}, True, "full"),
    ("mistral", {"head_dim": 12}, False, "none"),
])
def test_logits_and_hidden_states_match_transformers(kind, overrides, scan, remat):
    hf = hf_tiny.hf_model(kind, **overrides)
    model, params = ours(hf, scan=scan, remat=remat)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, hf.config.vocab_size, (2, 9))
    mask = np.ones((2, 9), np.int64)
    mask[1, :3] = 0  # left padding
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    logits, hidden = hf_outputs(hf, ids, mask, positions)
    out = model.apply({"params": params}, jnp.asarray(ids), mask=jnp.asarray(mask), return_layers=True)
    real = mask.astype(bool)  # padded query rows are garbage on both sides
    np.testing.assert_allclose(np.asarray(out["logits"])[real], logits[real], atol=TOL, rtol=TOL)
    np.testing.assert_allclose(np.asarray(out["hidden"])[real], hidden[-1][real], atol=TOL, rtol=TOL)
    for i in range(model.depth - 1):  # transformers' hidden_states: embeddings, layers 0..L-2, final norm
        np.testing.assert_allclose(np.asarray(out["layers"][i])[real], hidden[i + 1][real], atol=TOL, rtol=TOL)


def test_sliding_window_changes_the_output():
    """The window is live in the tiny test above: without it the logits differ (the test can fail)."""
    hf = hf_tiny.hf_model("mistral", sliding_window=3)
    model, params = ours(hf)
    ids = jnp.arange(9)[None] % 50
    windowed = model.apply({"params": params}, ids)["logits"]
    full = model.clone(sliding_window=None).apply({"params": params}, ids)["logits"]
    assert float(jnp.abs(windowed - full)[0, 3:].max()) > 1e-2
    np.testing.assert_allclose(windowed[0, :3], full[0, :3], atol=1e-6)


def test_cached_prefill_and_decode_equal_the_full_forward():
    hf = hf_tiny.hf_model("mistral", sliding_window=4)
    for scan in (False, True):
        model, params = ours(hf, scan=scan)
        ids = jnp.asarray(np.random.default_rng(1).integers(0, 97, (2, 8)))
        full = model.apply({"params": params}, ids)["logits"]
        cache = model.init_cache(2, 12)
        mask = jnp.ones((2, 12), bool)
        pos = jnp.broadcast_to(jnp.arange(8), (2, 8))
        out = model.apply({"params": params}, ids[:, :5], mask=mask, positions=pos[:, :5], cache=cache)
        step = [out["logits"]]
        cache = out["cache"]
        for t in range(5, 8):
            out = model.apply({"params": params}, ids[:, t:t + 1], mask=mask, positions=pos[:, t:t + 1], cache=cache,
                              cache_index=t)
            cache = out["cache"]
            step.append(out["logits"])
        np.testing.assert_allclose(jnp.concatenate(step, 1), full, atol=1e-5, rtol=1e-5)


def test_sharded_model_directory_loads(tmp_path):
    hf = hf_tiny.hf_model("llama")
    hf_tiny.save_sharded(hf, str(tmp_path), num_shards=3)
    model, params, report = llama.load_model_dir(str(tmp_path), scan=True)
    assert model.scan and report.num_params == sum(p.numel() for p in hf.parameters())
    ids = np.array([[5, 6, 7, 8]])
    logits, _ = hf_outputs(hf, ids, np.ones_like(ids), np.arange(4)[None])
    np.testing.assert_allclose(model.apply({"params": params}, jnp.asarray(ids))["logits"], logits, atol=TOL)


def test_export_round_trip_and_key_names():
    hf = hf_tiny.hf_model("llama")
    model, params = ours(hf, scan=True)
    exported = llama.to_state_dict(params)
    reference = hf_tiny.state_dict(hf)
    assert sorted(exported) == sorted(reference)
    for key, value in reference.items():
        np.testing.assert_array_equal(exported[key], value)


def test_bad_checkpoints_are_named():
    hf = hf_tiny.hf_model("llama")
    state = hf_tiny.state_dict(hf)
    model = CausalLM(**llama.model_kwargs(hf.config.to_dict()))
    with pytest.raises(common.ConversionError, match="model.layers.1.mlp.up_proj.weight"):
        llama.load_params({k: v for k, v in state.items() if k != "model.layers.1.mlp.up_proj.weight"}, model)
    with pytest.raises(common.ConversionError, match="rotary type 'linear'"):
        llama.model_kwargs({**hf.config.to_dict(), "rope_parameters": {"rope_type": "linear", "factor": 2.0}})
    with pytest.raises(ValueError, match="num_kv_heads"):
        CausalLM(vocab_size=8, width=8, depth=1, num_heads=4, num_kv_heads=3, mlp_dim=8).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))

"""Generation with the KV cache against transformers' generate() on the same tiny random model."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from invideo_jax import generate as gen
from invideo_jax.convert import llama
from invideo_jax.models.llm import CausalLM
from tests import hf_tiny


def models(kind="llama", scan=False, **overrides):
    hf = hf_tiny.hf_model(kind, seed=3, **overrides)
    model = CausalLM(**llama.model_kwargs(hf.config.to_dict()), scan=scan)
    params, _ = llama.load_params(hf_tiny.state_dict(hf), model)
    return hf, model, params


def hf_greedy(hf, ids, mask, new, eos=None):
    with torch.no_grad():
        out = hf.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                          do_sample=False, max_new_tokens=new, min_new_tokens=0, eos_token_id=eos, pad_token_id=0)
    return out[:, ids.shape[1]:].numpy()


@pytest.mark.parametrize("kind,scan", [("llama", False), ("mistral", True)])
def test_greedy_matches_transformers_with_left_padding(kind, scan):
    hf, model, params = models(kind, scan, **({"sliding_window": 5} if kind == "mistral" else {}))
    rows = [[1, 5, 9, 14, 3, 7], [1, 22, 8], [1, 40, 41, 42, 43]]
    ids, mask = gen.left_pad(rows, pad_id=0)
    new = 12
    expected = hf_greedy(hf, ids, mask, new)
    out = gen.generate(model, params, ids, mask=mask, max_new_tokens=new)
    np.testing.assert_array_equal(np.asarray(out["tokens"]), expected)
    assert list(np.asarray(out["lengths"])) == [new] * 3


def test_stop_token_ends_rows_like_transformers_eos():
    hf, model, params = models()
    ids, mask = gen.left_pad([[1, 5, 9, 14], [1, 2, 3, 4, 5, 6]], pad_id=0)
    free = hf_greedy(hf, ids, mask, 10)
    eos = int(free[0, 3])  # a token row 0 produces at step 4: transformers stops the row there
    expected = hf_greedy(hf, ids, mask, 10, eos=eos)
    out = gen.generate(model, params, ids, mask=mask, max_new_tokens=10, stop_sequences=[[eos]], pad_id=0)
    tokens = np.asarray(out["tokens"])
    np.testing.assert_array_equal(tokens[:, :expected.shape[1]], expected)
    assert (tokens[:, expected.shape[1]:] == 0).all()
    assert int(out["lengths"][0]) == list(free[0]).index(eos) + 1


def test_multi_token_stop_sequence():
    hf, model, params = models()
    ids, mask = gen.left_pad([[1, 5, 9, 14]], pad_id=0)
    free = np.asarray(gen.generate(model, params, ids, mask=mask, max_new_tokens=8)["tokens"])[0]
    out = gen.generate(model, params, ids, mask=mask, max_new_tokens=8, stop_sequences=[[999], list(free[2:4])],
                       pad_id=-1)
    np.testing.assert_array_equal(np.asarray(out["tokens"])[0], [*free[:4], -1, -1, -1, -1])
    assert int(out["lengths"][0]) == 4


def test_embeddings_in_place_of_ids_match_transformers():
    """Spliced 'visual' embeddings (random vectors) inside a prompt: greedy tokens equal generate(inputs_embeds=)."""
    hf, model, params = models("mistral")
    ids, mask = gen.left_pad([[1, 5, 9, 14, 3, 7, 8], [1, 22, 8, 9, 10]], pad_id=0)
    embeds = np.array(model.apply({"params": params}, jnp.asarray(ids), method=CausalLM.embed))
    embeds[:, -4:-2] = np.random.default_rng(0).normal(0, 0.5, (2, 2, embeds.shape[-1]))
    with torch.no_grad():
        expected = hf.generate(inputs_embeds=torch.tensor(embeds), attention_mask=torch.tensor(mask, dtype=torch.long),
                               do_sample=False, max_new_tokens=6, eos_token_id=None, pad_token_id=0).numpy()
    out = gen.generate(model, params, embeds=embeds, mask=mask, max_new_tokens=6)
    np.testing.assert_array_equal(np.asarray(out["tokens"]), expected[:, -6:])


def test_top_p_keeps_the_nucleus_only():
    logits = jnp.log(jnp.asarray([[0.05, 0.4, 0.1, 0.3, 0.15]]))
    filtered = gen.top_p_filter(logits, 0.75)  # nucleus: 0.4 + 0.3 + 0.15 (mass before 0.15 is 0.7 < 0.75)
    assert list(np.isfinite(np.asarray(filtered[0]))) == [False, True, False, True, True]
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    draws = np.asarray(jax.vmap(lambda k: gen.next_token(logits, k, 1.0, 0.75))(keys))[:, 0]
    freq = np.bincount(draws, minlength=5) / len(draws)
    np.testing.assert_allclose(freq, [0, 0.4 / 0.85, 0, 0.3 / 0.85, 0.15 / 0.85], atol=0.03)
    # temperature flattens the distribution within the nucleus
    hot = np.asarray(jax.vmap(lambda k: gen.next_token(logits, k, 100.0, 1.0))(keys))[:, 0]
    np.testing.assert_allclose(np.bincount(hot, minlength=5) / len(hot), 0.2, atol=0.03)


def test_bad_arguments_are_named():
    _, model, params = models()
    with pytest.raises(ValueError, match="top_p"):
        gen.generate(model, params, np.ones((1, 2), np.int32), top_p=0.0)
    with pytest.raises(ValueError, match="mask"):
        gen.generate(model, params, np.ones((1, 2), np.int32), mask=np.ones((1, 3), bool))


def test_command_line_generates_from_a_saved_model_directory(tmp_path):
    vocab = hf_tiny.train_tokenizer(str(tmp_path))
    hf = hf_tiny.hf_model("llama", seed=5, vocab_size=vocab)
    hf_tiny.save_sharded(hf, str(tmp_path))
    from invideo_jax.data import llm_tokenizer
    tokenizer = llm_tokenizer.load(str(tmp_path))
    prompt = "a video of a cat"
    ids = np.asarray([tokenizer.encode(prompt, bos=True)])
    expected = hf_greedy(hf, ids, np.ones_like(ids), 5, eos=tokenizer.eos_id)[0]
    expected = [t for t in expected if t != 0]
    result = subprocess.run(
        [sys.executable, "-m", "invideo_jax.generate", f"--model_dir={tmp_path}", f"--prompt={prompt}",
         "--max_new_tokens=5"], capture_output=True, text=True, timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == prompt + tokenizer.decode(expected)


@pytest.mark.slow
@pytest.mark.parametrize("temperature,top_p", [(0.0, 1.0), (0.8, 0.9)])
def test_stream_yields_the_tokens_generate_returns(temperature, top_p):
    """Step by step (greedy and sampled with the same key), stopping rows padded, ending once every row stopped."""
    hf, model, params = models()
    ids, mask = gen.left_pad([[1, 5, 9, 14], [1, 2, 3, 4, 5, 6]], pad_id=0)
    kw = dict(mask=mask, max_new_tokens=10, temperature=temperature, top_p=top_p, rng=jax.random.PRNGKey(4))
    free = np.asarray(gen.generate(model, params, ids, **kw)["tokens"])
    stop = int(free[0, 2])
    out = gen.generate(model, params, ids, stop_sequences=[[stop]], pad_id=0, **kw)
    steps = np.stack(list(gen.stream(model, params, ids, stop_sequences=[[stop]], pad_id=0, **kw)), axis=1)
    expected = np.asarray(out["tokens"])
    np.testing.assert_array_equal(steps, expected[:, :steps.shape[1]])
    assert steps.shape[1] == int(np.max(np.asarray(out["lengths"])))  # no step after the last row stopped
    if temperature == 0:
        np.testing.assert_array_equal(steps[1], hf_greedy(hf, ids, mask, 10)[1][:steps.shape[1]])

"""CLIP text tower: parity with transformers' CLIPTextModelWithProjection, causality, EOT pooling, MLM mask, scan."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from invideo_jax.convert import common
from invideo_jax.models.text import CLIPText
from tests.random_trees import draw_like

VOCAB, CONTEXT, WIDTH, HEADS, MLP, EMBED, DEPTH = 64, 12, 32, 2, 64, 16, 2
EOT = VOCAB - 1  # as in CLIP, the end-of-text id is the largest id


def tower(**kw):
    return CLIPText(vocab_size=VOCAB, context_length=CONTEXT, width=WIDTH, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP,
                    embed_dim=EMBED, **kw)


def random_params(model, ids, seed=0):
    return draw_like(common.abstract_params(model, ids), seed, std=0.3)


def ids_with_eot(lengths, total, seed=0):
    """Rows of random ids < EOT with EOT at position length-1, zeros after it (padding)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, EOT, (len(lengths), total)).astype(np.int32)
    for row, n in enumerate(lengths):
        ids[row, n - 1], ids[row, n:] = EOT, 0
    return ids


def from_hf(state, depth, heads):
    """transformers CLIP text state dict -> our params (test-local mapping)."""
    sd = {k.removeprefix("text_model."): v.detach().numpy() for k, v in state.items()}
    width = sd["final_layer_norm.weight"].shape[0]
    head_dim = width // heads

    def ln(name):
        return {"scale": sd[f"{name}.weight"], "bias": sd[f"{name}.bias"]}

    blocks = {}
    for i in range(depth):
        p = f"encoder.layers.{i}."
        w = [sd[f"{p}self_attn.{n}_proj.weight"].T for n in "qkv"]
        b = [sd[f"{p}self_attn.{n}_proj.bias"] for n in "qkv"]
        blocks[f"blocks_{i}"] = {
            "norm1": ln(p + "layer_norm1"), "norm2": ln(p + "layer_norm2"),
            "attn": {"qkv": {"kernel": np.stack(w, 1).reshape(width, 3, heads, head_dim),
                             "bias": np.stack(b).reshape(3, heads, head_dim)},
                     "proj": {"kernel": sd[f"{p}self_attn.out_proj.weight"].T.reshape(heads, head_dim, width),
                              "bias": sd[f"{p}self_attn.out_proj.bias"]}},
            "mlp": {n: {"kernel": sd[f"{p}mlp.{n}.weight"].T, "bias": sd[f"{p}mlp.{n}.bias"]} for n in ("fc1", "fc2")},
        }
    return {"token_embedding": sd["embeddings.token_embedding.weight"],
            "positional_embedding": sd["embeddings.position_embedding.weight"],
            "text_mask_embedding": np.zeros(width, np.float32), "transformer": blocks,
            "ln_final": ln("final_layer_norm"), "text_projection": sd["text_projection.weight"].T}


def test_matches_transformers_clip_text_with_a_shorter_text():
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPTextConfig(
        vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=MLP, projection_dim=EMBED, num_hidden_layers=DEPTH,
        num_attention_heads=HEADS, max_position_embeddings=CONTEXT, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        bos_token_id=EOT - 1, eos_token_id=EOT, pad_token_id=0)
    torch.manual_seed(0)
    hf = transformers.CLIPTextModelWithProjection(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.3)
    ids = ids_with_eot([4, 9, 7], 9)  # 9 < context 12: the first 9 positional rows are used
    with torch.no_grad():
        want = hf(input_ids=torch.from_numpy(ids).long())
    out = tower().apply({"params": from_hf(hf.state_dict(), DEPTH, HEADS)}, jnp.asarray(ids))
    np.testing.assert_allclose(out["tokens"], want.last_hidden_state.numpy(), atol=2e-5)
    np.testing.assert_allclose(out["features"], want.text_embeds.numpy(), atol=2e-5)


def test_causal_and_pooled_at_the_argmax_id():
    model = tower()
    ids = ids_with_eot([3, 5], 10)
    params = random_params(model, ids)
    out = model.apply({"params": params}, ids)
    pooled = np.asarray(out["tokens"])[np.arange(2), ids.argmax(-1)]
    np.testing.assert_allclose(out["features"], pooled @ params["text_projection"], atol=1e-5)
    changed = ids.copy()
    changed[0, 3:] = np.arange(1, 8)  # after row 0's EOT (position 2)
    changed[1, 5:] = 7  # after row 1's EOT (position 4)
    out2 = model.apply({"params": params}, changed)
    np.testing.assert_array_equal(out2["features"], out["features"])
    np.testing.assert_array_equal(out2["tokens"][0, :3], out["tokens"][0, :3])
    assert not np.allclose(out2["tokens"][0, 3:], out["tokens"][0, 3:])
    changed[0, 1] = 9  # before the EOT: the features change
    assert not np.allclose(model.apply({"params": params}, changed)["features"][0], out["features"][0])


def test_mlm_mask_replaces_token_embeddings():
    model = tower()
    ids = ids_with_eot([6, 8], 8)
    params = random_params(model, ids)
    mask = np.zeros(ids.shape, bool)
    mask[0, 2] = mask[1, 5] = True
    plain = model.apply({"params": params}, ids)["tokens"]
    masked = model.apply({"params": params}, ids, mask)["tokens"]
    np.testing.assert_array_equal(masked[0, :2], plain[0, :2])  # causal: earlier positions untouched
    assert not np.allclose(masked[0, 2], plain[0, 2]) and not np.allclose(masked[1, 5:], plain[1, 5:])
    same = dict(params, text_mask_embedding=params["token_embedding"][ids[0, 2]])
    out = model.apply({"params": same}, ids, mask)["tokens"]
    np.testing.assert_allclose(out[0], plain[0], atol=1e-6)  # the mask embedding equals the masked token's
    assert not np.allclose(out[1, 5:], plain[1, 5:])


def test_scan_equals_loop_and_length_check():
    ids = ids_with_eot([4, 6], 7)
    for model in (tower(), tower(scan=True)):  # logical axis names on every param
        boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), ids)["params"]
        leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
        assert all(isinstance(x, nn.LogicallyPartitioned) and len(x.names) == x.value.ndim for x in leaves)
    loop = tower()
    params = random_params(loop, ids)
    scanned = dict(params, transformer=common.loop_to_scan(params["transformer"]))
    a = jax.jit(loop.apply)({"params": params}, ids)
    b = jax.jit(tower(scan=True, remat="full").apply)({"params": scanned}, ids)
    np.testing.assert_allclose(b["features"], a["features"], atol=1e-5)
    np.testing.assert_allclose(b["tokens"], a["tokens"], atol=1e-5)
    with pytest.raises(ValueError, match="context length"):
        loop.apply({"params": params}, np.zeros((1, CONTEXT + 1), np.int32))

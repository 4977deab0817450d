"""Building blocks against independent constructions: position tables, patch embedding, attention, drop-path, scan."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from invideo_jax.convert import common
from invideo_jax.models import layers
from tests.random_trees import draw_like


def randomize(tree, seed=0):
    return draw_like(tree, seed, std=0.3)


def test_sincos_1d_interleaved_matches_formula():
    num, dim = 13, 10
    naive = np.zeros((num, dim))
    for pos in range(num):
        for j in range(dim):
            angle = pos / 10000 ** (2 * (j // 2) / dim)
            naive[pos, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    np.testing.assert_allclose(layers.sincos_1d_interleaved(num, dim), naive, atol=1e-6)


def test_sincos_3d_splits_time_and_space():
    t, h, w, dim = 3, 4, 5, 32
    table = layers.sincos_3d(t, h, w, dim).reshape(t, h, w, dim)
    temporal, spatial = table[..., : dim // 4], table[..., dim // 4:]
    np.testing.assert_array_equal(temporal, np.broadcast_to(temporal[:, :1, :1], temporal.shape))
    np.testing.assert_array_equal(spatial, np.broadcast_to(spatial[:1], spatial.shape))
    assert np.ptp(temporal, axis=0).max() > 0.1 and np.ptp(spatial, axis=1).max() > 0.1
    assert np.ptp(spatial, axis=2).max() > 0.1

    def code(pos, d):  # MAE 1-D code: sines then cosines, frequency 1/10000^(i/(d/2))
        freqs = [10000 ** (-i / (d / 2)) for i in range(d // 2)]
        return [math.sin(pos * f) for f in freqs] + [math.cos(pos * f) for f in freqs]

    naive = np.array([[[code(ti, dim // 4) + code(wi, 3 * dim // 8) + code(hi, 3 * dim // 8)
                        for wi in range(w)] for hi in range(h)] for ti in range(t)])
    np.testing.assert_allclose(table, naive, atol=1e-6)


def test_patch_embed_equals_conv3d():
    b, c, t, size, k, p, dim = 2, 3, 4, 16, 2, 8, 12
    weight, bias = torch.randn(dim, c, k, p, p) * 0.05, torch.randn(dim)
    video = torch.randn(b, c, t, size, size)
    expected = torch.nn.functional.conv3d(video, weight, bias, stride=(k, p, p)).flatten(2).transpose(1, 2)
    kernel_rule, bias_rule = common.conv3d("proj", "proj")
    params = {"proj": {"kernel": kernel_rule.to_ours([weight.numpy()], (k, p, p, c, dim)),
                       "bias": bias_rule.to_ours([bias.numpy()], (dim,))}}
    module = layers.PatchEmbed(dim, p, k)
    got = module.apply({"params": params}, video.permute(0, 2, 3, 4, 1).numpy())
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)


def naive_attention(x, p, heads, qkv_bias):
    qkv = np.einsum("bnd,dthk->bnthk", x, p["qkv"]["kernel"])
    if qkv_bias == "qkv":
        qkv = qkv + p["qkv"]["bias"]
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if qkv_bias == "qv":
        q, v = q + p["q_bias"], v + p["v_bias"]
    scores = np.einsum("bqhk,bshk->bhqs", q, k) / math.sqrt(q.shape[-1])
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhqs,bshk->bqhk", weights, v)
    return np.einsum("bqhk,hkd->bqd", out, p["proj"]["kernel"]) + p["proj"]["bias"]


@pytest.mark.parametrize("qkv_bias", ["qv", "qkv", "none"])
def test_attention_matches_naive_softmax(qkv_bias):
    heads, x = 4, np.random.default_rng(1).standard_normal((2, 7, 16)).astype(np.float32)
    module = layers.Attention(heads, qkv_bias)
    params = randomize(common.abstract_params(module, x))
    assert ("q_bias" in params) == (qkv_bias == "qv") and ("bias" in params["qkv"]) == (qkv_bias == "qkv")
    got = jax.jit(module.apply)({"params": params}, x)
    np.testing.assert_allclose(got, naive_attention(x, params, heads, qkv_bias), atol=1e-5)


def test_cross_attention_and_causal_mask_match_torch():
    """Cross-attention (query width 16, context width 12) and causal self-attention vs torch MultiheadAttention."""
    torch = pytest.importorskip("torch")
    heads, rng = 4, np.random.default_rng(3)
    x, context = rng.standard_normal((2, 5, 16)).astype(np.float32), rng.standard_normal((2, 9, 12)).astype(np.float32)
    mha = torch.nn.MultiheadAttention(16, heads, kdim=12, vdim=12, batch_first=True).eval()
    torch.nn.init.normal_(mha.in_proj_bias)
    wq, wk, wv = mha.q_proj_weight.detach().numpy(), mha.k_proj_weight.detach().numpy(), mha.v_proj_weight.detach().numpy()
    bq, bk, bv = np.split(mha.in_proj_bias.detach().numpy(), 3)
    params = {"q": {"kernel": wq.T.reshape(16, heads, 4), "bias": bq.reshape(heads, 4)},
              "kv": {"kernel": np.stack([wk.T, wv.T], 1).reshape(12, 2, heads, 4),
                     "bias": np.stack([bk, bv]).reshape(2, heads, 4)},
              "proj": {"kernel": mha.out_proj.weight.detach().numpy().T.reshape(heads, 4, 16),
                       "bias": mha.out_proj.bias.detach().numpy()}}
    got = layers.Attention(heads, "qkv").apply({"params": params}, x, context)
    want = mha(torch.from_numpy(x), torch.from_numpy(context), torch.from_numpy(context))[0].detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)

    self_attn = layers.Attention(heads, "none")
    self_params = randomize(common.abstract_params(self_attn, x))
    causal = self_attn.apply({"params": self_params}, x, is_causal=True)
    changed = x.copy()
    changed[:, 3:] += 1.0  # later tokens must not change earlier outputs
    causal_changed = self_attn.apply({"params": self_params}, changed, is_causal=True)
    np.testing.assert_allclose(causal[:, :3], causal_changed[:, :3], atol=1e-6)
    assert not np.allclose(causal[:, 3:], causal_changed[:, 3:])


def test_cross_attention_with_separate_key_and_value_inputs_matches_torch():
    """With `value`: k from `context`, v from `value`, separate q/k/v projections (InternVideo2 pooling)."""
    heads, rng = 4, np.random.default_rng(4)
    x, keys, values = (rng.standard_normal(shape).astype(np.float32) for shape in ((2, 1, 16), (2, 9, 16), (2, 9, 16)))
    mha = torch.nn.MultiheadAttention(16, heads, batch_first=True).eval()
    torch.nn.init.normal_(mha.in_proj_bias)
    w, b = np.split(mha.in_proj_weight.detach().numpy(), 3), np.split(mha.in_proj_bias.detach().numpy(), 3)
    params = {name: {"kernel": w[i].T.reshape(16, heads, 4), "bias": b[i].reshape(heads, 4)}
              for i, name in enumerate("qkv")}
    params["proj"] = {"kernel": mha.out_proj.weight.detach().numpy().T.reshape(heads, 4, 16),
                      "bias": mha.out_proj.bias.detach().numpy()}
    got = layers.Attention(heads, "qkv").apply({"params": params}, x, keys, value=values)
    want = mha(*(torch.from_numpy(t) for t in (x, keys, values)))[0].detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="`value` needs `context`"):
        layers.Attention(heads, "qkv").init(jax.random.PRNGKey(0), x, value=values)


class DropPath(nn.Module):
    rate: float

    def __call__(self, x, deterministic):
        return layers.drop_path(self, x, self.rate, deterministic)


def test_drop_path_is_identity_at_eval_and_drops_whole_examples():
    x = jnp.ones((64, 5, 8))
    np.testing.assert_array_equal(DropPath(0.5).apply({}, x, True), x)
    out = np.asarray(DropPath(0.5).apply({}, x, False, rngs={"dropout": jax.random.PRNGKey(3)}))
    per_example = out.reshape(64, -1)
    kept = (per_example == 2.0).all(axis=1)
    dropped = (per_example == 0.0).all(axis=1)
    assert (kept | dropped).all() and 10 < kept.sum() < 54


def test_scanned_and_unscanned_transformer_agree():
    block = dict(num_heads=2, mlp_dim=32)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 6, 16)), jnp.float32)
    loop = layers.Transformer(3, block, return_layers=(0, 2))
    params = randomize(common.abstract_params(loop, x))
    scan = layers.Transformer(3, block, scan=True, return_layers=(0, 2))
    stacked = common.loop_to_scan(params)
    assert stacked["blocks"]["attn"]["qkv"]["kernel"].shape == (3, 16, 3, 2, 8)
    out_loop, hidden_loop = jax.jit(loop.apply)({"params": params}, x)
    out_scan, hidden_scan = jax.jit(scan.apply)({"params": stacked}, x)
    np.testing.assert_allclose(out_scan, out_loop, atol=1e-6)
    np.testing.assert_allclose(hidden_scan, hidden_loop, atol=1e-6)


def traced_shapes(jaxpr):
    """Shapes of every value a program computes, nested programs (scan bodies, remat) included."""
    for eqn in jaxpr.eqns:
        yield from (v.aval.shape for v in eqn.outvars)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    yield from traced_shapes(sub)


@pytest.mark.parametrize("return_layers", [(1,), (3, 0), (-1, 2, 2)])
def test_scanned_return_layers_keeps_only_the_requested_layers(return_layers):
    """The scan carries one slot per requested layer: outputs equal the python loop's (1e-6) and keeping every layer
    then indexing (exactly), and no array of all `depth` outputs is computed."""
    depth, block = 4, dict(num_heads=2, mlp_dim=32)
    x = jnp.asarray(np.random.default_rng(5).standard_normal((2, 6, 16)), jnp.float32)
    loop = layers.Transformer(depth, block, return_layers=return_layers)
    params = randomize(common.abstract_params(loop, x))
    stacked = {"params": common.loop_to_scan(params)}
    scan = layers.Transformer(depth, block, scan=True, remat="full", return_layers=return_layers)
    every = layers.Transformer(depth, block, scan=True, return_layers=tuple(range(depth)))
    out_loop, hidden_loop = jax.jit(loop.apply)({"params": params}, x)
    out_scan, hidden_scan = jax.jit(scan.apply)(stacked, x)
    _, hidden_every = jax.jit(every.apply)(stacked, x)
    assert hidden_scan.shape == (len(return_layers),) + x.shape
    np.testing.assert_allclose(out_scan, out_loop, atol=1e-6)
    np.testing.assert_allclose(hidden_scan, hidden_loop, atol=1e-6)
    np.testing.assert_array_equal(hidden_scan, np.asarray(hidden_every)[list(return_layers)])
    assert (depth,) + x.shape not in set(traced_shapes(jax.make_jaxpr(scan.apply)(stacked, x).jaxpr))
    assert (depth,) + x.shape in set(traced_shapes(jax.make_jaxpr(every.apply)(stacked, x).jaxpr))


@pytest.mark.parametrize("scan", [False, True])
def test_return_layers_outside_the_stack_is_an_error(scan):
    x = jnp.zeros((1, 3, 8))
    with pytest.raises(ValueError, match=r"return_layers \(0, 2\): layer 2 is outside a stack of depth 2"):
        layers.Transformer(2, dict(num_heads=2, mlp_dim=16), scan=scan, return_layers=(0, 2)).init(
            jax.random.PRNGKey(0), x)


def test_cls_token_with_fixed_and_learned_tables():
    from invideo_jax.models.vit import VisionTransformer
    for pos_embed in ("sincos_1d", "learned_sincos_3d", "none"):
        m = VisionTransformer(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8, tubelet_size=2, num_frames=2,
                              image_size=16, cls_token=True, pos_embed=pos_embed, pool="cls")
        video = jnp.ones((2, 2, 16, 16, 3))
        out = m.apply(m.init(jax.random.PRNGKey(0), video), video)
        assert out["tokens"].shape == (2, 1 + 4, 32) and out["pooled"].shape == (2, 32)

"""Caption decoder: official key names and shapes, numerics against a torch re-derivation of the official forward,
causality over text, order-invariance over video tokens."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from invideo_jax.convert import common
from invideo_jax.models.caption import CaptionDecoder

VOCAB, WIDTH, HEADS, DEPTH, QUERIES, VISION = 40, 32, 2, 2, 8, 24
HEAD_DIM, FF = WIDTH // HEADS, 4 * WIDTH
BATCH, TEXT_LEN, VIDEO_LEN = 2, 7, 10


def decoder():
    return CaptionDecoder(vocab_size=VOCAB, width=WIDTH, depth=DEPTH, num_heads=HEADS, num_queries=QUERIES)


def official_shapes():
    """`caption_decoder.*` state-dict shapes from the official constructors (clip_decoders.py, coca.py)."""
    inner = HEADS * HEAD_DIM

    def coca_attention(prefix, context_dim, ff):
        out = {"norm.gamma": (WIDTH,), "norm.beta": (WIDTH,), "to_q.weight": (inner, WIDTH),
               "to_kv.weight": (2 * HEAD_DIM, context_dim), "to_out.weight": (WIDTH, inner)}
        if context_dim != WIDTH:
            out.update({"context_norm.gamma": (context_dim,), "context_norm.beta": (context_dim,)})
        if ff:
            out.update({"ff.0.weight": (2 * FF, WIDTH), "ff.2.weight": (WIDTH, FF)})
        return {prefix + k: v for k, v in out.items()}

    shapes = {"visual_queries": (QUERIES, WIDTH), **coca_attention("visual_attn_pooler.", VISION, False)}
    for name in ("visual_pooler_norm", "text_norm", "predictor.0", "predictor.3"):
        shapes.update({f"{name}.weight": (WIDTH,), f"{name}.bias": (WIDTH,)})
    shapes.update({"predictor.1.weight": (WIDTH, WIDTH), "predictor.1.bias": (WIDTH,),
                   "predictor.4.weight": (VOCAB, WIDTH), "predictor.4.bias": (VOCAB,)})
    for i in range(DEPTH):
        p = f"multimodal_layers.{i}.0.fn."
        shapes.update({p + "norm.gamma": (WIDTH,), p + "norm.beta": (WIDTH,),
                       p + "rotary_emb.inv_freq": (HEAD_DIM // 2,),
                       p + "fused_attn_ff_proj.weight": (inner + 2 * HEAD_DIM + 2 * FF, WIDTH),
                       p + "attn_out.weight": (WIDTH, inner), p + "ff_out.1.weight": (WIDTH, FF)})
        shapes.update(coca_attention(f"multimodal_layers.{i}.1.fn.", WIDTH, True))
    return shapes


def key_table():
    """Our param path -> official key (the docstring's table); buffers (`beta`, `inv_freq`) have no param."""
    def coca(ours, theirs, names):
        return {f"{ours}/{a}": f"{theirs}.{b}" for a, b in names.items()}

    attention = {"norm/scale": "norm.gamma", "to_q/kernel": "to_q.weight", "to_kv/kernel": "to_kv.weight",
                 "to_out/kernel": "to_out.weight"}
    table = {"visual_queries": "visual_queries",
             **coca("visual_attn_pooler", "visual_attn_pooler", dict(attention, **{
                 "context_norm/scale": "context_norm.gamma"}))}
    for ours, theirs in (("visual_pooler_norm", "visual_pooler_norm"), ("text_norm", "text_norm"),
                         ("predictor/norm1", "predictor.0"), ("predictor/norm2", "predictor.3")):
        table.update({f"{ours}/scale": f"{theirs}.weight", f"{ours}/bias": f"{theirs}.bias"})
    for ours, theirs in (("predictor/fc1", "predictor.1"), ("predictor/fc2", "predictor.4")):
        table.update({f"{ours}/kernel": f"{theirs}.weight", f"{ours}/bias": f"{theirs}.bias"})
    for i in range(DEPTH):
        table.update(coca(f"layers_{i}/attn_ff", f"multimodal_layers.{i}.0.fn", {
            "norm/scale": "norm.gamma", "fused_attn_ff_proj/kernel": "fused_attn_ff_proj.weight",
            "attn_out/kernel": "attn_out.weight", "ff_out/kernel": "ff_out.1.weight"}))
        table.update(coca(f"layers_{i}/cross_attn", f"multimodal_layers.{i}.1.fn", dict(attention, **{
            "ff_in/kernel": "ff.0.weight", "ff_out/kernel": "ff.2.weight"})))
    return table


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((BATCH, VIDEO_LEN, VISION)).astype(np.float32),
            rng.standard_normal((BATCH, TEXT_LEN, WIDTH)).astype(np.float32))


def official_state(seed=0):
    rng = np.random.default_rng(seed)
    state = {k: (0.3 * rng.standard_normal(s)).astype(np.float32) for k, s in official_shapes().items()}
    for key in state:
        if key.endswith("beta"):
            state[key] = np.zeros_like(state[key])
        elif key.endswith("inv_freq"):
            state[key] = (1.0 / 10000 ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM)).astype(np.float32)
    return state


def to_ours(state, abstract):
    flat = {}
    for path, official in key_table().items():
        value = state[official]
        flat[path] = (value.T if path.endswith("kernel") else value).reshape(abstract[path].shape)
    return common.unflatten(flat)


# ---------------- torch re-derivation of the official forward (from reading clip_decoders.py / coca.py) -------------


def layer_norm(x, weight, bias=None):
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps=1e-5)


def rotate(t):
    """Rotary embedding on (..., n, d): positions 0..n-1, frequencies cat(f, f), the halves rotated."""
    n, d = t.shape[-2:]
    freqs = torch.outer(torch.arange(n, dtype=torch.float64), 1.0 / 10000 ** (torch.arange(0, d, 2) / d))
    freqs = torch.cat([freqs, freqs], -1)
    rotated = torch.cat([-t[..., d // 2:], t[..., :d // 2]], -1)
    return t * freqs.cos() + rotated * freqs.sin()


def one_kv_head_attention(q, k, v, causal):
    """q (b, h, n, d) already scaled; k, v (b, m, d) shared by every head -> (b, n, h*d)."""
    scores = torch.einsum("bhid,bjd->bhij", q, k)
    if causal:
        n = scores.shape[-1]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -torch.inf)
    out = torch.einsum("bhij,bjd->bhid", scores.softmax(-1), v)
    return out.transpose(1, 2).flatten(2)


def coca_cross(sd, p, x, context, ff):
    x = layer_norm(x, sd[p + "norm.gamma"])
    if p + "context_norm.gamma" in sd:
        context = layer_norm(context, sd[p + "context_norm.gamma"])
    q = F.linear(x, sd[p + "to_q.weight"]).unflatten(-1, (HEADS, HEAD_DIM)).transpose(1, 2) * HEAD_DIM ** -0.5
    k, v = F.linear(context, sd[p + "to_kv.weight"]).chunk(2, -1)
    out = F.linear(one_kv_head_attention(q, k, v, False), sd[p + "to_out.weight"])
    if ff:
        value, gate = F.linear(x, sd[p + "ff.0.weight"]).chunk(2, -1)
        out = out + F.linear(value * F.silu(gate), sd[p + "ff.2.weight"])
    return out


def coca_parallel(sd, p, x):
    x = layer_norm(x, sd[p + "norm.gamma"])
    q, k, v, ff = F.linear(x, sd[p + "fused_attn_ff_proj.weight"]).split(
        [HEADS * HEAD_DIM, HEAD_DIM, HEAD_DIM, 2 * FF], -1)
    q = rotate(q.unflatten(-1, (HEADS, HEAD_DIM)).transpose(1, 2)) * HEAD_DIM ** -0.5
    attn = F.linear(one_kv_head_attention(q, rotate(k), v, True), sd[p + "attn_out.weight"])
    value, gate = ff.chunk(2, -1)
    return attn + F.linear(value * F.silu(gate), sd[p + "ff_out.1.weight"])


def official_forward(state, video, text):
    sd = {k: torch.from_numpy(v).double() for k, v in state.items()}
    video, text = torch.from_numpy(video).double(), torch.from_numpy(text).double()
    queries = sd["visual_queries"].expand(video.shape[0], -1, -1)
    pooled = coca_cross(sd, "visual_attn_pooler.", queries, video, False)
    pooled = layer_norm(pooled, sd["visual_pooler_norm.weight"], sd["visual_pooler_norm.bias"])
    x = layer_norm(text, sd["text_norm.weight"], sd["text_norm.bias"])
    for i in range(DEPTH):
        x = x + coca_parallel(sd, f"multimodal_layers.{i}.0.fn.", x)
        x = x + coca_cross(sd, f"multimodal_layers.{i}.1.fn.", x, pooled, True)
    x = layer_norm(x, sd["predictor.0.weight"], sd["predictor.0.bias"])
    x = F.gelu(F.linear(x, sd["predictor.1.weight"], sd["predictor.1.bias"]))
    x = layer_norm(x, sd["predictor.3.weight"], sd["predictor.3.bias"])
    return F.linear(x, sd["predictor.4.weight"], sd["predictor.4.bias"]).numpy()


# ---------------- tests ----------------


def all_logical(model, *args):
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    return all(isinstance(x, nn.LogicallyPartitioned) and len(x.names) == x.value.ndim for x in leaves)


def test_params_are_the_official_keys_and_shapes():
    assert all_logical(decoder(), *inputs())
    abstract = common.flatten(common.abstract_params(decoder(), *inputs()))
    shapes, table = official_shapes(), key_table()
    assert set(abstract) == set(table)
    buffers = {k for k in shapes if k.endswith(("beta", "inv_freq"))}
    assert set(table.values()) == set(shapes) - buffers
    for path, official in table.items():
        assert math.prod(abstract[path].shape) == math.prod(shapes[official]), path
        if path.endswith("kernel"):  # torch (out, in) <-> our (in..., out...)
            assert shapes[official][-1] in (abstract[path].shape[0], math.prod(abstract[path].shape[:2])), path


def test_matches_the_official_forward():
    video, text = inputs()
    state = official_state()
    params = to_ours(state, common.flatten(common.abstract_params(decoder(), video, text)))
    got = jax.jit(decoder().apply)({"params": params}, video, text)
    assert got.shape == (BATCH, TEXT_LEN, VOCAB) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, official_forward(state, video, text), atol=1e-4, rtol=1e-4)
    rematted = jax.jit(decoder().clone(remat="full").apply)({"params": params}, video, text)  # same param tree
    np.testing.assert_allclose(rematted, got, atol=1e-6)


def test_causal_over_text_and_order_free_over_video():
    model, (video, text) = decoder(), inputs(1)
    params = {"params": to_ours(official_state(1), common.flatten(common.abstract_params(model, video, text)))}
    apply = jax.jit(model.apply)
    logits = apply(params, video, text)
    changed = text.copy()
    changed[:, 4:] += 1.0
    after = apply(params, video, changed)
    np.testing.assert_allclose(after[:, :4], logits[:, :4], atol=1e-6)
    assert not np.allclose(after[:, 4:], logits[:, 4:])
    shuffled = apply(params, video[:, ::-1], text)  # the pooler sees the tokens as a set
    np.testing.assert_allclose(shuffled, logits, atol=1e-5)
    assert not np.allclose(apply(params, inputs(2)[0], text), logits)  # (a shift alone is normed away)

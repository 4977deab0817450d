"""InternVideo2 vision encoder: parameter counts of the published sizes, a float64 numpy forward written from the
published formulas (RMSNorm, full-width QK-RMSNorm, attention, LayerScale, tanh-GELU MLP, attention pooling),
the 3-D sin-cos init, pos_embed interpolation to other frame counts, scan/remat equivalence, the official init."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from configs import internvideo2 as iv2_config
from invideo_jax.convert.common import abstract_params, loop_to_scan
from invideo_jax.models import internvideo2
from invideo_jax.models.internvideo2 import InternVideo2
from invideo_jax.models.posembed import resample_pos_embed
from invideo_jax.models.vit import VisionTransformer
from invideo_jax.train.init_from import restore_subtrees

pytestmark = pytest.mark.usefixtures("quick_compiling")  # conftest.py

# Tiny model: 2 frames of 12x12, patch 4 -> 2 x 3 x 3 = 18 patch tokens + CLS; 4 heads of 8; MLP ratio 2.5.
TINY = dict(width=32, depth=2, num_heads=4, mlp_dim=80, patch_size=4, num_frames=2, image_size=12,
            attn_pool_heads=4, clip_embed_dim=24, num_classes=5, return_layers=(0, 1))
TOLERANCE = dict(rtol=1e-5, atol=1e-5)  # float32 model vs float64 reference


def video(frames=2, size=12, seed=0):
    return np.random.default_rng(seed).standard_normal((2, frames, size, size, 3)).astype(np.float32)


def randomize(params, seed=0):
    """Every parameter random (norm scales around 1), so each term of the formulas matters."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(params, sep="/")
    out = {k: (1.0 + 0.3 * rng.standard_normal(v.shape) if k.endswith("scale") else
               0.3 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in flat.items()}
    return traverse_util.unflatten_dict(out, sep="/")


# ----------------------------------------------------------------------------------------------------------
# float64 numpy reference, from the formulas (weights as plain (in, out) matrices)
# ----------------------------------------------------------------------------------------------------------


def rms_norm(x, scale, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def layer_norm(x, scale, bias, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * scale + bias


def gelu(x, exact=False):
    if exact:
        return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def multi_head(q, k, v, heads):
    """softmax(q k^T / sqrt(head_dim)) v per head; q (B, Nq, D), k and v (B, Nk, D)."""
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1)
    q, k, v = split(q), split(k), split(v)
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(q.shape[0], q.shape[1], -1)


def mat(kernel, n_in=1):
    kernel = np.asarray(kernel, np.float64)
    return kernel.reshape(math.prod(kernel.shape[:n_in]), -1)


def ref_block(x, p, heads, exact_gelu=False, per_head_qk_norm=False):
    """x + ls1 * proj(attn(q_norm(q), k_norm(k), v)) with q, k, v = RMSNorm(x) W_qkv; then x + ls2 * MLP(RMSNorm(x))."""
    d = x.shape[-1]
    y = rms_norm(x, p["norm1"]["scale"])
    q, k, v = np.split(y @ mat(p["attn"]["qkv"]["kernel"]), 3, axis=-1)  # PyTorch's (3, heads, head_dim) layout
    if per_head_qk_norm:  # the wrong variant, to show the test can tell
        per_head = lambda t, s: rms_norm(t.reshape(*t.shape[:-1], heads, -1), s.reshape(heads, -1)).reshape(t.shape)
        q, k = per_head(q, p["attn"]["q_norm"]["scale"]), per_head(k, p["attn"]["k_norm"]["scale"])
    else:  # over the full width, before the head split
        q, k = rms_norm(q, p["attn"]["q_norm"]["scale"]), rms_norm(k, p["attn"]["k_norm"]["scale"])
    attn = multi_head(q, k, v, heads) @ mat(p["attn"]["proj"]["kernel"], 2) + p["attn"]["proj"]["bias"]
    x = x + p["ls1"]["gamma"] * attn
    y = rms_norm(x, p["norm2"]["scale"])
    hidden = gelu(y @ mat(p["mlp"]["fc1"]["kernel"]) + p["mlp"]["fc1"]["bias"], exact_gelu)
    mlp = hidden @ mat(p["mlp"]["fc2"]["kernel"]) + p["mlp"]["fc2"]["bias"]
    assert mlp.shape[-1] == d
    return x + p["ls2"]["gamma"] * mlp


def ref_pool(x, p, heads):
    """AttentionPoolingBlock: query = mean of all tokens; LN_q/LN_k/LN_v; q/k/v Linear + bias; proj."""
    a = p["cross_attn"]
    linear = lambda t, name: t @ mat(a[name]["kernel"]) + np.asarray(a[name]["bias"]).reshape(-1)
    query = layer_norm(x.mean(1, keepdims=True), p["norm1_q"]["scale"], p["norm1_q"]["bias"])
    keys = layer_norm(x, p["norm1_k"]["scale"], p["norm1_k"]["bias"])
    values = layer_norm(x, p["norm1_v"]["scale"], p["norm1_v"]["bias"])
    out = multi_head(linear(query, "q"), linear(keys, "k"), linear(values, "v"), heads)
    return (out @ mat(a["proj"]["kernel"], 2) + a["proj"]["bias"])[:, 0]


def ref_embed(clip, p, patch):
    """Conv3d (1, p, p) as patches x matrix, CLS first, + pos_embed."""
    b, t, h, w, c = clip.shape
    patches = clip.reshape(b, t, h // patch, patch, w // patch, patch, c).transpose(0, 1, 2, 4, 3, 5, 6)
    tokens = patches.reshape(b, -1, patch * patch * c) @ mat(p["patch_embed"]["proj"]["kernel"], 4)
    tokens = tokens + p["patch_embed"]["proj"]["bias"]
    cls = np.broadcast_to(np.asarray(p["cls_token"], np.float64), (b, 1, tokens.shape[-1]))
    return np.concatenate([cls, tokens], 1) + p["pos_embed"]


@pytest.fixture(scope="module")
def tiny():
    model = InternVideo2(**TINY)
    params = randomize(abstract_params(model, video()))
    out = jax.jit(model.apply)({"params": params}, video())
    x0 = ref_embed(video().astype(np.float64), params["encoder"], TINY["patch_size"])
    blocks = params["encoder"]["transformer"]
    x1 = ref_block(x0, blocks["blocks_0"], TINY["num_heads"])
    x2 = ref_block(x1, blocks["blocks_1"], TINY["num_heads"])
    return model, params, out, (x0, x1, x2)


# ----------------------------------------------------------------------------------------------------------
# Sizes
# ----------------------------------------------------------------------------------------------------------

# 8 frames of 224 (2048 patch tokens), without fc_norm / head. ROUNDED: the model names "1B" / "6B" as published
# (no exact count is published) and internvideo.md 1.7's counts from the official module shapes (S/B/L 23.0 M,
# 89.4 M, 308.9 M; 1B 1020.7 M; 6B 5941.7 M).
EXACT = {"S": 23_043_840, "B": 89_438_976, "L": 308_929_280, "1B": 1_020_708_608, "6B": 5_941_735_168}
ROUNDED = {"S": "23.0M", "B": "89.4M", "L": "308.9M", "1B": "1.02B", "6B": "5.94B"}


def analytic_count(width, depth, mlp_dim, tokens, pool_dim=768, num_classes=0):
    """From the architecture: Conv3d(3, D, (1, 14, 14)) + bias, cls (D), pos ((1 + tokens) D); per block: RMSNorm x2
    (D each), qkv (D x 3D, no bias), q_norm + k_norm (D each), proj (D x D + D), ls1 + ls2 (D each), fc1 (D x M + M),
    fc2 (M x D + D); pool: 3 LayerNorms (2D each), q/k/v (D x D + D each), proj (D x 768 + 768); head: fc_norm
    (2 x 768) + Linear(768, classes)."""
    d, m = width, mlp_dim
    embed = (3 * 14 * 14 * d + d) + d + (1 + tokens) * d
    block = 2 * d + 3 * d * d + 2 * d + (d * d + d) + 2 * d + (d * m + m) + (m * d + d)
    pool = 3 * 2 * d + 3 * (d * d + d) + (d * pool_dim + pool_dim)
    head = 2 * pool_dim + pool_dim * num_classes + num_classes if num_classes else 0
    return embed + depth * block + pool + head


def count(model, frames=8):
    params = abstract_params(model, jnp.zeros((1, frames, 224, 224, 3)))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


@pytest.mark.parametrize("size", sorted(EXACT))
def test_parameter_counts_match_the_architecture_and_the_published_sizes(size):
    """The count the official `InternVideo2` module holds at 8 frames without its fine-tuning head: patch embedding,
    cls_token, pos_embed for 1 + 8*256 positions, the blocks and the attention pool (`clip_projector`) to 768.
    Not included: fc_norm/head (task-specific) and the stage-1 distillation decoders / their pos_embeds."""
    got = count(InternVideo2(**iv2_config.encoder_config(size, scan=True)))
    row = iv2_config.SIZES[size]
    assert got == analytic_count(row["width"], row["depth"], row["mlp_dim"], 8 * 16 * 16) == EXACT[size]
    assert (f"{got / 1e9:.2f}B" if got > 1e9 else f"{got / 1e6:.1f}M") == ROUNDED[size]


def test_parameter_count_with_other_frames_and_a_head():
    model = InternVideo2(**iv2_config.encoder_config("1B", frames=4, scan=True))  # the released stage-2 files
    assert count(model, frames=4) == analytic_count(1408, 40, 6144, 4 * 256) == 1_019_266_816
    model = InternVideo2(**iv2_config.encoder_config("S", num_classes=400, scan=True))
    assert count(model) == analytic_count(384, 12, 1536, 8 * 256, num_classes=400) == EXACT["S"] + 2 * 768 + 769 * 400


def test_encoder_config_rejects_unknown_sizes():
    with pytest.raises(ValueError, match="unknown InternVideo2 size 'XL'"):
        iv2_config.encoder_config("XL")
    assert iv2_config.pos_embed_grid(4) == (4, 16, 16)


# ----------------------------------------------------------------------------------------------------------
# Numerics against the float64 reference
# ----------------------------------------------------------------------------------------------------------


def test_blocks_match_float64_numpy(tiny):
    model, params, out, (x0, x1, x2) = tiny
    np.testing.assert_allclose(out["layers"][0], x1, **TOLERANCE)
    np.testing.assert_allclose(out["layers"][1], x2, **TOLERANCE)
    np.testing.assert_allclose(out["tokens"], x2, **TOLERANCE)
    # The reference can tell exact from tanh GELU and per-head from full-width QK-norm at these weights.
    block = params["encoder"]["transformer"]["blocks_0"]
    for variant in (dict(exact_gelu=True), dict(per_head_qk_norm=True)):
        assert np.abs(ref_block(x0, block, TINY["num_heads"], **variant) - x1).max() > 1e-4  # 10x the tolerance


def test_attention_pool_and_head_match_float64_numpy(tiny):
    model, params, out, (_, _, x2) = tiny
    pooled = ref_pool(x2, params["clip_projector"], TINY["attn_pool_heads"])
    np.testing.assert_allclose(out["pooled"], pooled, **TOLERANCE)
    logits = layer_norm(pooled, params["fc_norm"]["scale"], params["fc_norm"]["bias"]) @ params["head"]["kernel"]
    np.testing.assert_allclose(out["logits"], logits + params["head"]["bias"], **TOLERANCE)
    # The pooling module alone on given tokens.
    pool = internvideo2.AttentionPool(TINY["attn_pool_heads"], TINY["clip_embed_dim"])
    got = pool.apply({"params": params["clip_projector"]}, x2.astype(np.float32))
    np.testing.assert_allclose(got, ref_pool(x2.astype(np.float32).astype(np.float64), params["clip_projector"],
                                             TINY["attn_pool_heads"]), **TOLERANCE)


def test_visible_tokens_keep_cls_and_bf16_compute(tiny):
    _, params, _, _ = tiny
    model = InternVideo2(**dict(TINY, dtype=jnp.bfloat16, return_layers=()))
    visible = jnp.tile(jnp.asarray([[0, 4, 9, 17]]), (2, 1))
    out = jax.eval_shape(model.apply, {"params": params}, video(), visible)
    assert out["tokens"].shape == (2, 1 + 4, 32) and out["tokens"].dtype == jnp.bfloat16
    assert out["pooled"].shape == (2, 24) and out["logits"].dtype == jnp.float32


# ----------------------------------------------------------------------------------------------------------
# Position embedding: init and interpolation
# ----------------------------------------------------------------------------------------------------------


def sincos_code(pos, dim):
    """[sin(pos w_i)..., cos(pos w_i)...], w_i = 1 / 10000^(i / (dim / 2))."""
    freqs = [10000.0 ** (-i / (dim / 2)) for i in range(dim // 2)]
    return [math.sin(pos * f) for f in freqs] + [math.cos(pos * f) for f in freqs]


@pytest.fixture(scope="module")
def initialised():
    """model.init of the tiny looped model (boxed variables)."""
    model = InternVideo2(**TINY)
    return model, jax.jit(model.init)(jax.random.PRNGKey(0), video())


def test_pos_embed_is_learned_and_starts_as_the_3d_sincos_table(initialised):
    model, variables = initialised
    pos = np.asarray(nn.unbox(variables)["params"]["encoder"]["pos_embed"])
    d = TINY["width"]
    t, h, w = model.grid
    # Official get_3d_sincos_pos_embed: CLS zeros, then time-major (t, h, w) rows; D/4 temporal channels, then
    # 3D/8 channels coding w and 3D/8 coding h (np.meshgrid(w, h) puts w first).
    table = [[0.0] * d] + [sincos_code(ti, d // 4) + sincos_code(wi, 3 * d // 8) + sincos_code(hi, 3 * d // 8)
                           for ti in range(t) for hi in range(h) for wi in range(w)]
    assert pos.shape == (1, 1 + t * h * w, d)
    np.testing.assert_allclose(pos[0], np.asarray(table), rtol=0, atol=1e-6)


def test_pos_embed_interpolation_to_8_frames_and_another_resolution(tmp_path):
    src = InternVideo2(**dict(TINY, num_frames=4))
    params = jax.tree.map(jnp.asarray, randomize(abstract_params(src, video(frames=4))))
    pe = np.asarray(params["encoder"]["pos_embed"])
    for frames, size in ((8, 12), (8, 16)):
        dst = InternVideo2(**dict(TINY, num_frames=frames, image_size=size))
        resized = internvideo2.resize_pos_embed(params, dst, src_frames=4)
        new = np.asarray(resized["encoder"]["pos_embed"])
        assert new.shape == (1, 1 + math.prod(dst.grid), TINY["width"])
        np.testing.assert_array_equal(new[:, 0], pe[:, 0])  # CLS position kept
        np.testing.assert_array_equal(new, resample_pos_embed(pe, (4, 3, 3), dst.grid))
        # Every parameter now has the shape the other model expects.
        expected = abstract_params(dst, video(frames, size))
        assert jax.tree.map(np.shape, resized) == jax.tree.map(lambda x: x.shape, expected)
    # Restoring an Orbax checkpoint of the 4-frame model into the 8-frame one resamples the same way.
    ocp.PyTreeCheckpointer().save(tmp_path / "f4", params)
    dst = InternVideo2(**dict(TINY, num_frames=8))
    target = jax.tree.map(jnp.asarray, randomize(abstract_params(dst, video(frames=8)), seed=1))
    restored = restore_subtrees(target, {
        "checkpoint": str(tmp_path / "f4"), "mapping": {"encoder": "encoder", "clip_projector": "clip_projector"},
        "pos_embed_grid_src": iv2_config.pos_embed_grid(4, 12, 4), "pos_embed_grid_dst": dst.grid})
    np.testing.assert_array_equal(restored["encoder"]["pos_embed"],
                                  internvideo2.resize_pos_embed(params, dst, src_frames=4)["encoder"]["pos_embed"])
    with pytest.raises(ValueError, match="does not hold a CLS position"):
        internvideo2.resize_pos_embed(params, dst, src_frames=3)


# ----------------------------------------------------------------------------------------------------------
# Scan / remat, logical axes, init
# ----------------------------------------------------------------------------------------------------------


def test_scanned_remat_model_equals_the_python_loop(tiny):
    model, params, out, _ = tiny
    scanned = InternVideo2(**dict(TINY, scan=True, remat="full"))
    stacked = loop_to_scan(params)
    assert stacked["encoder"]["transformer"]["blocks"]["attn"]["qkv"]["kernel"].shape == (2, 32, 3, 4, 8)
    got = jax.jit(scanned.apply)({"params": stacked}, video())
    for key in ("tokens", "layers", "pooled", "logits"):
        np.testing.assert_allclose(got[key], out[key], rtol=1e-6, atol=1e-6)


def test_every_parameter_has_logical_axes_and_the_official_init(initialised):
    model, variables = initialised
    scanned = jax.eval_shape(InternVideo2(**dict(TINY, scan=True)).init, jax.random.PRNGKey(0), video())
    for tree in (variables, scanned):
        boxes = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
        assert boxes and all(isinstance(b, nn.LogicallyPartitioned) and len(b.names) == b.value.ndim for b in boxes)
    assert scanned["params"]["encoder"]["transformer"]["blocks"]["attn"]["proj"]["kernel"].names[0] == "layers"
    blocks = nn.unbox(variables)["params"]["encoder"]["transformer"]
    d, m = TINY["width"], TINY["mlp_dim"]
    for i in range(TINY["depth"]):
        block = blocks[f"blocks_{i}"]
        np.testing.assert_array_equal(block["ls1"]["gamma"], np.float32(1e-5))
        # fix_init_weight: attn.proj and mlp.fc2 of block i divided by sqrt(2 (i + 1)); fc1 as initialised. Xavier-
        # uniform bounds sqrt(6 / (fan_in + fan_out)) are reached within 10% by thousands of draws.
        for kernel, fan, scale in ((block["attn"]["proj"]["kernel"], d + d, 1 / math.sqrt(2 * (i + 1))),
                                   (block["mlp"]["fc2"]["kernel"], m + d, 1 / math.sqrt(2 * (i + 1))),
                                   (block["mlp"]["fc1"]["kernel"], d + m, 1.0)):
            ratio = np.abs(kernel).max() / (math.sqrt(6 / fan) * scale)
            assert 0.9 < ratio <= 1.0 + 1e-6, (i, ratio)


class Unscaled(nn.Module):
    """InternVideo2's trunk without the depth scaling, under the same parameter path, so drawn with the same keys."""

    model: InternVideo2

    @nn.compact
    def __call__(self, clip):
        kwargs = dict(self.model.encoder_kwargs(), depth_scaled_init=False)
        return VisionTransformer(name="encoder", **kwargs)(clip)


class Parent(nn.Module):
    """A model that embeds the encoder as its child `encoder` (as distill and align embed InternVideo2)."""

    encoder: nn.Module

    @nn.compact
    def __call__(self, clip):
        return self.encoder(clip)


def stacked_blocks(variables, path):
    """The trunk's blocks under `path`, stacked along a leading layer axis (looped ones stacked here), float64."""
    params = nn.unbox(variables)["params"]
    for name in path:
        params = params[name]
    blocks = loop_to_scan(params["encoder"]["transformer"])["blocks"]
    return {k: np.asarray(v, np.float64) for k, v in traverse_util.flatten_dict(blocks, sep="/").items()}


@pytest.mark.parametrize("scan", [False, True])
def test_depth_scaled_init_in_every_construction_path(scan):
    """fix_init_weight: block i's (0-based) attn/proj and mlp/fc2 kernels are the unscaled draws with the same keys
    divided by sqrt(2 (i + 1)), in float64; every other block parameter is the unscaled one exactly."""
    depth = 3
    model = InternVideo2(**dict(TINY, depth=depth, num_frames=1, image_size=4, scan=scan))
    key, clip = jax.random.PRNGKey(3), video(frames=1, size=4)
    unscaled = {(): stacked_blocks(Unscaled(model).init(key, clip), ()),
                ("encoder",): stacked_blocks(Parent(Unscaled(model)).init(key, clip), ("encoder",))}
    built = {"init": ((), model.init(key, clip)),
             "init_with_output": ((), model.init_with_output(key, clip)[1]),
             "lazy_init": ((), model.lazy_init(key, jax.ShapeDtypeStruct(clip.shape, clip.dtype))),
             "parent": (("encoder",), Parent(model).init(key, clip))}
    divisor = np.sqrt(2.0 * np.arange(1, depth + 1))
    for how, (path, variables) in built.items():
        got, want = stacked_blocks(variables, path), unscaled[path]
        assert got.keys() == want.keys(), how
        for name in got:
            if name in ("attn/proj/kernel", "mlp/fc2/kernel"):
                expected = want[name] / divisor.reshape((depth,) + (1,) * (want[name].ndim - 1))
                np.testing.assert_allclose(got[name], expected, rtol=3e-7, atol=0,  # ~2 float32 ulps
                                           err_msg=f"{how} {name}")
            else:
                np.testing.assert_array_equal(got[name], want[name], err_msg=f"{how} {name}")
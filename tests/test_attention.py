"""Every attention kernel on this backend against a float64 numpy softmax attention, forward and backward (an additive
bias included, and its gradient)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invideo_jax.models import attention, attention_cpu

CPU_KERNELS = attention.kernels_for("cpu")


def numpy_attention(q, k, v, mask, is_causal, scale, d_out, bias=None):
    """(output, (dq, dk, dv, dbias)) in float64: softmax(q kᵀ scale + bias) attention and its vector-Jacobian product
    for cotangent d_out, from the formulas (dS = P ∘ (dP − rowsum(dP ∘ P)), dP = dO vᵀ; dbias = dS summed over the
    axes the bias broadcasts along)."""
    q, k, v, d_out = (np.asarray(a, np.float64) for a in (q, k, v, d_out))
    group = q.shape[2] // k.shape[2]
    k_rep, v_rep = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    scores = np.einsum("btnh,bsnh->bnts", q, k_rep) * scale
    if bias is not None:
        scores = scores + np.asarray(bias, np.float64)
    allowed = np.ones(scores.shape, bool)
    if mask is not None:
        allowed &= np.asarray(mask)
    if is_causal:
        allowed &= np.tril(np.ones(scores.shape[-2:], bool))
    scores = np.where(allowed, scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("bnts,bsnh->btnh", p, v_rep)
    dp = np.einsum("btnh,bsnh->bnts", d_out, v_rep)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    dq = np.einsum("bnts,bsnh->btnh", ds, k_rep) * scale
    dk = np.einsum("bnts,btnh->bsnh", ds, q) * scale
    dv = np.einsum("bnts,btnh->bsnh", p, d_out)

    def per_kv_head(g):
        return g.reshape(g.shape[:2] + (k.shape[2], group) + g.shape[3:]).sum(3)

    d_bias = None
    if bias is not None:
        d_bias = ds.sum(axis=tuple(i for i, n in enumerate(np.shape(bias)) if n == 1), keepdims=True)
    return out, (dq, per_kv_head(dk), per_kv_head(dv), d_bias)


CASES = {  # name: (T, S, N, K, masked, is_causal, bias shape: None, "heads" (1, N, T, S) or "full" (B, N, T, S))
    "self": (24, 24, 4, 4, False, False, None),
    "cross": (10, 37, 4, 4, False, False, None),
    "padding_mask": (16, 29, 4, 4, True, False, None),
    "causal": (21, 21, 4, 4, False, True, None),
    "causal_and_mask": (21, 21, 4, 4, True, True, None),
    "multi_query": (13, 30, 4, 1, False, False, None),
    "grouped_query_causal": (19, 19, 4, 2, False, True, None),
    "bias_per_head": (24, 24, 4, 4, False, False, "heads"),
    "bias_and_mask": (16, 29, 4, 4, True, False, "full"),
    "bias_grouped_query": (13, 30, 4, 2, False, False, "full"),
}


def case_arrays(t, s, n, kv_heads, masked, head_dim=8, batch=2, seed=0, bias=None):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batch, t, n, head_dim)).astype(np.float32)
    k, v = (rng.normal(size=(batch, s, kv_heads, head_dim)).astype(np.float32) for _ in range(2))
    d_out = rng.normal(size=q.shape).astype(np.float32)
    mask = None
    if masked:  # per-example key padding, key 0 always kept so that no query row is empty
        lengths = rng.integers(1, s + 1, size=batch)
        mask = (np.arange(s)[None] < lengths[:, None])[:, None, None, :]
    if bias is not None:
        bias = rng.normal(size=(1 if bias == "heads" else batch, n, t, s)).astype(np.float32)
    return q, k, v, mask, d_out, bias


def check_against_numpy(kernel, case, batch=2):
    """kernel(q, k, v, bias=, mask=, is_causal=, scale=) and its vector-Jacobian product against float64 numpy."""
    t, s, n, kv_heads, masked, is_causal, bias_shape = CASES[case]
    q, k, v, mask, d_out, bias = case_arrays(t, s, n, kv_heads, masked, batch=batch, bias=bias_shape)
    scale = 0.3
    want, want_grads = numpy_attention(q, k, v, mask, is_causal, scale, d_out, bias)
    args = [jnp.asarray(a) for a in (q, k, v) + (() if bias is None else (bias,))]

    def run(q, k, v, bias=None):
        return kernel(q, k, v, bias=bias, mask=mask, is_causal=is_causal, scale=scale)

    got, vjp = jax.vjp(jax.jit(run), *args)
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=2e-5)
    for name, g, w in zip(("q", "k", "v", "bias"), vjp(jnp.asarray(d_out)), want_grads):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-4, err_msg=f"d{name}")


@pytest.mark.parametrize("impl", CPU_KERNELS + [None, "auto"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_matches_float64_softmax_attention(impl, case):
    check_against_numpy(functools.partial(attention.attention, impl=impl), case)


@pytest.mark.parametrize("case", sorted(CASES))
def test_cpu_blocked_kernel_with_several_query_blocks_and_a_padded_last_block(case):
    """Blocks of 5 queries: 10-24 queries make 2-5 blocks, all but the 'cross' case with a padded last block."""
    check_against_numpy(functools.partial(attention_cpu.blocked_attention, block=5), case)


@pytest.mark.parametrize("case", sorted(CASES))
def test_cpu_blocked_kernel_with_several_chunks_of_clips(case):
    """6 clips in chunks of 2 (room for the block scores of 2 clips, not 3) and of 1; blocks of 5 queries."""
    t, s, n = CASES[case][:3]
    block = -(-t // -(-t // 5))
    for chunk_bytes in (2 * n * block * s * 4, 1):
        check_against_numpy(functools.partial(attention_cpu.blocked_attention, block=5, chunk_bytes=chunk_bytes), case,
                            batch=6)


def test_cpu_blocked_kernel_takes_a_mask_of_fewer_axes():
    q, k, v, _, d_out, _ = case_arrays(12, 12, 2, 2, False)
    mask = np.random.default_rng(1).random((12, 12)) < 0.7
    mask[:, 0] = True
    want, (want_dq, _, _, _) = numpy_attention(q, k, v, mask, False, 0.3, d_out)
    kernel = functools.partial(attention_cpu.blocked_attention, bias=None, mask=mask, is_causal=False, scale=0.3,
                               block=5)
    got, vjp = jax.vjp(kernel, *(jnp.asarray(a) for a in (q, k, v)))
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=2e-5)
    np.testing.assert_allclose(vjp(jnp.asarray(d_out))[0], want_dq, atol=1e-5, rtol=1e-4)


def test_cpu_default_blocks_large_score_matrices_only():
    """Scores [B, N, T, S] of 2 x 2 x 512 x 512 float32 are 4 MiB: blocked; one key fewer stays below: XLA."""
    assert attention.resolve(None) == attention.resolve("auto") == "cpu_auto"
    assert attention_cpu.MIN_SCORES_BYTES == 2 * 2 * 512 * 512 * 4
    for s, kernel in ((511, "xla"), (512, "cpu_blocked")):
        q, k, v, _, _, _ = case_arrays(512, s, 2, 2, False, head_dim=4, batch=2)
        want = attention.attention(q, k, v, impl=kernel)
        np.testing.assert_array_equal(attention.attention(q, k, v), want, err_msg=f"{s} keys: {kernel}")


def test_scale_defaults_to_inverse_sqrt_head_dim():
    q, k, v, _, _, _ = case_arrays(8, 8, 2, 2, False)
    np.testing.assert_allclose(attention.attention(q, k, v), attention.attention(q, k, v, scale=8 ** -0.5),
                               atol=0)


def test_unknown_impl_and_bad_shapes_are_named():
    q, k, v, _, _, _ = case_arrays(8, 8, 4, 4, False)
    with pytest.raises(ValueError, match="impl"):
        attention.attention(q, k, v, impl="flash9")
    with pytest.raises(ValueError, match="multiple of the key/value heads"):
        attention.attention(q, k[:, :, :3], v[:, :, :3])
    with pytest.raises(ValueError, match=r"q \[B, T, N, H\]"):
        attention.attention(q[0], k, v)
    with pytest.raises(ValueError, match=r"bias \(2, 4, 8, 7\) does not broadcast"):
        attention.attention(q, k, v, bias=np.zeros((2, 4, 8, 7), np.float32))

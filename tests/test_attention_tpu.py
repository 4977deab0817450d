"""attn_impl='tpu_flash' (the Pallas TPU flash kernel) against the XLA kernel, forward and backward, on CPU in Pallas
interpret mode: lengths that are not multiples of the kernel's 128 block (padded and masked), key-padding masks,
general masks, causal, cross-attention with grouped key/value heads, an additive bias (and its gradient); and the shard_map over a (data, fsdp, tensor) mesh.
Float32; tolerances: outputs 2e-5, gradients 1e-4 (absolute and relative)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import PartitionSpec as P

from invideo_jax import sharding
from invideo_jax.models import attention
from tests.compiling import FAST_COMPILE

TOL = dict(rtol=1e-4, atol=1e-4)


def inputs(b=2, t=200, s=200, n=2, kv_heads=2, h=32, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal(shape).astype(np.float32)
               for shape in ((b, t, n, h), (b, s, kv_heads, h), (b, s, kv_heads, h)))
    cotangent = rng.standard_normal((b, t, n, h)).astype(np.float32)
    return q, k, v, cotangent


def value_and_grads(impl, q, k, v, cotangent, bias=None, **kwargs):
    """The output and the gradients of sum(output * cotangent) for q, k, v and, when given, the additive bias."""
    def f(q, k, v, *bias):
        out = attention.attention(q, k, v, impl=impl, bias=bias[0] if bias else None, **kwargs)
        return jnp.sum(out * cotangent), out

    args = (q, k, v) if bias is None else (q, k, v, bias)
    value_and_grad = jax.value_and_grad(f, argnums=tuple(range(len(args))), has_aux=True)
    (_, out), grads = jax.jit(value_and_grad, compiler_options=FAST_COMPILE)(*args)
    return out, grads


def check_against_xla(q, k, v, cotangent, **kwargs):
    with pltpu.force_tpu_interpret_mode():
        out, grads = value_and_grads("tpu_flash", q, k, v, cotangent, **kwargs)
    want_out, want_grads = value_and_grads("xla", q, k, v, cotangent, **kwargs)
    np.testing.assert_allclose(out, want_out, rtol=2e-5, atol=2e-5)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("t, s", [(200, 200), (40, 300)])
def test_lengths_off_the_block_are_padded_and_masked(t, s):
    check_against_xla(*inputs(t=t, s=s))


def test_head_dims_above_128_off_its_multiple_are_padded():
    check_against_xla(*inputs(t=40, s=200, n=1, kv_heads=1, h=200))  # two key blocks: the kernel rejects 200


def test_key_padding_mask_and_grouped_key_value_heads():
    q, k, v, cotangent = inputs(t=77, s=77, n=4, kv_heads=2)
    valid = np.arange(77)[None, :] < np.array([[60], [77]])
    check_against_xla(q, k, v, cotangent, mask=valid[:, None, None, :])


def test_causal_and_a_general_mask():
    q, k, v, cotangent = inputs(t=130, s=130)
    check_against_xla(q, k, v, cotangent, is_causal=True)
    mask = np.random.default_rng(1).random((2, 2, 130, 130)) < 0.7
    mask[..., 0] = True  # every query sees a key
    check_against_xla(q, k, v, cotangent, mask=mask)


def test_additive_bias_with_and_without_a_mask():
    q, k, v, cotangent = inputs(t=130, s=130)
    rng = np.random.default_rng(2)
    bias = rng.standard_normal((1, 2, 130, 130)).astype(np.float32)
    mask = rng.random((2, 2, 130, 130)) < 0.7
    mask[..., 0] = True
    for kwargs in (dict(bias=bias), dict(bias=bias, mask=mask)):
        check_against_xla(q, k, v, cotangent, **kwargs)  # the bias's gradient among the others


def test_inside_a_mesh_the_kernel_runs_under_shard_map_over_batch_and_heads():
    """Traced only: in interpret mode a shard_map over 8 simulated devices does not finish here (the kernel's
    numerics are checked above; tests/test_aot.py compiles it inside a TPU train step)."""
    q, k, v, _ = inputs(b=4, t=150, s=150, n=4, kv_heads=4)
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
    with jax.set_mesh(mesh):
        jaxpr = jax.jit(lambda q, k, v: attention.attention(q, k, v, impl="tpu_flash")).trace(q, k, v).jaxpr
    (eqn,) = [e for e in jaxpr.eqns if e.primitive.name == "shard_map"]
    assert eqn.params["in_specs"][0] == P(("data", "fsdp"), "tensor", None, None)

"""Scaled dot-product attention, the one entry point every model calls.

`attention(q, k, v, ...)` computes softmax(q kᵀ · scale + bias, masked) v on arrays in layout [batch, length, heads,
head_dim]. Keys and values may be longer or shorter than the queries (cross-attention) and may have fewer heads
(grouped-query attention: the query heads divide evenly among the key/value heads).

`impl` names the kernel, a row of `KERNELS`:
  None or 'auto'  the default of the backend the program is traced on (`BACKEND_DEFAULTS`; otherwise jax's own
                  choice, `jax.nn.dot_product_attention(implementation=None)`)
  'xla'           `jax.nn.dot_product_attention(implementation='xla')`
  'cudnn'         `jax.nn.dot_product_attention(implementation='cudnn')` (GPU only)
  'tpu_flash'     the Pallas TPU flash attention kernel, shard_map-wrapped, any length (models/attention_tpu.py)
  'cpu_blocked'   query-blocked attention with a recomputing backward, for long sequences on CPU
                  (models/attention_cpu.py)
  'cpu_auto'      the CPU default: 'cpu_blocked' for long sequences, 'xla' for short ones (models/attention_cpu.py)
A kernel in another module joins the table with `register(name, fn)`; `fn(q, k, v, *, bias, mask, is_causal, scale)`
gets an additive float `bias` and a boolean `mask` (True = attend), each broadcastable to [batch, heads, q_length,
kv_length] or None.
"""
import functools
from typing import Callable, Optional

import jax


def _jax_attention(q, k, v, *, bias, mask, is_causal, scale, implementation):
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=is_causal, scale=scale,
                                        implementation=implementation)


KERNELS: dict = {name: functools.partial(_jax_attention, implementation=implementation)
                 for name, implementation in (("jax", None), ("xla", "xla"), ("cudnn", "cudnn"))}
BACKEND_DEFAULTS: dict = {}  # jax.default_backend() -> kernel name; backends not listed use "jax"
PLATFORMS: dict = {"cudnn": "gpu"}  # kernel name -> the only platform it lowers for; kernels not listed run anywhere


def register(name: str, fn: Callable, platform: Optional[str] = None) -> None:
    """Adds kernel `fn(q, k, v, *, bias, mask, is_causal, scale)` to the table under `name`; `platform` names the only
    platform it lowers for, if it has one."""
    KERNELS[name] = fn
    if platform is not None:
        PLATFORMS[name] = platform


def kernels_for(platform: str) -> list:
    """The names of the kernels that lower for `platform` ('cpu', 'gpu', 'tpu')."""
    return sorted(name for name in KERNELS if PLATFORMS.get(name, platform) == platform)


def resolve(impl: Optional[str]) -> str:
    """The kernel name that `impl` selects on the current backend."""
    if impl in (None, "auto"):
        return BACKEND_DEFAULTS.get(jax.default_backend(), "jax")
    if impl not in KERNELS:
        raise ValueError(f"attention impl must be None, 'auto' or one of {sorted(KERNELS)}, got {impl!r}")
    return impl


def attention(q, k, v, *, bias=None, mask=None, is_causal: bool = False, scale: Optional[float] = None,
              impl: Optional[str] = None):
    """softmax(q kᵀ · scale + bias) v. q [B, T, N, H], k and v [B, S, K, H] with N % K == 0; `bias` float, added to
    the scaled scores (e.g. a relative position bias); `mask` boolean, True where a query may attend; both
    broadcastable to [B, N, T, S]; `is_causal` lets query i see keys 0..i; `scale` defaults to H ** -0.5.
    Returns [B, T, N, H]."""
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4:
        raise ValueError(f"attention wants q [B, T, N, H] and k, v of one shape [B, S, K, H]; got q {q.shape}, "
                         f"k {k.shape}, v {v.shape}")
    if q.shape[-1] != k.shape[-1] or q.shape[2] % k.shape[2]:
        raise ValueError(f"attention: q heads {q.shape[2]} must be a multiple of the key/value heads {k.shape[2]} "
                         f"and head dims must agree; got q {q.shape}, k {k.shape}")
    scores_shape = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
    if bias is not None:
        if bias.ndim != 4 or any(got not in (1, want) for got, want in zip(bias.shape, scores_shape)):
            raise ValueError(f"attention bias {bias.shape} does not broadcast to the scores [B, N, T, S] "
                             f"{scores_shape}")
        bias = bias.astype(q.dtype)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return KERNELS[resolve(impl)](q, k, v, bias=bias, mask=mask, is_causal=is_causal, scale=scale)


from invideo_jax.models import attention_tpu  # noqa: E402,F401  registers 'tpu_flash' (Pallas TPU flash attention)
from invideo_jax.models import attention_cpu  # noqa: E402,F401  registers 'cpu_blocked' (query-blocked CPU attention)

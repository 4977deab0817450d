"""LoRA (low-rank adaptation) on Dense layers, the way peft applies it: y = x W + b + s * dropout(x) A B.

`LoraDense` is `layers.Dense` (same `kernel` / `bias` names and logical axes, so a model with LoRA loads the same base
weights) plus, when `rank` > 0, `lora_a` (inputs..., r) and `lora_b` (r, outputs...); s = alpha / rank. As in peft, A
starts Kaiming-uniform (a = sqrt(5): bound 1/sqrt(fan_in)) and B at zero, so a fresh adapter leaves the output
unchanged. Which Dense layers get an adapter is decided by the model (a regex over the layer's path, see
`models.llm`); `merge` folds trained adapters into the kernels for inference, and `frozen_base` gives the
`optim.frozen` regex that trains the adapters only.
"""
import re
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from invideo_jax.models import layers
from invideo_jax.models.layers import logical

LORA_PARAMS = ("lora_a", "lora_b")


def kaiming_uniform_a5(key, shape, dtype):
    """torch's `kaiming_uniform_(a=sqrt(5))` on a (fan_in, fan_out) matrix: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class LoraDense(layers.Dense):
    """`layers.Dense` with an optional low-rank update; `rank` 0 is a plain Dense (no LoRA params)."""

    rank: int = 0
    alpha: float = 32.0
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        base = layers.Dense(self.features, self.axes, self.in_dims, self.use_bias, self.kernel_init, self.dtype,
                            self.param_dtype)
        nn.share_scope(self, base)  # the base params live at this module's path: kernel, bias
        y = base(x)
        if not self.rank:
            return y
        in_shape = x.shape[-self.in_dims:]
        fan_in = int(np.prod(in_shape))
        init_a = lambda key, shape, dtype: kaiming_uniform_a5(key, (fan_in, self.rank), dtype).reshape(shape)
        a = self.param("lora_a", logical(init_a, (*self.axes[:self.in_dims], None)), (*in_shape, self.rank),
                       self.param_dtype)
        b = self.param("lora_b", logical(layers.zeros, (None, *self.axes[self.in_dims:])), (self.rank, *self.features),
                       self.param_dtype)
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        h = jnp.tensordot(x.astype(self.dtype), a.astype(self.dtype), axes=self.in_dims)
        return y + jnp.tensordot(h, b.astype(self.dtype), axes=1) * (self.alpha / self.rank)


def fresh_adapters(shapes: dict, seed: int = 0) -> dict:
    """{path: numpy array} for {path: shape} of unscanned `lora_a` / `lora_b` params, initialised as LoraDense does
    (A uniform in +-1/sqrt(fan_in), B zero); for filling the adapters a checkpoint lacks without running init."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, shape in sorted(shapes.items()):
        if path.endswith("lora_b"):
            out[path] = np.zeros(shape, np.float32)
        else:
            bound = 1.0 / np.sqrt(np.prod(shape[:-1]))
            out[path] = rng.uniform(-bound, bound, shape).astype(np.float32)
    return out


def merge(params, alpha: float, rank: int):
    """`params` with every adapter folded into its kernel (kernel + alpha/rank * A B) and the LoRA params removed:
    the params of the same model with rank 0. Works on scanned layers (a leading layer axis on all three)."""
    if not isinstance(params, dict):
        return params
    if not all(name in params for name in ("kernel", *LORA_PARAMS)):
        return {k: merge(v, alpha, rank) for k, v in params.items()}
    kernel, a, b = params["kernel"], params["lora_a"], params["lora_b"]
    stacked = a.ndim + b.ndim - 2 - kernel.ndim  # 1 for scanned layers: A and B both carry the layer axis
    lead = kernel.shape[:stacked]
    a2 = jnp.reshape(a, (*lead, -1, a.shape[-1]))
    b2 = jnp.reshape(b, (*lead, b.shape[stacked], -1))
    delta = jnp.matmul(a2.astype(jnp.float32), b2.astype(jnp.float32)) * (alpha / rank)
    merged = (kernel.astype(jnp.float32) + delta.reshape(kernel.shape)).astype(kernel.dtype)
    return {**{k: v for k, v in params.items() if k not in LORA_PARAMS}, "kernel": merged}


def frozen_base(prefix: str = "") -> str:
    """The `optim.frozen` regex (re.match on '/'-joined paths) of every param below `prefix` that is not a LoRA
    param: those get no updates and no optimiser state."""
    return rf"^{re.escape(prefix)}(?!.*(^|/)({'|'.join(LORA_PARAMS)})$)"

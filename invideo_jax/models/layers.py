"""Transformer building blocks shared by every model: embeddings, attention, MLP, norms, blocks, stacks.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `kv`, `layers`, ...); the rules that map
them to mesh axes live in `invideo_jax.sharding`. Activations are constrained with the names
(`act_batch`, `act_len`, `act_embed`) at block boundaries. Norms and softmax run in float32; matmuls in
`dtype` (the compute dtype); parameters are stored in `param_dtype`.
"""
import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from invideo_jax.models.attention import attention

Dtype = Any
ACT_NAMES = ("act_batch", "act_len", "act_embed")

xavier = nn.initializers.xavier_uniform()
zeros = nn.initializers.zeros
ones = nn.initializers.ones


def logical(init: Callable, names: Sequence[Optional[str]]) -> Callable:
    return nn.with_logical_partitioning(init, tuple(names))


def scaled(init: Callable, factor) -> Callable:
    """`init` times `factor` (a number or a traced scalar), in the initialiser's dtype."""
    def scaled_init(*args):
        value = init(*args)
        return value * jnp.asarray(factor, value.dtype)

    return scaled_init


def unbound_module(cls, kwargs, field: str) -> nn.Module:
    """The unbound `cls` module of the settings `kwargs` (`model.kwargs.<field>`): its attributes are the child's
    settings, defaults included, for a parent or a task to read instead of restating them."""
    try:
        return cls(**dict(kwargs), parent=None)
    except TypeError as e:
        raise ValueError(f"model.kwargs.{field}: {e}") from None


def constrain(x: jax.Array) -> jax.Array:
    """Shards a (batch, length, embed) activation by the logical rules in scope (a no-op without rules)."""
    return nn.with_logical_constraint(x, ACT_NAMES)


# ----------------------------------------------------------------------------------------------------------
# Position tables (numpy, computed once at trace time)
# ----------------------------------------------------------------------------------------------------------


def sincos_1d_interleaved(num_positions: int, dim: int) -> np.ndarray:
    """VideoMAE's fixed table: angle = pos / 10000^(2*(j//2)/dim); sin on even, cos on odd channels."""
    pos = np.arange(num_positions, dtype=np.float64)[:, None]
    j = np.arange(dim)
    angle = pos / np.power(10000.0, 2 * (j // 2) / dim)
    table = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
    return table.astype(np.float32)


def sincos_1d_concat(positions: np.ndarray, dim: int) -> np.ndarray:
    """MAE-style 1-D code: [sin(pos*w_i), cos(pos*w_i)] concatenated, w_i = 1/10000^(i/(dim/2))."""
    assert dim % 2 == 0, dim
    omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.asarray(positions, np.float64).reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_3d(t: int, h: int, w: int, dim: int) -> np.ndarray:
    """InternVideo2's init table (t*h*w, dim): dim/4 temporal channels, then 3*dim/4 spatial (w code, h code)."""
    assert dim % 4 == 0, dim
    dim_t, dim_s = dim // 4, dim // 4 * 3
    grid_w, grid_h = np.meshgrid(np.arange(w), np.arange(h))  # each (h, w); MAE encodes w in the first half
    spatial = np.concatenate([sincos_1d_concat(grid_w, dim_s // 2), sincos_1d_concat(grid_h, dim_s // 2)], axis=1)
    temporal = sincos_1d_concat(np.arange(t), dim_t)
    table = np.concatenate(
        [np.repeat(temporal[:, None], h * w, axis=1), np.repeat(spatial[None], t, axis=0)], axis=-1
    )
    return table.reshape(t * h * w, dim).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Small modules
# ----------------------------------------------------------------------------------------------------------


class Dense(nn.Module):
    """y = x . kernel (+ bias) over the last `in_dims` axes; kernel (inputs..., features...) with logical names.

    The initialiser sees the flattened (fan_in, fan_out) shape, as for a plain Linear layer.
    """

    features: tuple
    axes: tuple
    in_dims: int = 1
    use_bias: bool = True
    kernel_init: Callable = xavier
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        in_shape = x.shape[-self.in_dims:]
        shape = tuple(in_shape) + tuple(self.features)

        def init(key, shape, dtype):
            flat = (int(np.prod(in_shape)), int(np.prod(self.features)))
            return self.kernel_init(key, flat, dtype).reshape(shape)

        kernel = self.param("kernel", logical(init, self.axes), shape, self.param_dtype)
        y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=self.in_dims)
        if self.use_bias:
            bias = self.param("bias", logical(zeros, self.axes[self.in_dims:]), tuple(self.features),
                              self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


def dense(features, axes, *, name, use_bias=True, dtype=jnp.float32, param_dtype=jnp.float32, in_dims=1,
          kernel_init=xavier) -> Dense:
    """A Dense layer; `features` an int or a tuple (e.g. (3, heads, head_dim) for a fused qkv)."""
    features = features if isinstance(features, tuple) else (features,)
    return Dense(features, tuple(axes), in_dims, use_bias, kernel_init, dtype, param_dtype, name=name)


class Norm(nn.Module):
    """LayerNorm (scale, bias) or RMSNorm (scale only) over the last axis, computed in float32.

    use_bias=False: LayerNorm without the bias (CoCa / PaLM).
    """

    kind: str = "layernorm"
    eps: float = 1e-6
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        if self.kind not in ("layernorm", "rmsnorm"):
            raise ValueError(f"unknown norm kind {self.kind!r}; expected 'layernorm' or 'rmsnorm'")
        x = x.astype(jnp.float32)
        width = x.shape[-1]
        if self.kind == "layernorm":
            x = x - x.mean(axis=-1, keepdims=True)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        x = x * self.param("scale", logical(ones, ("norm",)), (width,), self.param_dtype)
        if self.kind == "layernorm" and self.use_bias:
            x = x + self.param("bias", logical(zeros, ("norm",)), (width,), self.param_dtype)
        return x


def activation(name: str) -> Callable:
    table = {
        "gelu": functools.partial(jax.nn.gelu, approximate=False),
        "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
        "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
        "silu": jax.nn.silu,
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(table)}")
    return table[name]


class LayerScale(nn.Module):
    init_value: float = 1e-5
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        gamma = self.param("gamma", logical(nn.initializers.constant(self.init_value), ("norm",)),
                           (x.shape[-1],), self.param_dtype)
        return x * gamma.astype(x.dtype)


def drop_path(module: nn.Module, x, rate, deterministic: bool):
    """Stochastic depth: drops the whole residual branch per example with probability `rate` (None = off)."""
    if deterministic or rate is None:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(module.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class PatchEmbed(nn.Module):
    """Conv3d with kernel = stride = (tubelet, p, p) as one matmul: (B,T,H,W,C) -> (B, T'*H'*W', D), (t,h,w) order."""

    width: int
    patch_size: int
    tubelet_size: int = 1
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, video):
        b, t, h, w, c = video.shape
        k, p = self.tubelet_size, self.patch_size
        if t % k or h % p or w % p:
            raise ValueError(f"video shape {video.shape} is not divisible by tubelet {k} and patch {p}")
        x = video.reshape(b, t // k, k, h // p, p, w // p, p, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
        x = x.reshape(b, (t // k) * (h // p) * (w // p), k, p, p, c)
        proj = dense(self.width, (None, None, None, None, "embed"), name="proj", use_bias=self.use_bias,
                     dtype=self.dtype, param_dtype=self.param_dtype, in_dims=4)
        return proj(x)


class Attention(nn.Module):
    """Multi-head attention (the kernel: `attention.attention`, chosen by `attn_impl`).

    qkv_bias: 'qv' (VideoMAE: q and v biases, k bias zero), 'qkv' (CLIP fused in_proj bias) or 'none'.
    qk_norm: RMSNorm on q and k over the full width (InternVideo2).
    Self-attention (one fused `qkv` projection) when `context` is None; otherwise cross-attention: `q` from x,
    `kv` (one fused projection) from `context`, whose width may differ from x's. With `value` as well, keys come
    from `context` and values from `value` through separate `k` and `v` projections (InternVideo2's attention
    pooling, whose keys and values are normalised differently).
    """

    num_heads: int
    qkv_bias: str = "qv"
    qk_norm: bool = False
    qk_norm_eps: float = 1e-6
    proj_bias: bool = True
    out_features: Optional[int] = None
    attn_impl: Optional[str] = None
    proj_init: Callable = xavier
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context=None, mask=None, is_causal=False, value=None):
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads
        if self.qkv_bias not in ("qv", "qkv", "none"):
            raise ValueError(f"qkv_bias must be 'qv', 'qkv' or 'none', got {self.qkv_bias!r}")
        kw = dict(use_bias=self.qkv_bias == "qkv", dtype=self.dtype, param_dtype=self.param_dtype)
        if value is not None and context is None:
            raise ValueError("Attention: `value` needs `context` (the keys' input)")
        if context is None:
            qkv = dense((3, self.num_heads, head_dim), ("embed", None, "heads", "kv"), name="qkv", **kw)(x)
            q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        elif value is not None:
            q, k, v = (dense((self.num_heads, head_dim), ("embed", "heads", "kv"), name=name, **kw)(inputs)
                       for name, inputs in (("q", x), ("k", context), ("v", value)))
        else:
            q = dense((self.num_heads, head_dim), ("embed", "heads", "kv"), name="q", **kw)(x)
            kv = dense((2, self.num_heads, head_dim), ("embed", None, "heads", "kv"), name="kv", **kw)(context)
            k, v = kv[..., 0, :, :], kv[..., 1, :, :]
        if self.qkv_bias == "qv":
            bias_init = logical(zeros, ("heads", "kv"))
            q = q + self.param("q_bias", bias_init, (self.num_heads, head_dim), self.param_dtype).astype(q.dtype)
            v = v + self.param("v_bias", bias_init, (self.num_heads, head_dim), self.param_dtype).astype(v.dtype)
        if self.qk_norm:
            q = self._full_width_norm(q, "q_norm")
            k = self._full_width_norm(k, "k_norm")
        out = attention(q, k, v, mask=mask, is_causal=is_causal, scale=head_dim ** -0.5, impl=self.attn_impl)
        return dense(self.out_features or width, ("heads", "kv", "embed"), name="proj", use_bias=self.proj_bias,
                     dtype=self.dtype, param_dtype=self.param_dtype, in_dims=2, kernel_init=self.proj_init)(out)

    def _full_width_norm(self, t, name):
        shape = t.shape
        flat = Norm("rmsnorm", self.qk_norm_eps, self.param_dtype, name=name)(t.reshape(shape[:-2] + (-1,)))
        return flat.reshape(shape).astype(t.dtype)


class Mlp(nn.Module):
    """fc1 -> activation -> dropout -> fc2."""

    hidden: int
    act: str = "gelu"
    dropout: float = 0.0
    out_init: Callable = xavier
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True, bias=None):
        width = x.shape[-1]
        x = dense(self.hidden, ("embed", "mlp"), name="fc1", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        x = activation(self.act)(x)
        x = nn.Dropout(self.dropout, deterministic=deterministic)(x)
        return dense(width, ("mlp", "embed"), name="fc2", dtype=self.dtype, param_dtype=self.param_dtype,
                     kernel_init=self.out_init)(x)


# ----------------------------------------------------------------------------------------------------------
# Pre-norm transformer block and the layer stack (python loop or scan, with remat)
# ----------------------------------------------------------------------------------------------------------


class Block(nn.Module):
    """x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))), each branch with drop-path.

    `init_scale` multiplies the initial output kernels (attn/proj, mlp/fc2); see `Transformer.depth_scaled_init`.
    """

    num_heads: int
    mlp_dim: int
    qkv_bias: str = "qv"
    qk_norm: bool = False
    norm: str = "layernorm"
    norm_eps: float = 1e-6
    act: str = "gelu"
    layer_scale: float = 0.0  # 0 = no LayerScale
    is_causal: bool = False  # each token attends to itself and earlier ones (text decoders)
    attn_impl: Optional[str] = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, rate, deterministic: bool, init_scale=1.0):
        x = x + self._attention(x, rate, deterministic, init_scale)
        x = x + self._mlp(x, rate, deterministic, init_scale)
        return constrain(x.astype(self.dtype))

    def _attention(self, x, rate, deterministic, init_scale=1.0):
        y = Norm(self.norm, self.norm_eps, self.param_dtype, name="norm1")(x)
        y = Attention(self.num_heads, self.qkv_bias, self.qk_norm, self.norm_eps, attn_impl=self.attn_impl,
                      proj_init=scaled(xavier, init_scale), name="attn", dtype=self.dtype,
                      param_dtype=self.param_dtype)(y, is_causal=self.is_causal)
        return self._branch(y, rate, deterministic, "ls1")

    def _mlp(self, x, rate, deterministic, init_scale=1.0):
        y = Norm(self.norm, self.norm_eps, self.param_dtype, name="norm2")(x)
        y = Mlp(self.mlp_dim, self.act, out_init=scaled(xavier, init_scale), name="mlp", dtype=self.dtype,
                param_dtype=self.param_dtype)(y)
        return self._branch(y, rate, deterministic, "ls2")

    def _branch(self, y, rate, deterministic, ls_name):
        if self.layer_scale:
            y = LayerScale(self.layer_scale, self.param_dtype, name=ls_name)(y)
        return drop_path(self, y, rate, deterministic)


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_all": jax.checkpoint_policies.checkpoint_dots,
}


class Transformer(nn.Module):
    """`depth` Blocks; unscanned params are `blocks_{i}`, scanned params are `blocks` with a leading `layers` axis.

    `block_cls` may be a Block subclass with the same call signature (its `batch_stats` are scanned like params).

    Returns the final tokens and, if `return_layers` is set, the outputs of those layer indices (stacked); scanned,
    the stack carries k slots for them, not every layer's output.
    `bias` (an attention bias all layers share, e.g. BEATs' relative position bias), when given, is every block's
    fourth argument.
    `depth_scaled_init`: block i (0-based) starts with its output kernels divided by sqrt(2 (i + 1)), InternVideo2's
    `fix_init_weight`; each block gets the factor as its `init_scale` argument, so every way of initialising (`init`,
    `init_with_output`, `lazy_init`, a parent module) applies it.
    """

    depth: int
    block: dict  # Block keyword arguments
    drop_path: float = 0.0  # maximum rate; linear in depth from 0
    scan: bool = False
    remat: str = "none"
    return_layers: tuple = ()
    block_cls: Any = Block
    depth_scaled_init: bool = False

    @nn.compact
    def __call__(self, x, deterministic: bool = True, bias=None):
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"unknown remat policy {self.remat!r}; expected one of {sorted(REMAT_POLICIES)}")
        rates = np.linspace(0.0, self.drop_path, self.depth) if self.drop_path else None
        block_cls = self.block_cls
        if self.remat != "none":
            block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan,
                                 static_argnums=(3,))
        init_scales = 1.0 / np.sqrt(2.0 * np.arange(1, self.depth + 1)) if self.depth_scaled_init else None
        keep = self._keep_matrix()
        extra = () if bias is None else (bias,)
        if not self.scan:
            hidden = []
            for i in range(self.depth):
                rate = None if rates is None else float(rates[i])
                scale = {} if init_scales is None else {"init_scale": float(init_scales[i])}
                x = block_cls(name=f"blocks_{i}", **self.block)(x, rate, deterministic, *extra, **scale)
                hidden.append(x)
            return x, self._pick(hidden)

        def body(module, carry, xs, extra):
            x, slots = carry
            rate, init_scale, keep_here = xs
            scale = {} if init_scale is None else {"init_scale": init_scale}
            x = module(x, rate, deterministic, *extra, **scale)
            if keep_here is not None:  # the slots of the returned layers this layer fills
                slots = jnp.where(keep_here.reshape((-1,) + (1,) * x.ndim), x[None], slots)
            return (x, slots), None

        scanned = nn.scan(
            body, variable_axes={"params": 0, "batch_stats": 0}, split_rngs={"params": True, "dropout": True},
            in_axes=(0, nn.broadcast), length=self.depth, metadata_params={nn.PARTITION_NAME: "layers"},
        )
        xs = (None if rates is None else jnp.asarray(rates, jnp.float32),
              None if init_scales is None else jnp.asarray(init_scales, jnp.float32),
              None if keep is None else jnp.asarray(keep))
        slots = None
        if keep is not None:
            slots = nn.with_logical_constraint(jnp.zeros((len(self.return_layers),) + x.shape, x.dtype),
                                               (None,) + ACT_NAMES)
        (x, slots), _ = scanned(block_cls(name="blocks", **self.block), (x, slots), xs, extra)
        return x, slots

    def _keep_matrix(self):
        """(depth, k) bool: layer l's output goes to slot j (return_layers[j], negative from the end); None if k = 0."""
        if not self.return_layers:
            return None
        for layer in self.return_layers:
            if not -self.depth <= layer < self.depth:
                raise ValueError(f"return_layers {tuple(self.return_layers)}: layer {layer} is outside a stack of "
                                 f"depth {self.depth}")
        wanted = np.asarray(self.return_layers) % self.depth
        return np.arange(self.depth)[:, None] == wanted[None, :]

    def _pick(self, hidden):
        return jnp.stack([hidden[i] for i in self.return_layers]) if self.return_layers else None

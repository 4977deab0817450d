"""Checkpoint conversion machinery: a table of rules maps PyTorch state-dict keys to our param paths, both ways.

A `Rule` pairs one of our param paths ('/'-joined, `{i}` = layer index) with one or more PyTorch keys and a layout
transform. Conversion is driven by the target model's expected param shapes: every expected param must be found
with the right shape and every checkpoint key must be used, otherwise one `ConversionError` lists all problems.
Rules are written for the unscanned layout (`blocks_{i}`); scanned targets are stacked afterwards. The target tree
may be a params tree or a variables dict with collections (`params/...`, `batch_stats/...` paths).
"""
import dataclasses
import math
import os
import re
from typing import Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

WRAPPER_KEYS = ("model", "module", "state_dict", "model_state")
KINDS = ("copy", "vector", "linear", "conv1d", "conv3d", "inflated")
MAX_LISTED = 50


class ConversionError(ValueError):
    """A checkpoint does not fit the target model."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """ours <-> theirs (several keys = concatenated along the PyTorch output axis) with a layout `kind`.

    copy: same shape; vector: flattened to 1-D in PyTorch; linear: PyTorch (out, in) <-> our kernel whose first
    `n_in` axes are inputs; conv1d: PyTorch (O, I, K) <-> our (K, I, O); conv3d: PyTorch (O, I, T, H, W) <-> our
    (T, H, W, I, O) (depthwise convs: I = 1);
    inflated: a PyTorch 2-D kernel (O, I, H, W) <-> the centre time slice of our (T, H, W, I, O) (loading fills the
    other slices with zeros, saving keeps the centre slice only).
    unit_axes: PyTorch axes of size 1 that our layout lacks (a 1x1x1 Conv3d as our Dense: linear with (2, 3, 4)).
    part (start, stop, num): ours is rows [start/num, stop/num) of the PyTorch tensor (one fused PyTorch projection
    split into several of our params).
    """

    ours: str
    theirs: tuple
    kind: str = "copy"
    n_in: int = 1
    unit_axes: tuple = ()
    part: tuple = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown rule kind {self.kind!r}; expected one of {KINDS}")

    def match(self, path: str):
        """The theirs keys for one of our concrete paths, or None."""
        pattern = re.escape(self.ours).replace(re.escape("{i}"), r"(\d+)")
        found = re.fullmatch(pattern, path)
        if found is None:
            return None
        index = found.group(1) if found.groups() else ""
        return tuple(key.replace("{i}", index) for key in self.theirs)

    def to_theirs(self, x) -> list:
        """Our array (numpy or traced) -> the PyTorch arrays (each only its `part` rows)."""
        if self.kind == "vector":
            x = x.reshape(-1)
        elif self.kind == "linear":
            x = x.reshape(math.prod(x.shape[: self.n_in]), -1).T
        elif self.kind == "conv1d":
            x = x.transpose(2, 1, 0)
        elif self.kind == "conv3d":
            x = x.transpose(4, 3, 0, 1, 2)
        elif self.kind == "inflated":
            x = x.transpose(4, 3, 0, 1, 2)[:, :, x.shape[0] // 2]
        shape = list(x.shape)
        for axis in sorted(self.unit_axes):
            shape.insert(axis, 1)
        x = x.reshape(shape)
        if len(self.theirs) == 1:
            return [x]
        size = x.shape[0] // len(self.theirs)
        return [x[k * size:(k + 1) * size] for k in range(len(self.theirs))]

    def full_shape(self, shape) -> tuple:
        """The PyTorch tensor's shape, given the shape of the rows this rule owns."""
        if not self.part:
            return tuple(shape)
        start, stop, num = self.part
        return (shape[0] * num // (stop - start),) + tuple(shape[1:])

    def to_ours(self, parts: Sequence[np.ndarray], shape) -> np.ndarray:
        x = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if self.part:
            start, stop, num = self.part
            rows = x.shape[0] // num
            x = x[start * rows:stop * rows]
        x = np.squeeze(x, self.unit_axes)
        if self.kind == "linear":
            x = x.T
        elif self.kind == "conv1d":
            x = x.transpose(2, 1, 0)
        elif self.kind == "conv3d":
            x = x.transpose(2, 3, 4, 1, 0)
        elif self.kind == "inflated":
            full = np.zeros(x.shape[:2] + (shape[0],) + x.shape[2:], x.dtype)
            full[:, :, shape[0] // 2] = x
            x = full.transpose(2, 3, 4, 1, 0)
        return x.reshape(shape)


def rule(ours: str, theirs, kind: str = "copy", n_in: int = 1, unit_axes: tuple = (), part: tuple = ()) -> Rule:
    return Rule(ours, (theirs,) if isinstance(theirs, str) else tuple(theirs), kind, n_in, unit_axes, part)


def linear(ours: str, theirs, n_in: int = 1, bias: bool = True, unit_axes: tuple = ()) -> list:
    """A torch nn.Linear (several names = fused along outputs) <-> our `kernel` (+ `bias`)."""
    names = (theirs,) if isinstance(theirs, str) else tuple(theirs)
    rules = [rule(f"{ours}/kernel", [f"{n}.weight" for n in names], "linear", n_in, unit_axes)]
    if bias:
        rules.append(rule(f"{ours}/bias", [f"{n}.bias" for n in names], "vector"))
    return rules


def norm(ours: str, theirs: str) -> list:
    return [rule(f"{ours}/scale", f"{theirs}.weight", "vector"), rule(f"{ours}/bias", f"{theirs}.bias", "vector")]


def conv3d(ours: str, theirs: str) -> list:
    return [rule(f"{ours}/kernel", f"{theirs}.weight", "conv3d"), rule(f"{ours}/bias", f"{theirs}.bias", "vector")]


def scoped(rules: Sequence[Rule], ours_prefix: str, theirs_prefix: str) -> list:
    return [dataclasses.replace(r, ours=ours_prefix + r.ours, theirs=tuple(theirs_prefix + t for t in r.theirs))
            for r in rules]


@dataclasses.dataclass(frozen=True)
class Format:
    """A checkpoint family: its rules, regex renames of legacy key names, and key prefixes to strip.

    buffers: regexes of checkpoint keys that are not parameters (ignored on load, listed as dropped).
    at_init: regexes of our paths the family does not hold: loading leaves them at their initial values (listed in
    the report), saving omits them.
    """

    rules: tuple
    aliases: tuple = ()
    prefixes: tuple = ("module.",)
    buffers: tuple = ()
    at_init: tuple = ()


@dataclasses.dataclass
class Report:
    """Checkpoint tensors read, parameters converted, checkpoint keys dropped, our subtrees left at init."""

    num_tensors: int
    num_params: int
    dropped: list
    at_init: list = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        lines = [f"converted {self.num_tensors} tensors, {self.num_params:,} parameters"]
        for items, what in ((self.dropped, "dropped {} checkpoint keys"),
                            (self.at_init, "not in the checkpoint, left at init ({} subtrees)")):
            if items:
                listed = ", ".join(items[:MAX_LISTED]) + (", ..." if len(items) > MAX_LISTED else "")
                lines.append(f"{what.format(len(items))}: {listed}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Reading checkpoints
# ----------------------------------------------------------------------------------------------------------


def to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; numpy has no bfloat16
        value = value.detach().cpu()
        return (value.float() if str(value.dtype) == "torch.bfloat16" else value).numpy()
    return np.asarray(value)


def unwrap(checkpoint: Mapping) -> dict:
    """The flat {name: tensor} inside training wrappers such as {'model': ...} or {'module': ...}."""
    while isinstance(checkpoint, Mapping):
        inner = next((checkpoint[k] for k in WRAPPER_KEYS if isinstance(checkpoint.get(k), Mapping)), None)
        if inner is None:
            return dict(checkpoint)
        checkpoint = inner
    raise ConversionError(f"expected a state dict (a mapping of names to tensors), got {type(checkpoint).__name__}")


def load_file(path: str) -> dict:
    """{name: tensor} from a .safetensors file, or whatever torch.save wrote to a .pth/.bin/.pt file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        import safetensors.torch
        return safetensors.torch.load_file(path)
    import torch
    return torch.load(path, map_location="cpu", weights_only=True)


def normalize_keys(state: Mapping, fmt: Format) -> dict:
    """Strip wrapper prefixes and rename legacy keys; values become numpy arrays."""
    out = {}
    for key, value in unwrap(state).items():
        for prefix in fmt.prefixes:
            key = key.removeprefix(prefix)
        for pattern, replacement in fmt.aliases:
            key = re.sub(pattern, replacement, key)
        out[key] = to_numpy(value)
    return out


# ----------------------------------------------------------------------------------------------------------
# Param trees
# ----------------------------------------------------------------------------------------------------------


def abstract_variables(model: nn.Module, *inputs, **kw_inputs) -> dict:
    """The unboxed {collection: {'...': ShapeDtypeStruct}} variables `model.init` would create from `inputs` (arrays or
    ShapeDtypeStructs), without allocating."""
    init = lambda *args, **kwargs: model.init(jax.random.PRNGKey(0), *args, **kwargs)
    return nn.meta.unbox(jax.eval_shape(init, *inputs, **kw_inputs))


def abstract_params(model: nn.Module, *inputs) -> dict:
    """The unboxed {'...': ShapeDtypeStruct} params `model.init` would create, without allocating them."""
    return abstract_variables(model, *inputs)["params"]


def flatten(tree) -> dict:
    return traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: Mapping) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def scan_to_loop(tree):
    """Every scanned `blocks` subtree (leading layer axis) -> `blocks_0`, `blocks_1`, ...; other nodes unchanged."""
    if not isinstance(tree, Mapping):
        return tree
    out = {}
    for key, value in tree.items():
        if key == "blocks":
            depth = jax.tree.leaves(value)[0].shape[0]
            out.update({f"blocks_{i}": jax.tree.map(lambda x, i=i: x[i], value) for i in range(depth)})
        else:
            out[key] = scan_to_loop(value)
    return out


def loop_to_scan(tree):
    """Every run of `blocks_0..blocks_{n-1}` -> one `blocks` subtree stacked along a new leading layer axis."""
    if not isinstance(tree, Mapping):
        return tree
    layers = sorted((int(k.removeprefix("blocks_")), v) for k, v in tree.items() if re.fullmatch(r"blocks_\d+", k))
    out = {k: loop_to_scan(v) for k, v in tree.items() if not re.fullmatch(r"blocks_\d+", k)}
    if layers:
        if [i for i, _ in layers] != list(range(len(layers))):
            raise ValueError(f"layer indices {[i for i, _ in layers]} are not 0..{len(layers) - 1}")
        out["blocks"] = jax.tree.map(lambda *xs: np.stack(xs), *[v for _, v in layers])
    return out


def is_scanned(tree) -> bool:
    return any("blocks" in path.split("/") for path in flatten(tree))


# ----------------------------------------------------------------------------------------------------------
# Conversion, both ways
# ----------------------------------------------------------------------------------------------------------


def find_rule(rules: Sequence[Rule], path: str):
    for r in rules:
        theirs = r.match(path)
        if theirs is not None:
            return r, theirs
    return None, None


def convert(state: Mapping, fmt: Format, expected, drop: Sequence[str] = (), initial: Optional[Callable] = None):
    """PyTorch/numpy state dict -> (a tree shaped like `expected`, Report). `drop`: regexes of keys to ignore;
    `initial()`: the target's initial values, read only for the params `fmt.at_init` leaves there."""
    state = normalize_keys(state, fmt)
    wanted = flatten(jax.eval_shape(scan_to_loop, expected))
    missing, misshaped, used, plan, at_init = [], [], set(), {}, {}
    for path, spec in wanted.items():
        found = _search(path, fmt.at_init)
        if found:
            at_init[path] = path[:found.end()]  # reported by subtree
            continue
        r, theirs = find_rule(fmt.rules, path)
        if r is None:
            missing.append(f"{path} (no conversion rule for this param)")
            continue
        shapes = [r.full_shape(p.shape)
                  for p in jax.eval_shape(r.to_theirs, jax.ShapeDtypeStruct(spec.shape, spec.dtype))]
        for key, shape in zip(theirs, shapes):
            if key not in state:
                missing.append(f"{key} {shape} (for {path})")
            elif state[key].shape != shape:
                misshaped.append(f"{key}: checkpoint {state[key].shape}, model expects {shape} (for {path})")
        used.update(theirs)
        plan[path] = (r, theirs, spec)
    leftover = sorted(set(state) - used)
    dropped = [k for k in leftover if _search(k, (*drop, *fmt.buffers))]
    unexpected = [f"{k} {state[k].shape}" for k in leftover if k not in dropped]
    if missing or unexpected or misshaped:
        raise ConversionError(_problems(missing, unexpected, misshaped))
    flat = {path: r.to_ours([state[k] for k in theirs], spec.shape).astype(spec.dtype, copy=False)
            for path, (r, theirs, spec) in plan.items()}
    if at_init:
        if initial is None:
            raise ValueError(f"initial values are needed for the params this format does not hold: {list(at_init)}")
        init = flatten(scan_to_loop(initial()))
        flat.update((path, np.asarray(init[path])) for path in at_init)
    tree = unflatten(flat)
    if is_scanned(expected):
        tree = loop_to_scan(tree)
    num_params = sum(int(np.prod(s.shape)) for path, s in wanted.items() if path in plan)
    return tree, Report(len(used), num_params, dropped, sorted(set(at_init.values())))


def export(params, fmt: Format) -> dict:
    """Our tree (scanned or not) -> a PyTorch-layout {name: numpy array} state dict, the inverse of `convert`.

    Params matching `fmt.at_init` are omitted; rules with a `part` fill their rows of a shared key.
    """
    pieces = {}
    for path, value in flatten(scan_to_loop(params)).items():
        if _search(path, fmt.at_init):
            continue
        r, theirs = find_rule(fmt.rules, path)
        if r is None:
            raise ConversionError(f"no conversion rule for param {path}")
        for key, piece in zip(theirs, r.to_theirs(np.asarray(value))):
            pieces.setdefault(key, {})[r.part[0] if r.part else 0] = piece
    out = {}
    for key, rows in pieces.items():
        parts = [rows[start] for start in sorted(rows)]
        out[key] = np.asarray(np.concatenate(parts) if len(parts) > 1 else parts[0], order="C")
    return out


def _search(name: str, patterns):
    """The first match of any regex in `patterns` in `name`, or None."""
    return next(filter(None, (re.search(p, name) for p in patterns)), None)


def _problems(missing, unexpected, misshaped) -> str:
    lines = ["checkpoint does not match the model:"]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped)):
        if items:
            lines.append(f"  {len(items)} {title}:")
            lines += [f"    {item}" for item in items[:MAX_LISTED]]
            if len(items) > MAX_LISTED:
                lines.append(f"    ... and {len(items) - MAX_LISTED} more")
    return "\n".join(lines)


def pick_format(formats: Mapping[str, "Format"], fmt: str, family: str) -> "Format":
    if fmt not in formats:
        raise ValueError(f"unknown {family} checkpoint format {fmt!r}; expected one of {sorted(formats)}")
    return formats[fmt]

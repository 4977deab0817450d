"""Checkpoint conversion machinery: a table of rules maps PyTorch state-dict keys to our param paths, both ways.

A `Rule` pairs one of our param paths ('/'-joined, `{i}` = layer index) with one or more PyTorch keys and a layout
transform. Conversion is driven by the target model's expected param shapes: every expected param must be found
with the right shape and every checkpoint key must be used, otherwise one `ConversionError` lists all problems.
Rules are written for the unscanned layout (`blocks_{i}`); scanned targets are stacked afterwards.
"""
import dataclasses
import math
import os
import re
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

WRAPPER_KEYS = ("model", "module", "state_dict")
KINDS = ("copy", "vector", "linear", "conv3d")
MAX_LISTED = 50


class ConversionError(ValueError):
    """A checkpoint does not fit the target model."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """ours <-> theirs (several keys = concatenated along the PyTorch output axis) with a layout `kind`.

    copy: same shape; vector: flattened to 1-D in PyTorch; linear: PyTorch (out, in) <-> our kernel whose first
    `n_in` axes are inputs; conv3d: PyTorch (O, I, T, H, W) <-> our (T, H, W, I, O).
    """

    ours: str
    theirs: tuple
    kind: str = "copy"
    n_in: int = 1

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
        if self.kind == "vector":
            x = x.reshape(-1)
        elif self.kind == "linear":
            x = x.reshape(math.prod(x.shape[: self.n_in]), -1).T
        elif self.kind == "conv3d":
            x = x.transpose(4, 3, 0, 1, 2)
        size = x.shape[0] // len(self.theirs)
        return [x[k * size:(k + 1) * size] for k in range(len(self.theirs))]

    def to_ours(self, parts: Sequence[np.ndarray], shape) -> np.ndarray:
        x = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if self.kind == "linear":
            x = x.T
        elif self.kind == "conv3d":
            x = x.transpose(2, 3, 4, 1, 0)
        return x.reshape(shape)


def rule(ours: str, theirs, kind: str = "copy", n_in: int = 1) -> Rule:
    return Rule(ours, (theirs,) if isinstance(theirs, str) else tuple(theirs), kind, n_in)


def linear(ours: str, theirs, n_in: int = 1, bias: bool = True) -> list:
    """A torch nn.Linear (several names = fused along outputs) <-> our `kernel` (+ `bias`)."""
    names = (theirs,) if isinstance(theirs, str) else tuple(theirs)
    rules = [rule(f"{ours}/kernel", [f"{n}.weight" for n in names], "linear", n_in)]
    if bias:
        rules.append(rule(f"{ours}/bias", [f"{n}.bias" for n in names], "vector"))
    return rules


def norm(ours: str, theirs: str) -> list:
    return [rule(f"{ours}/scale", f"{theirs}.weight", "vector"), rule(f"{ours}/bias", f"{theirs}.bias", "vector")]


def conv3d(ours: str, theirs: str) -> list:
    return [rule(f"{ours}/kernel", f"{theirs}.weight", "conv3d"), rule(f"{ours}/bias", f"{theirs}.bias", "vector")]


def scoped(rules: Sequence[Rule], ours_prefix: str, theirs_prefix: str) -> list:
    return [Rule(ours_prefix + r.ours, tuple(theirs_prefix + t for t in r.theirs), r.kind, r.n_in) for r in rules]


@dataclasses.dataclass(frozen=True)
class Format:
    """A checkpoint family: its rules, regex renames of legacy key names, and key prefixes to strip."""

    rules: tuple
    aliases: tuple = ()
    prefixes: tuple = ("module.",)


@dataclasses.dataclass
class Report:
    num_tensors: int
    num_params: int
    dropped: list

    def summary(self) -> str:
        lines = [f"converted {self.num_tensors} tensors, {self.num_params:,} parameters"]
        if self.dropped:
            listed = ", ".join(self.dropped[:MAX_LISTED]) + (", ..." if len(self.dropped) > MAX_LISTED else "")
            lines.append(f"dropped {len(self.dropped)} checkpoint keys: {listed}")
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


def abstract_params(model: nn.Module, *inputs) -> dict:
    """The unboxed {'...': ShapeDtypeStruct} params `model.init` would create, without allocating them."""
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs))
    return nn.meta.unbox(variables)["params"]


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


def convert(state: Mapping, fmt: Format, expected, drop: Sequence[str] = ()):
    """PyTorch/numpy state dict -> (params shaped like `expected`, Report). `drop`: regexes of keys to ignore."""
    state = normalize_keys(state, fmt)
    wanted = flatten(jax.eval_shape(scan_to_loop, expected))
    missing, misshaped, used, plan = [], [], set(), {}
    for path, spec in wanted.items():
        r, theirs = find_rule(fmt.rules, path)
        if r is None:
            missing.append(f"{path} (no conversion rule for this param)")
            continue
        shapes = [p.shape for p in jax.eval_shape(r.to_theirs, jax.ShapeDtypeStruct(spec.shape, spec.dtype))]
        for key, shape in zip(theirs, shapes):
            if key not in state:
                missing.append(f"{key} {shape} (for {path})")
            elif state[key].shape != shape:
                misshaped.append(f"{key}: checkpoint {state[key].shape}, model expects {shape} (for {path})")
        used.update(theirs)
        plan[path] = (r, theirs, spec)
    leftover = sorted(set(state) - used)
    dropped = [k for k in leftover if any(re.search(p, k) for p in drop)]
    unexpected = [f"{k} {state[k].shape}" for k in leftover if k not in dropped]
    if missing or unexpected or misshaped:
        raise ConversionError(_problems(missing, unexpected, misshaped))
    params = unflatten({path: r.to_ours([state[k] for k in theirs], spec.shape).astype(spec.dtype, copy=False)
                        for path, (r, theirs, spec) in plan.items()})
    if is_scanned(expected):
        params = loop_to_scan(params)
    report = Report(len(used), sum(int(np.prod(s.shape)) for s in wanted.values()), dropped)
    return params, report


def export(params, fmt: Format) -> dict:
    """Our params (scanned or not) -> a PyTorch-layout {name: numpy array} state dict, the inverse of `convert`."""
    out = {}
    for path, value in flatten(scan_to_loop(params)).items():
        r, theirs = find_rule(fmt.rules, path)
        if r is None:
            raise ConversionError(f"no conversion rule for param {path}")
        out.update((k, np.ascontiguousarray(v)) for k, v in zip(theirs, r.to_theirs(np.asarray(value))))
    return out


def _problems(missing, unexpected, misshaped) -> str:
    lines = ["checkpoint does not match the model:"]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped)):
        if items:
            lines.append(f"  {len(items)} {title}:")
            lines += [f"    {item}" for item in items[:MAX_LISTED]]
            if len(items) > MAX_LISTED:
                lines.append(f"    ... and {len(items) - MAX_LISTED} more")
    return "\n".join(lines)


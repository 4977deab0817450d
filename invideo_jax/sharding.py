"""Meshes (data, fsdp, tensor), logical-axis rules, and shardings for the train state and batches.

One code path for every scale: a 1-device mesh on a laptop, FSDP over a pod, data parallel across TPU slices.
Parameters carry logical names (see `invideo_jax.models.layers`); a rules table maps them to mesh axes.
"""
import math

import flax.linen as nn
import jax
from absl import logging
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
# Per-axis number of slices (granules) an axis spans over the data-centre network; see make_mesh.
DCN_FIELDS = tuple(f"dcn_{axis}" for axis in MESH_AXES)

_ACTIVATIONS = [("act_batch", BATCH_AXES), ("act_len", None), ("act_embed", None)]
_UNSHARDED = [("kv", None), ("norm", None), ("layers", None), ("classes", None), ("vocab", None)]
RULES = {
    # Pure data parallelism: parameters replicated.
    "dp": _ACTIVATIONS + [("embed", None), ("mlp", None), ("heads", None), ("kv_heads", None)] + _UNSHARDED,
    # FSDP (ZeRO-3 style): parameters and optimiser state sharded over `fsdp` along their embed axis.
    "fsdp": _ACTIVATIONS + [("embed", "fsdp"), ("mlp", None), ("heads", None), ("kv_heads", None)] + _UNSHARDED,
    # FSDP + tensor parallelism (Megatron split of MLP hidden and attention heads; the LLM's key/value heads too).
    "fsdp_tp": _ACTIVATIONS + [("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("kv_heads", "tensor")]
    + _UNSHARDED,
}


def rules(name: str):
    if name not in RULES:
        raise ValueError(f"unknown sharding rules {name!r}; expected one of {sorted(RULES)}")
    return tuple(RULES[name])


def mesh_shape(sizes: dict, num_devices: int, where: str = "") -> tuple:
    """Sizes per axis with at most one -1 ("the rest"); fully explicit sizes may use fewer devices."""
    shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
    if shape.count(-1) > 1:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))}: at most one axis may be -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} does not divide {num_devices} devices{where}")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) > num_devices:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, have {num_devices}"
                         f"{where}")
    return tuple(shape)


def dcn_shape(sizes: dict) -> tuple:
    """Between-slice (DCN) sizes per axis from the `dcn_<axis>` fields (1 where absent)."""
    unknown = sorted(set(sizes) - set(MESH_AXES) - set(DCN_FIELDS))
    if unknown:
        raise ValueError(f"unknown mesh fields {unknown}; expected some of {MESH_AXES + DCN_FIELDS}")
    shape = tuple(sizes.get(field, 1) for field in DCN_FIELDS)
    for field, size in zip(DCN_FIELDS, shape):
        if not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"mesh.{field} must be a positive integer (1: not split between slices), got {size!r}")
    return tuple(int(s) for s in shape)


def granules(devices) -> tuple:
    """(kind, device groups): devices by `slice_index` (TPU slices) or, where devices have none (CPU), by process."""
    key = "slice_index" if hasattr(devices[0], "slice_index") else "process_index"
    groups = {}
    for device in devices:
        groups.setdefault(getattr(device, key), []).append(device)
    return key.removesuffix("_index"), [groups[k] for k in sorted(groups)]


def make_mesh(sizes: dict, devices=None) -> jax.sharding.Mesh:
    """The (data, fsdp, tensor) mesh: axis size = ICI size (`data`, ...) x DCN size (`dcn_data`, ...).

    With every DCN size 1 this is one slice's mesh (`jax.make_mesh`). Otherwise the devices are grouped into
    granules (slices, or processes where devices have no slice_index) and the DCN sizes must multiply to their
    number; ICI sizes lay out one granule's devices (-1: the rest of them). Granules form the major part of each
    axis, so only collectives over a dcn_* factor cross the slow network.
    """
    devices = jax.devices() if devices is None else list(devices)
    sizes = dict(sizes)
    dcn = dcn_shape(sizes)
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if math.prod(dcn) == 1:
        shape = mesh_shape(sizes, len(devices))
        if math.prod(shape) < len(devices):
            logging.warning("mesh %s uses %d of %d devices", shape, math.prod(shape), len(devices))
            devices = devices[:math.prod(shape)]
        kind, groups = granules(devices)
        if kind == "slice" and len(groups) > 1:
            raise ValueError(f"the mesh's devices span {len(groups)} slices: split an axis between them with "
                             f"mesh.dcn_<axis> (e.g. --config.mesh.dcn_data={len(groups)})")
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
    kind, groups = granules(devices)
    dcn_sizes = " x ".join(f"mesh.{f}={n}" for f, n in zip(DCN_FIELDS, dcn) if n > 1)
    if len(groups) != math.prod(dcn):
        raise ValueError(f"{dcn_sizes} needs {math.prod(dcn)} granules; the devices form {len(groups)} "
                         f"(grouped by {kind})")
    per_granule = sorted({len(group) for group in groups})
    if len(per_granule) > 1:
        raise ValueError(f"{dcn_sizes}: the granules (by {kind}) hold unequal numbers of devices {per_granule}")
    shape = mesh_shape(sizes, per_granule[0], where=f" per {kind}")
    if math.prod(shape) != per_granule[0]:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} uses {math.prod(shape)} of the {per_granule[0]} "
                         f"devices per {kind}; with {dcn_sizes} it must use all of them (set one axis to -1)")
    # Splitting a physical torus axis is only tried where no unsplit layout exists (jax.make_mesh does so on v5e).
    grid = mesh_utils.create_hybrid_device_mesh(shape, dcn, devices, process_is_granule=kind == "process",
                                                allow_split_physical_axes=True)
    return jax.sharding.Mesh(grid, MESH_AXES, axis_types=axis_types)


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def strip_boxes(tree):
    """The values of logically-annotated leaves, without applying sharding constraints (for abstract trees)."""
    return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.meta.AxisMetadata) else x,
                        tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def logical_shardings(boxed_tree, mesh, rule_table):
    """Shardings for a tree of (possibly) logically-annotated leaves; unannotated leaves are replicated."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rule_table)


def opt_state_shardings(tx, abstract_params, param_shardings):
    """Optimiser-state shardings: a leaf ending with a parameter's path and shape (Adam mu, nu) shares its sharding."""
    # Not left to the compiler: zeros_like(param) does not depend on the parameter, so XLA replicated the moments.
    by_path = {path: (a.shape, s) for (path, a), s in zip(jax.tree_util.tree_leaves_with_path(abstract_params),
                                                           jax.tree.leaves(param_shardings))}
    repl = replicated(jax.tree.leaves(param_shardings)[0].mesh)

    def pick(path, leaf):
        for start in range(len(path)):
            shape, param_sharding = by_path.get(path[start:], (None, None))
            if shape == leaf.shape:
                return param_sharding
        return repl

    return jax.tree_util.tree_map_with_path(pick, jax.eval_shape(tx.init, abstract_params))


def local_batch_size(global_batch: int, mesh) -> int:
    """This host's share of the global batch; the batch must split evenly over the batch axes."""
    shards = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
    if global_batch % shards:
        raise ValueError(f"batch_size {global_batch} is not divisible by the {shards} batch shards of the mesh")
    return global_batch // jax.process_count()

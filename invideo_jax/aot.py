"""Ahead-of-time compilation of a config's train step from abstract inputs: per-device memory with no arrays.

The step is the one `trainer.train` runs (same state shardings, batch sharding, donation), lowered on
`ShapeDtypeStruct`s, so a 1B-parameter model's memory per device can be read on a laptop with simulated devices.
The compiled step also runs on real arrays placed in the returned state's shardings.
"""
import flax.linen as nn
import jax
import numpy as np

from invideo_jax import sharding
from invideo_jax.train import optim, trainer
from invideo_jax.train.tasks import get_task

MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
                 "generated_code_size_in_bytes")


def abstract_batch(config, batch_sharding) -> dict:
    """ShapeDtypeStructs of a global training batch as the data pipeline yields it, in `batch_sharding`."""
    return {key: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=batch_sharding)
            for key, s in trainer.batch_shapes(config, config.batch_size).items()}


def trace_train_step(config):
    """(traced train step (its `.jaxpr`, `.lower()`), abstract TrainState with shardings) for `config.mesh` and
    `config.sharding_rules`."""
    mesh = sharding.make_mesh(config.mesh)
    rule_table = sharding.rules(config.sharding_rules)
    task = get_task(config)
    batch_sh = sharding.batch_sharding(mesh)
    sharding.local_batch_size(config.batch_size, mesh)  # the batch must split over the batch axes
    batch = abstract_batch(config, batch_sh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rule_table):
        boxed = jax.eval_shape(task.init_variables, jax.random.PRNGKey(0), batch)
        tx, schedule = optim.make_optimizer(config.optim, sharding.strip_boxes(boxed["params"]),
                                            total_steps=config.total_steps, global_batch=config.batch_size)
        abstract, shardings = trainer.state_shardings(boxed, tx, mesh, rule_table)
        step = jax.jit(trainer.make_train_step(task, tx, schedule), in_shardings=(shardings, batch_sh),
                       out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
        return step.trace(abstract, batch), abstract


def lower_train_step(config):
    """(lowered train step, abstract TrainState with shardings)."""
    traced, abstract = trace_train_step(config)
    with jax.set_mesh(sharding.make_mesh(config.mesh)):
        return traced.lower(), abstract


def compile_train_step(config, compiler_options=None):
    """(compiled train step, abstract TrainState with shardings); `compiler_options` are XLA debug options."""
    lowered, abstract = lower_train_step(config)
    return lowered.compile(compiler_options), abstract


def state_bytes(tree) -> tuple:
    """(global bytes, bytes on the fullest device) of a tree of arrays or ShapeDtypeStructs with shardings."""
    total, per_device = 0, {}
    for leaf in jax.tree.leaves(tree):
        itemsize = np.dtype(leaf.dtype).itemsize
        total += int(np.prod(leaf.shape)) * itemsize
        shard = int(np.prod(leaf.sharding.shard_shape(leaf.shape))) * itemsize
        for device in leaf.sharding.device_set:
            per_device[device] = per_device.get(device, 0) + shard
    return total, max(per_device.values())


def memory_stats(compiled) -> dict:
    """Per-device bytes of a compiled step (`MEMORY_FIELDS`) and `peak` = argument + output - alias + temp."""
    analysis = compiled.memory_analysis()
    stats = {field: int(getattr(analysis, field)) for field in MEMORY_FIELDS}
    stats["peak"] = (stats["argument_size_in_bytes"] + stats["output_size_in_bytes"] - stats["alias_size_in_bytes"]
                     + stats["temp_size_in_bytes"])
    return stats

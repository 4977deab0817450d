"""Ahead-of-time compilation of a config's train and predict steps, for real TPU slices or simulated CPU devices.

    python -m invideo_jax.aot --config=configs/videomae_finetune.py:vit_b --topology=v5e-16 [--num_slices=2] \
        [--predict=false] [--config.batch_size=64 ...]

prints one JSON line: the topology, device kind and count, mesh, per-device memory of the compiled train step in GiB
(argument, output, alias, temp, generated_code, peak = argument + output - alias + temp), hbm_per_device, `fits`
(peak <= (1 - FIT_MARGIN) x HBM), flops_per_step (the matmul FLOPs of the traced step: forward, backward, remat
recomputation), compile_s, and the dtype, remat, attention, batch and accumulation it compiled; `predict` holds the
same memory figures for the evaluation step at `config.eval_batch_size`.

`--topology`: a Cloud TPU name (`v4-32`, `v5e-16`, `v5p-128`, `v6e-64`: the number counts TensorCores on v4 and v5p,
chips on v5e and v6e), a chip grid (`v5e:4x4`, `v5p:4x4x4`, `v4:2x2x4`, `v6e:8x8`), or `cpu:N` for N simulated CPU
devices. TPU topologies need `libtpu` (`pip install -e '.[tpu]'`) and no TPU: XLA compiles for the described chips
(libtpu's deviceless AOT), so memory figures are the TPU compiler's own. `--num_slices=K` describes K such slices
joined by the data-centre network; unless the config splits an axis between slices (`mesh.dcn_*`), `dcn_data=K`.
Compiling for a GPU needs a GPU: jax 0.10.2 has no deviceless GPU topology (docs/scale.md).

The step is the one `trainer.train` runs (same state shardings, batch sharding, donation), lowered on
`ShapeDtypeStruct`s: no array is ever allocated, so a 6B-parameter model compiles on a laptop. On `cpu:N` the
compiled step also runs on real arrays placed in the returned state's shardings.
"""
import dataclasses
import json
import math
import os
import re
import time

import flax.linen as nn
import jax
import numpy as np

from invideo_jax import sharding
from invideo_jax.data import pipeline
from invideo_jax.train import optim, trainer
from invideo_jax.train.tasks import get_task

MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
                 "generated_code_size_in_bytes")
GIB = 2 ** 30
# HBM per chip (GiB) and the libtpu names of each TPU generation.
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
LIBTPU_NAME = {"v4": "v4", "v5e": "v5e", "v5p": "v5", "v6e": "v6e"}
MEGACORE = ("v4", "v5p")  # one JAX device per chip spanning its two TensorCores; the slice name counts cores
FIT_MARGIN = 0.1  # a step fits when its peak leaves this fraction of HBM free (runtime buffers, fragmentation)


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice shape: generation ('v5e'), chip grid ((4, 4) or (4, 4, 4)), number of slices."""
    generation: str
    grid: tuple
    num_slices: int = 1

    @property
    def chips(self) -> int:
        return math.prod(self.grid)

    @property
    def name(self) -> str:
        return f"{self.generation}:{'x'.join(map(str, self.grid))}"

    def devices(self) -> list:
        """The slice's devices as libtpu describes them (no TPU needed)."""
        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no cloud metadata server to ask
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # no chip to own: compiles may run side by side
        from jax.experimental import topologies
        host = tuple(min(2, s) for s in self.grid[:2]) + (1,)
        grid = self.grid + (1,) * (3 - len(self.grid))
        return topologies.get_topology_desc(
            platform="tpu", topology_name=f"{LIBTPU_NAME[self.generation]}:{'x'.join(map(str, self.grid))}",
            chip_config_name="megacore" if self.generation in MEGACORE else "default",
            chips_per_host_bounds=host, num_slices=self.num_slices, wrap=_wraps(grid)).devices


def _wraps(grid: tuple) -> tuple:
    """Torus wrap-around per dimension, as Cloud TPU slices have them: full 3-D cubes (every side a multiple of 4)
    wrap in every dimension; a 2-D slice wraps along a side of 16 chips."""
    if grid[2] > 1:
        return (all(s % 4 == 0 for s in grid),) * 3
    return tuple(s == 16 for s in grid[:2]) + (False,)


def default_grid(generation: str, chips: int) -> tuple:
    """The chip grid of a Cloud TPU slice of `chips` chips: 2-D (v5e, v6e) from 2x2, 3-D (v4, v5p) from 2x2x1, each
    doubling the last of its smallest sides (v5p 64 chips: 4x4x4; v6e 64: 8x8)."""
    grid = [1, 1] if generation in ("v5e", "v6e") else [2, 2, 1]
    if generation in ("v5e", "v6e") and chips >= 4:
        grid = [2, 2]
    while math.prod(grid) < chips:
        smallest = min(grid)
        grid[max(i for i, s in enumerate(grid) if s == smallest)] *= 2
    if math.prod(grid) != chips:
        raise ValueError(f"--topology: no {generation} slice has {chips} chips (a power of two)")
    return tuple(grid)


def parse_topology(text: str, num_slices: int = 1) -> Topology:
    """'v5p-128' (cores on v4/v5p, chips on v5e/v6e) or 'v5p:4x4x4' (chips) -> Topology."""
    generation = re.match(r"(v4|v5e|v5p|v6e)[-:]", text)
    if not generation or num_slices < 1:
        raise ValueError(f"--topology={text!r}, --num_slices={num_slices}: expected cpu:N, a Cloud TPU name such as "
                         f"v4-32, v5e-16, v5p-128, v6e-64, or a chip grid such as v5p:4x4x4 ({sorted(HBM_GIB)}), and "
                         f"num_slices >= 1")
    generation = generation.group(1)
    rest = text[len(generation) + 1:]
    if text[len(generation)] == "-":
        if not rest.isdigit():
            raise ValueError(f"--topology={text!r}: expected {generation}-N")
        per_chip = 2 if generation in MEGACORE else 1
        if int(rest) % per_chip:
            raise ValueError(f"--topology={text!r}: {generation}-N counts TensorCores, two per chip")
        return Topology(generation, default_grid(generation, int(rest) // per_chip), num_slices)
    grid = tuple(int(s) for s in rest.split("x")) if re.fullmatch(r"\d+(x\d+)*", rest) else ()
    if len(grid) != (3 if generation in MEGACORE else 2):
        raise ValueError(f"--topology={text!r}: a {generation} grid has {3 if generation in MEGACORE else 2} sides, "
                         f"e.g. {default_grid(generation, 16 if generation in MEGACORE else 4)}")
    return Topology(generation, grid, num_slices)


def topology_devices(text: str, num_slices: int = 1) -> tuple:
    """(devices, Topology or None for CPU) for `--topology`: simulated CPU devices (`cpu:N`) or a TPU slice."""
    if text.startswith("cpu:"):
        count = int(text[4:]) if text[4:].isdigit() else 0
        available = jax.devices("cpu")
        if not count or count > len(available) or num_slices != 1:
            raise ValueError(f"--topology={text!r}: {len(available)} CPU devices exist (one slice); set "
                             "--xla_force_host_platform_device_count in XLA_FLAGS before jax starts for more")
        return available[:count], None
    topology = parse_topology(text, num_slices)
    return topology.devices(), topology


def with_slices(config, num_slices: int):
    """`config` with `mesh.dcn_data = num_slices` when the config does not split any axis between slices itself."""
    if num_slices > 1 and math.prod(config.mesh.get(f, 1) for f in sharding.DCN_FIELDS) == 1:
        config = config.copy_and_resolve_references()
        with config.unlocked():
            config.mesh.dcn_data = num_slices
    return config


# ----------------------------------------------------------------------------------------------------------
# The steps, traced from abstract inputs
# ----------------------------------------------------------------------------------------------------------


def abstract_batch(config, batch_sharding, batch_size=None, task=None) -> dict:
    """ShapeDtypeStructs of a global batch as the data pipeline yields it (default: the training batch size), with
    the fields a task reads from elsewhere (stored teacher targets: `task.stored_batch_shapes`)."""
    batch_size = batch_size or config.batch_size
    shapes = dict(pipeline.batch_spec(config.data, batch_size))
    if hasattr(task, "stored_batch_shapes"):
        shapes.update(task.stored_batch_shapes(batch_size))
    return {key: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=batch_sharding) for key, s in shapes.items()}


@dataclasses.dataclass
class Setup:
    mesh: jax.sharding.Mesh
    task: object
    tx: object
    schedule: object
    abstract: object  # TrainState of ShapeDtypeStructs with shardings
    shardings: object  # TrainState of shardings
    batch_sharding: object


def setup(config, devices=None) -> Setup:
    """Mesh, task, optimiser and abstract train state of `config` over `devices` (default: jax.devices()).

    Nothing runs on the devices: the init key is abstract too (a TPU described by libtpu cannot run anything).
    """
    mesh = sharding.make_mesh(config.mesh, devices)
    rule_table = sharding.rules(config.sharding_rules)
    task = get_task(config)
    batch_sh = sharding.batch_sharding(mesh)
    sharding.local_batch_size(config.batch_size, mesh)  # the batch must split over the batch axes
    batch = abstract_batch(config, batch_sh, task=task)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rule_table):
        key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
        boxed = jax.eval_shape(task.init_variables, key, batch)
        tx, schedule = optim.make_optimizer(config.optim, sharding.strip_boxes(boxed["params"]),
                                            total_steps=config.total_steps, global_batch=config.batch_size)
        abstract, shardings = trainer.state_shardings(boxed, tx, mesh, rule_table)
    return Setup(mesh, task, tx, schedule, abstract, shardings, batch_sh)


def trace_train_step(config, devices=None):
    """(traced train step (its `.jaxpr`, `.lower()`), abstract TrainState with shardings) for `config.mesh` and
    `config.sharding_rules`."""
    s = setup(config, devices)
    batch = abstract_batch(config, s.batch_sharding, task=s.task)
    with jax.set_mesh(s.mesh), nn.logical_axis_rules(sharding.rules(config.sharding_rules)):
        step = jax.jit(trainer.make_train_step(s.task, s.tx, s.schedule, config.get("grad_accum_steps", 1)),
                       in_shardings=(s.shardings, s.batch_sharding),
                       out_shardings=(s.shardings, sharding.replicated(s.mesh)), donate_argnums=(0,))
        return step.trace(s.abstract, batch), s.abstract


def trace_predict_step(config, devices=None):
    """The traced evaluation step (`task.predict` as the trainer jits it) at `config.eval_batch_size`."""
    s = setup(config, devices)
    sharding.local_batch_size(config.eval_batch_size, s.mesh)
    batch = abstract_batch(config, s.batch_sharding, config.eval_batch_size, s.task)
    with jax.set_mesh(s.mesh), nn.logical_axis_rules(sharding.rules(config.sharding_rules)):
        predict = jax.jit(s.task.predict, in_shardings=(s.shardings.params, s.shardings.batch_stats,
                                                        s.batch_sharding))
        return predict.trace(s.abstract.params, s.abstract.batch_stats, batch)


def lower_train_step(config, devices=None):
    """(lowered train step, abstract TrainState with shardings)."""
    traced, abstract = trace_train_step(config, devices)
    with jax.set_mesh(abstract.step.sharding.mesh):
        return traced.lower(), abstract


def compile_train_step(config, compiler_options=None, devices=None):
    """(compiled train step, abstract TrainState with shardings); `compiler_options` are XLA debug options."""
    lowered, abstract = lower_train_step(config, devices)
    return lowered.compile(compiler_options), abstract


# ----------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------


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


def matmul_flops(jaxpr) -> int:
    """2 x the multiply-adds of every dot_general and convolution in a jaxpr, sub-jaxprs included (a scan body
    times its length): the matmul FLOPs a traced program executes (a training step's: forward, backward and any
    remat recomputation)."""
    total = 0
    for eqn in jaxpr.eqns:
        out = eqn.outvars[0].aval.shape if eqn.outvars else ()
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(out) * math.prod(lhs[i] for i in contract)
        elif eqn.primitive.name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape  # per output element: rhs size / output features multiply-adds
            out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
            total += 2 * math.prod(out) * math.prod(rhs) // out_features
        repeat = eqn.params["length"] if eqn.primitive.name == "scan" else 1
        for param in eqn.params.values():
            sub = getattr(param, "jaxpr", param)
            if isinstance(sub, jax.extend.core.Jaxpr):
                total += repeat * matmul_flops(sub)
    return total


def memory_row(compiled, hbm_gib) -> dict:
    """{per_device: GiB per memory field and peak, fits: peak within (1 - FIT_MARGIN) x HBM (None on CPU)}."""
    stats = memory_stats(compiled)
    names = {field: field.removesuffix("_size_in_bytes") for field in MEMORY_FIELDS}
    per_device = {names.get(k, k): round(v / GIB, 3) for k, v in stats.items()}
    fits = None if hbm_gib is None else stats["peak"] <= (1 - FIT_MARGIN) * hbm_gib * GIB
    return {"per_device": per_device, "fits": fits}


def model_settings(config, name: str) -> list:
    """The distinct values of a model setting (`dtype`, `remat`, `attn_impl`) anywhere in `config.model.kwargs`, as
    JSON values (a dtype object becomes its name)."""
    found = []

    def visit(tree):
        for key, value in tree.items():
            if hasattr(value, "items"):
                visit(value)
            elif key == name:
                value = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
                if value not in found:
                    found.append(value)

    visit(config.model.kwargs)
    return found


def compile_report(config, topology: str, num_slices: int = 1, predict: bool = True) -> dict:
    """The JSON row of `python -m invideo_jax.aot`: compiles the train step (and the predict step) of `config`."""
    if "stages" in config:
        raise ValueError("--config is a pipeline (config.stages): compile one stage's config file instead")
    devices, tpu = topology_devices(topology, num_slices)
    config = with_slices(config, num_slices)
    hbm = HBM_GIB[tpu.generation] if tpu else None
    start = time.perf_counter()
    traced, abstract = trace_train_step(config, devices)
    mesh = abstract.step.sharding.mesh
    with jax.set_mesh(mesh):
        compiled = traced.lower().compile()
    report = {
        "topology": tpu.name if tpu else topology, "num_slices": num_slices, "device_kind": devices[0].device_kind,
        "num_devices": len(devices), "mesh": dict(mesh.shape),
        "dcn": {f: config.mesh[f] for f in sharding.DCN_FIELDS if config.mesh.get(f, 1) > 1},
        "sharding_rules": config.sharding_rules,
        **memory_row(compiled, hbm), "hbm_per_device": hbm, "fit_margin": FIT_MARGIN,
        "compile_s": round(time.perf_counter() - start, 1), "flops_per_step": matmul_flops(traced.jaxpr.jaxpr),
        "state_per_device": round(state_bytes((abstract.params, abstract.opt_state))[1] / GIB, 3),
        "batch": config.batch_size, "grad_accum_steps": config.get("grad_accum_steps", 1),
        "dtype": model_settings(config, "dtype"), "remat": model_settings(config, "remat"),
        "attn_impl": model_settings(config, "attn_impl"),
    }
    if predict:
        start = time.perf_counter()
        with jax.set_mesh(mesh):
            compiled = trace_predict_step(config, devices).lower().compile()
        report["predict"] = dict(memory_row(compiled, hbm), batch=config.eval_batch_size,
                                 compile_s=round(time.perf_counter() - start, 1))
    return report


def main(argv):
    del argv
    print(json.dumps(compile_report(_CONFIG.value, _TOPOLOGY.value, _NUM_SLICES.value, _PREDICT.value)), flush=True)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, optionally with :ARG.", lock_config=False)
    _TOPOLOGY = flags.DEFINE_string("topology", "cpu:8", "cpu:N, a Cloud TPU name (v5e-16, v5p-128) or a chip grid "
                                    "(v5e:4x4, v5p:4x4x4).")
    _NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices of --topology joined over the data-centre network.")
    _PREDICT = flags.DEFINE_bool("predict", True, "Also compile the evaluation (predict) step.")
    flags.mark_flags_as_required(["config"])
    app.run(main)

"""Training-step time of any config: the trainer's compiled step on a random state and batch.

    python -m benchmarks.train_step --config=configs/uniformerv2_finetune.py:B/16 --batch=8 [--frames=8]
        [--remat=full] [--mesh=data=-1] [--warmup=2] [--steps=5]

The config is built as benchmarks/memory.py builds it (`batch=` / `frames=` / `remat=` through its ARG options
where it has them). The step is the one `trainer.train` runs (`aot.compile_train_step`: same shardings, the state
donated; forward, backward and the optimiser update), compiled ahead of time for `--mesh` over the available
devices. It runs on a random state (parameters N(0, 0.02), optimiser state zero) and a random batch shaped as the
data pipeline yields it, placed in the step's shardings; `--steps` synchronised steps are timed after `--warmup`.

FLOPs per step are the matmul FLOPs (dot_general and convolutions, 2 per multiply-add) of the traced step,
forward, backward and optimiser, scan bodies times their length (`common.matmul_flops`), divided by the devices:
with remat they include the recomputation, so pass `--remat=none` for model FLOPs. (XLA's `cost_analysis` counts a
scanned layer stack's body once.) benchmarks/videomae_step.py instead counts the ViT family analytically, to
compare with PyTorch. MFU = FLOPs per device / step time / the measured matmul peak of one device. Prints the peak,
then a Markdown row.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from invideo_jax import aot, sharding
from invideo_jax.data import pipeline

COLUMNS = ("config", "batch", "devices", "mesh", "compile s", "GFLOP/step/device", "ms/step", "clips/s",
           "MFU", "peak GFLOP/s", "load avg", "machine", "versions", "command")
TEXT_IDS = (1, 64)  # random token ids in [1, 64): within every tokenizer's vocabulary, never padding


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="config file PATH[:ARG]")
    parser.add_argument("--batch", type=int, default=8, help="global batch")
    parser.add_argument("--frames", type=int, default=0, help="the config's frames= option (0: its own)")
    parser.add_argument("--remat", default="", help="the config's remat= option ('': its own)")
    parser.add_argument("--mesh", default="data=-1", help="mesh sizes AXIS=N,... (-1: the remaining devices)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps")
    parser.add_argument("--steps", type=int, default=5, help="timed steps; the median is reported")
    parser.add_argument("--peak_size", type=int, default=0, help="matmul size of the peak (0: 2048 CPU, 8192 else)")
    return parser.parse_args(argv)


def random_state(abstract, seed: int = 0):
    """A TrainState shaped and sharded as `abstract`: parameters N(0, 0.02), everything else zero."""
    params = jax.tree.leaves(abstract.params)
    keys = list(jax.random.split(jax.random.PRNGKey(seed), len(params)))
    shardings = jax.tree.map(lambda s: s.sharding, abstract)

    def make():
        normal = [0.02 * jax.random.normal(k, s.shape, jnp.float32).astype(s.dtype) for k, s in zip(keys, params)]
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)
        return zeros.replace(params=jax.tree.unflatten(jax.tree.structure(abstract.params), normal))

    return jax.jit(make, out_shardings=shardings)()


def random_batch(config, batch_sharding, seed: int = 0) -> dict:
    """A global batch shaped as the data pipeline yields it: video and audio N(0, 1), labels and token ids in range,
    one-hot targets, every example good and with audio."""
    rng = np.random.default_rng(seed)
    shapes = pipeline.batch_spec(config.data, config.batch_size)
    batch = {}
    for key, s in shapes.items():
        if key == "label":
            value = rng.integers(0, max(config.data.num_classes, 1), s.shape)
        elif key == "text":
            value = rng.integers(*TEXT_IDS, s.shape)
        elif key == "audio_mask":
            value = np.ones(s.shape)
        elif jnp.issubdtype(s.dtype, jnp.floating):
            value = rng.standard_normal(s.shape)
        else:
            value = np.zeros(s.shape)
        batch[key] = np.asarray(value, s.dtype)
    if "targets" in batch:
        batch["targets"] = np.eye(config.data.num_classes, dtype=np.float32)[batch["label"]]
    return {key: jax.device_put(value, batch_sharding) for key, value in batch.items()}


def run(args, argv) -> str:
    load_start = common.load_average()
    backend = jax.default_backend()
    peak = max(common.matmul_peak(args.peak_size or (2048 if backend == "cpu" else 8192)).values())
    print(f"matmul peak GFLOP/s (one device): {peak / 1e9:.1f}")
    config = common.build(args.config, args.remat, args.batch, args.frames)
    config.mesh = common.parse_mesh(args.mesh, jax.device_count())
    config.sharding_rules = common.rules_for(config.mesh)
    start = time.perf_counter()
    traced, abstract = aot.trace_train_step(config)
    with jax.set_mesh(sharding.make_mesh(config.mesh)):
        compiled = traced.lower().compile()
    compile_s = time.perf_counter() - start
    flops = common.matmul_flops(traced.jaxpr.jaxpr) / jax.device_count()
    state = random_state(abstract)
    batch = random_batch(config, sharding.batch_sharding(sharding.make_mesh(config.mesh)))

    def step():
        nonlocal state
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))

    seconds = common.median_seconds({"step": step}, args.warmup, args.steps)["step"]
    mesh = ",".join(f"{k}={v}" for k, v in config.mesh.items() if v != 1)
    return common.markdown_row([
        common.label(args.config), config.batch_size, jax.device_count(), mesh or "1 device", f"{compile_s:.0f}",
        f"{flops / 1e9:.4g}", f"{1e3 * seconds:.1f}", f"{config.batch_size / seconds:.3g}",
        f"{100 * flops / seconds / peak:.1f}%", *common.provenance(peak, load_start, "benchmarks.train_step", argv)])


def main(argv=None):
    common.main(parse_args, run, COLUMNS, argv)


if __name__ == "__main__":
    main()

"""Per-device memory of VideoMAE V2 pre-training steps, compiled ahead of time from abstract inputs (no arrays).

    python benchmarks/memory.py [--variants=vit_g] [--meshes=data=8 --meshes=fsdp=8 --meshes=fsdp=4,tensor=2]
        [--remat=none,full,dots] [--batch=8] [--frames=16]

For each variant, mesh and remat policy, builds `configs/videomae_pretrain.py:VARIANT,v2=True,scan=True`, lowers and
compiles the train step (`invideo_jax.aot.compile_train_step`) and prints a Markdown table of
`compiled.memory_analysis()` per device, then the parameter + optimiser bytes in total and per device. Sharding
rules follow the mesh: `fsdp_tp` with a tensor axis, `fsdp` with an fsdp axis, else `dp`. Without XLA_FLAGS
naming a device count it simulates 8 CPU devices.
"""
import os
import sys
import time

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for `configs`

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from configs import videomae_pretrain  # noqa: E402
from invideo_jax import aot  # noqa: E402

_VARIANTS = flags.DEFINE_list("variants", ["vit_g"], "configs/videomae_pretrain.py variants.")
_MESHES = flags.DEFINE_multi_string("meshes", ["data=8", "fsdp=8", "fsdp=4,tensor=2"],
                                    "Mesh sizes AXIS=N,...; repeat the flag for several meshes.")
_REMAT = flags.DEFINE_list("remat", ["none", "full", "dots"], "Remat policies of the transformer blocks.")
_BATCH = flags.DEFINE_integer("batch", 8, "Global batch size.")
_FRAMES = flags.DEFINE_integer("frames", 16, "Frames per clip (224x224).")

GIB = 2 ** 30


def parse_mesh(text: str) -> dict:
    """'fsdp=4,tensor=2' -> {'data': 1, 'fsdp': 4, 'tensor': 2}."""
    sizes = dict(data=1, fsdp=1, tensor=1)
    for item in text.split(","):
        axis, _, size = item.partition("=")
        if axis not in sizes or not size.isdigit():
            raise ValueError(f"bad mesh {text!r}: expected AXIS=N,... with AXIS in {sorted(sizes)}")
        sizes[axis] = int(size)
    return sizes


def rules_for(mesh: dict) -> str:
    return "fsdp_tp" if mesh["tensor"] > 1 else "fsdp" if mesh["fsdp"] > 1 else "dp"


def main(argv):
    del argv
    print(f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}; global batch "
          f"{_BATCH.value}, {_FRAMES.value}x224x224 clips; GiB per device\n")
    print("| variant | mesh | rules | remat | argument | output | alias | temp | code | peak | params+opt "
          "| compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    totals = {}
    for variant in _VARIANTS.value:
        for mesh_text in _MESHES.value:
            mesh = parse_mesh(mesh_text)
            for remat in _REMAT.value:
                config = videomae_pretrain.get_config(
                    f"{variant},v2=True,scan=True,remat={remat},batch={_BATCH.value},frames={_FRAMES.value}")
                config.mesh = mesh
                config.sharding_rules = rules_for(mesh)
                start = time.perf_counter()
                compiled, abstract = aot.compile_train_step(config)
                seconds = time.perf_counter() - start
                stats = aot.memory_stats(compiled)
                total, per_device = aot.state_bytes((abstract.params, abstract.opt_state))
                totals[variant] = total
                cells = [stats[f] / GIB for f in aot.MEMORY_FIELDS] + [stats["peak"] / GIB, per_device / GIB]
                print(f"| {variant} | {mesh_text} | {config.sharding_rules} | {remat} | "
                      + " | ".join(f"{c:.2f}" for c in cells) + f" | {seconds:.0f} |", flush=True)
    print("\npeak = argument + output - alias + temp; params+opt = this device's share of parameters and "
          "optimiser state, from the shardings.")
    n = jax.device_count()
    for variant, total in totals.items():
        print(f"{variant}: parameters + optimiser state {total / GIB:.2f} GiB in total; "
              f"1/{n} = {total / n / GIB:.3f} GiB")


if __name__ == "__main__":
    app.run(main)

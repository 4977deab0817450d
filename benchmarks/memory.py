"""Per-device memory of training steps, compiled ahead of time from abstract inputs (no arrays).

    python benchmarks/memory.py [--configs=PATH[:ARG] ...] [--meshes=data=8 --meshes=fsdp=8 --meshes=fsdp=4,tensor=2]
        [--remat=none,full,dots] [--batch=8] [--frames=N] [--variants=vit_g]

For each config, mesh and remat policy, builds the config (`PATH:ARG,remat=R,batch=B[,frames=N]`), lowers and
compiles the train step (`invideo_jax.aot.compile_train_step`) and prints a Markdown table of
`compiled.memory_analysis()` per device, then a table of the parameter and optimiser bytes in total and per device
(trainable = parameters the optimiser does not freeze; frozen ones get no optimiser state). A step that fails to
lower or compile (e.g. a dimension the mesh cannot split) gets a `failed: ...` row; the others still run, and the
exit status is then 1.

--configs: repeat the flag for several configs, e.g.
    --configs="configs/videomae_pretrain.py:vit_g,v2=True,scan=True" --configs="configs/internvideo2_distill.py:1B"
  Without it: `configs/videomae_pretrain.py:VARIANT,v2=True,scan=True` for each of --variants (VideoMAE V2 ViT-g).
--remat: applied through the config's `remat=` ARG option (videomae_pretrain: the encoder's blocks;
  internvideo2_distill: the student's blocks, the frozen teachers run forward only); an empty list (`--remat=`)
  keeps each config's own setting. A config without a `remat` option and a non-empty --remat is an error.
--batch: the global batch, through `batch=` where the config has that option, else by setting `config.batch_size`.
--frames: through `frames=` (0: the config's own; its meaning is the config's: clip frames for videomae_pretrain,
  the student's frames for internvideo2_distill, whose video teacher sees twice as many).
Sharding rules follow the mesh: `fsdp_tp` with a tensor axis, `fsdp` with an fsdp axis, else `dp`. Without XLA_FLAGS
naming a device count it simulates 8 CPU devices.
"""
import os
import sys
import time

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for `configs`

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import common  # noqa: E402
from invideo_jax import aot  # noqa: E402
from invideo_jax.data import pipeline  # noqa: E402
from invideo_jax.train import optim  # noqa: E402

_CONFIGS = flags.DEFINE_multi_string("configs", None, "Config files PATH[:ARG]; repeat the flag for several configs. "
                                     "Default: configs/videomae_pretrain.py:VARIANT,v2=True,scan=True per --variants.")
_VARIANTS = flags.DEFINE_list("variants", ["vit_g"], "configs/videomae_pretrain.py variants (without --configs).")
_MESHES = flags.DEFINE_multi_string("meshes", ["data=8", "fsdp=8", "fsdp=4,tensor=2"],
                                    "Mesh sizes AXIS=N,...; repeat the flag for several meshes.")
_REMAT = flags.DEFINE_list("remat", ["none", "full", "dots"],
                           "Remat policies, passed as the config's remat= option; empty: the config's own.")
_BATCH = flags.DEFINE_integer("batch", 8, "Global batch size.")
_FRAMES = flags.DEFINE_integer("frames", 0, "frames= config option; 0: the config's own.")

GIB = 2 ** 30
VIDEOMAE = "configs/videomae_pretrain.py"


def default_configs(variants) -> list:
    return [f"{VIDEOMAE}:{variant},v2=True,scan=True" for variant in variants]


def state_summary(config, abstract) -> dict:
    """Bytes of parameters (all, trainable) and optimiser state, in total and on the fullest device."""
    params_total, params_device = aot.state_bytes(abstract.params)
    opt_total, opt_device = aot.state_bytes(abstract.opt_state)
    rows = optim.describe(abstract.params, config.optim)
    trainable = sum(int(np.prod(row.shape)) for row in rows if not row.frozen)
    count = sum(int(np.prod(row.shape)) for row in rows)
    state_total, state_device = aot.state_bytes((abstract.params, abstract.opt_state))
    return dict(count=count, trainable=trainable, params=params_total, params_device=params_device, opt=opt_total,
                opt_device=opt_device, state=state_total, state_device=state_device)


def main(argv):
    del argv
    specs = _CONFIGS.value or default_configs(_VARIANTS.value)
    remats = [r for r in _REMAT.value if r] or [""]
    print(f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}; global batch "
          f"{_BATCH.value}; GiB per device\n")
    for spec in specs:
        config = common.build(spec, remats[0], _BATCH.value, _FRAMES.value)
        shapes = ", ".join(f"{key} {tuple(s.shape)} {s.dtype}" for key, s in
                           pipeline.batch_spec(config.data, config.batch_size).items())
        print(f"{common.label(spec)}: batch {shapes}")
    print("\n| config | mesh | rules | remat | argument | output | alias | temp | code | peak | params+opt "
          "| compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    summaries, failures = {}, 0
    for spec in specs:
        for mesh_text in _MESHES.value:
            mesh = common.parse_mesh(mesh_text)
            for remat in remats:
                config = common.build(spec, remat, _BATCH.value, _FRAMES.value)
                config.mesh = mesh
                config.sharding_rules = common.rules_for(mesh)
                start = time.perf_counter()
                try:
                    compiled, abstract = aot.compile_train_step(config)
                except Exception as e:  # e.g. a dimension the mesh cannot split: report it, go on with the rest
                    failures += 1
                    message = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    print(f"| {common.label(spec)} | {mesh_text} | {config.sharding_rules} | {remat or '(config)'} | "
                          f"failed: {type(e).__name__}: {message} |", flush=True)
                    continue
                seconds = time.perf_counter() - start
                stats = aot.memory_stats(compiled)
                summary = state_summary(config, abstract)
                summaries[common.label(spec), mesh_text] = summary
                cells = [stats[f] / GIB for f in aot.MEMORY_FIELDS] + [stats["peak"] / GIB,
                                                                        summary["state_device"] / GIB]
                print(f"| {common.label(spec)} | {mesh_text} | {config.sharding_rules} | {remat or '(config)'} | "
                      + " | ".join(f"{c:.2f}" for c in cells) + f" | {seconds:.0f} |", flush=True)
    print("\npeak = argument + output - alias + temp; params+opt = this device's share of parameters and "
          "optimiser state, from the shardings.\n")
    n = jax.device_count()
    print("| config | mesh | parameters | trainable | params GiB | opt GiB | params / device | opt / device |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, mesh_text), s in summaries.items():
        print(f"| {name} | {mesh_text} | {s['count']:,} | {s['trainable']:,} | {s['params'] / GIB:.2f} | "
              f"{s['opt'] / GIB:.2f} | {s['params_device'] / GIB:.3f} | {s['opt_device'] / GIB:.3f} |")
    print()
    for name in dict.fromkeys(name for name, _ in summaries):
        s = next(s for (other, _), s in summaries.items() if other == name)
        print(f"{name}: parameters + optimiser state {s['state'] / GIB:.2f} GiB in total; "
              f"1/{n} = {s['state'] / n / GIB:.3f} GiB")
    return 1 if failures else 0


if __name__ == "__main__":
    app.run(main)

"""Shared benchmark harness: machine and versions, a measured matmul peak, median step times, analytic FLOPs, rows,
and configs built with the benchmarks' batch / frames / remat / mesh settings.

Model FLOPs are counted from the configuration with one formula for every implementation: the matmul FLOPs
(2 per multiply-add) of the patch embedding, q/k/v and output projections, attention scores and values, MLPs,
the encoder-to-decoder projection, decoder and heads. Norms, softmax, activations, the loss and the optimiser
are not counted. A training step counts 3x its forward pass.
"""
import importlib.util
import os
import platform
import shlex
import statistics
import sys
import time
from importlib import metadata

import jax
import jax.numpy as jnp
import numpy as np

from invideo_jax.aot import matmul_flops  # noqa: F401  (the benchmarks' FLOP count of a traced step)

PACKAGES = ("jax", "flax", "torch", "transformers", "numpy")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine() -> str:
    """'AMD EPYC, 2 cores, 23 GiB' (+ the accelerator JAX runs on, if not the CPU)."""
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = names[0] if names else platform.machine()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    out = f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB"
    if jax.default_backend() != "cpu":
        out += f", {jax.devices()[0].device_kind}"
    return out


def versions() -> str:
    """'Python 3.11.7, jax 0.10.2, ...' for the packages a benchmark compares."""
    found = [f"{name} {metadata.version(name)}" for name in PACKAGES if _installed(name)]
    return ", ".join([f"Python {platform.python_version()}"] + found)


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def load_average() -> float:
    """The 1-minute load average (other processes competing for the cores)."""
    return os.getloadavg()[0]


def command(module: str, argv) -> str:
    """The exact command line that reproduces a run."""
    return shlex.join([os.path.basename(sys.executable), "-m", module, *argv])


def median_seconds(steps: dict, warmup: int, repeats: int) -> dict:
    """{name: median wall-clock seconds of one call of steps[name]()}, each `step` returning synchronised.

    Every step is first called `warmup` times; the timed calls then go round-robin, so that the implementations
    being compared share whatever load other processes put on the machine.
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_peak(size: int, dtype: str = "float32", repeats: int = 10) -> dict:
    """Best FLOP/s of a (size, size) @ (size, size) matmul: JAX in `dtype`, and numpy float32 when JAX is on the CPU."""
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    flops = 2 * size ** 3
    x = jnp.asarray(a, dtype)
    matmul = jax.jit(jnp.matmul)
    peaks = {"JAX": flops / _best_seconds(lambda: matmul(x, x).block_until_ready(), repeats)}
    if jax.default_backend() == "cpu":
        peaks["numpy"] = flops / _best_seconds(lambda: a @ a, repeats)
    return peaks


def _best_seconds(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def transformer_flops(tokens: int, width: int, depth: int, mlp_dim: int) -> int:
    """Forward matmul FLOPs of `depth` blocks on `tokens` tokens: qkv, scores, values, output projection, MLP."""
    projections = 2 * tokens * width * (3 * width + width + 2 * mlp_dim)
    attention = 2 * 2 * tokens * tokens * width
    return depth * (projections + attention)


def video_vit_flops(encoder: dict, task: str, decoder: dict = None, num_masked: int = 0, num_classes: int = 0) -> int:
    """Model FLOPs per clip of a VideoMAE pre-training step, a classifier training step or a classifier forward.

    `encoder` holds VisionTransformer kwargs (width, depth, mlp_dim, patch_size, tubelet_size, num_frames,
    image_size); `decoder` VideoMAE decoder kwargs (decoder_width, decoder_depth, decoder_mlp_dim).
    """
    width, depth, mlp = encoder["width"], encoder["depth"], encoder["mlp_dim"]
    patch_dim = encoder["tubelet_size"] * encoder["patch_size"] ** 2 * 3
    tokens = (encoder["num_frames"] // encoder["tubelet_size"]) * (encoder["image_size"] // encoder["patch_size"]) ** 2
    flops = 2 * tokens * patch_dim * width  # every token is embedded, also those masked afterwards
    if task == "pretrain":
        visible, dec_width = tokens - num_masked, decoder["decoder_width"]
        flops += transformer_flops(visible, width, depth, mlp)
        flops += 2 * visible * width * dec_width
        flops += transformer_flops(tokens, dec_width, decoder["decoder_depth"], decoder["decoder_mlp_dim"])
        flops += 2 * num_masked * dec_width * patch_dim
    else:
        flops += transformer_flops(tokens, width, depth, mlp) + 2 * width * num_classes
    return flops if task == "inference" else 3 * flops


def provenance(peak: float, load_start: float, module: str, argv) -> list:
    """The last cells of a benchmark row: the peak (GFLOP/s), the load average from `load_start` to now, machine,
    versions and the command."""
    return [f"{peak / 1e9:.1f}", f"{load_start:.1f}–{load_average():.1f}", machine(), versions(),
            f"`{command(module, argv)}`"]


def main(parse_args, run, columns, argv=None):
    """A benchmark script's entry point: `run(parse_args(argv), argv)` -> its row, printed under `columns`."""
    argv = sys.argv[1:] if argv is None else argv
    row = run(parse_args(argv), argv)
    print(markdown_header(columns))
    print(row)


def markdown_header(columns) -> str:
    return "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)


def markdown_row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


# ----------------------------------------------------------------------------------------------------------
# Configs (PATH[:ARG]) with the benchmarks' batch / frames / remat / mesh settings
# ----------------------------------------------------------------------------------------------------------


def parse_mesh(text: str, devices: int = 0) -> dict:
    """'fsdp=4,tensor=2' -> {'data': 1, 'fsdp': 4, 'tensor': 2}; one size may be -1 (the rest of `devices`)."""
    sizes = dict(data=1, fsdp=1, tensor=1)
    for item in text.split(","):
        axis, _, size = item.partition("=")
        if axis not in sizes or not (size.isdigit() or (size == "-1" and devices)):
            raise ValueError(f"bad mesh {text!r}: expected AXIS=N,... with AXIS in {sorted(sizes)}"
                             + (" (N may be -1: the remaining devices)" if devices else ""))
        sizes[axis] = int(size)
    rest = [axis for axis, size in sizes.items() if size == -1]
    if len(rest) > 1:
        raise ValueError(f"bad mesh {text!r}: at most one size may be -1")
    if rest:
        sizes[rest[0]] = devices // abs(sizes["data"] * sizes["fsdp"] * sizes["tensor"])
    return sizes


def rules_for(mesh: dict) -> str:
    return "fsdp_tp" if mesh["tensor"] > 1 else "fsdp" if mesh["fsdp"] > 1 else "dp"


def load_module(path: str):
    """The config module at `path` (relative to the working directory or to the repository root)."""
    if not os.path.exists(path) and os.path.exists(os.path.join(ROOT, path)):
        path = os.path.join(ROOT, path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no config file {path!r}")
    name = "benchmark_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def join_arg(*items) -> str:
    return ",".join(item for item in items if item)


def unknown_option(module, arg: str, key: str, value) -> str:
    """'' if `module.get_config` takes the ARG option `key`, else its error (configs.common.parse_arg names the
    known options)."""
    try:
        module.get_config(join_arg(arg, f"{key}={value}"))
    except ValueError as e:
        if f"unknown config arg {key!r}" in str(e):
            return str(e)
        raise
    return ""


def label(spec: str) -> str:
    """'configs/internvideo2_distill.py:1B' -> 'internvideo2_distill:1B'."""
    path, _, arg = spec.partition(":")
    stem = os.path.splitext(os.path.basename(path))[0]
    return f"{stem}:{arg}" if arg else stem


def build(spec: str, remat: str = "", batch: int = 0, frames: int = 0):
    """The ConfigDict of `spec` = 'PATH[:ARG]' with remat= / batch= / frames= added to ARG (each when set)."""
    path, _, arg = spec.partition(":")
    module = load_module(path)
    extra = []
    if remat:
        error = unknown_option(module, arg, "remat", remat)
        if error:
            raise ValueError(f"{path} has no remat= option ({error}); pass --remat= to keep the config's own setting")
        extra.append(f"remat={remat}")
    if frames:
        error = unknown_option(module, arg, "frames", frames)
        if error:
            raise ValueError(f"{path} has no frames= option ({error}); leave --frames at 0")
        extra.append(f"frames={frames}")
    batch_in_arg = bool(batch) and not unknown_option(module, arg, "batch", batch)
    if batch_in_arg:
        extra.append(f"batch={batch}")
    config = module.get_config(join_arg(arg, *extra))
    if batch and not batch_in_arg:
        config.batch_size = batch
    return config

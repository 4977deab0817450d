"""Shared benchmark harness: machine and versions, a measured matmul peak, median step times, analytic FLOPs, rows.

Model FLOPs are counted from the configuration with one formula for every implementation: the matmul FLOPs
(2 per multiply-add) of the patch embedding, q/k/v and output projections, attention scores and values, MLPs,
the encoder-to-decoder projection, decoder and heads. Norms, softmax, activations, the loss and the optimiser
are not counted. A training step counts 3x its forward pass.
"""
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

PACKAGES = ("jax", "flax", "torch", "transformers", "numpy")


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


def markdown_header(columns) -> str:
    return "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)


def markdown_row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"

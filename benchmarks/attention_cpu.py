"""Attention alone on CPU: our kernels beside PyTorch's SDPA, forward and forward + backward, interleaved.

    python -m benchmarks.attention_cpu --length=1568 --heads=6 --head_dim=64 --batch=2 --blocks=64,128,256

Every repetition runs each implementation once, in turn, so that all see the same load from other processes; the
row gives the min and median milliseconds per call and each JAX kernel's median time relative to SDPA's. JAX: our
`attention.attention` jitted (backward: `jax.grad` of the output's sum with respect to q, k and v); PyTorch:
`torch.nn.functional.scaled_dot_product_attention` in layout [B, N, T, H] (its CPU flash kernel), as many threads
as cores.
"""
import argparse
import functools
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from invideo_jax.models import attention, attention_cpu


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attention_cpu", description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=1568, help="tokens (1568: a 16x224 clip in 2x16x16 tubes)")
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--blocks", default="128", help="query blocks of 'cpu_blocked' to time, comma-separated")
    parser.add_argument("--backward", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--repeats", type=int, default=7)
    return parser.parse_args(argv)


def jax_calls(args, q, k, v) -> dict:
    """{name: synchronised call} of the JAX kernels: 'xla' and 'cpu_blocked' at each block size."""
    kernels = {"xla": functools.partial(attention.attention, impl="xla")}
    for block in map(int, args.blocks.split(",")):
        kernels[f"cpu_blocked/{block}"] = functools.partial(
            lambda q, k, v, block: attention_cpu.blocked_attention(q, k, v, bias=None, mask=None, is_causal=False,
                                                                   scale=q.shape[-1] ** -0.5, block=block),
            block=block)
    calls = {}
    for name, kernel in kernels.items():
        if args.backward:
            fn = jax.jit(jax.grad(lambda q, k, v, kernel=kernel: kernel(q, k, v).sum(), argnums=(0, 1, 2)))
        else:
            fn = jax.jit(kernel)
        calls[name] = functools.partial(lambda fn: jax.block_until_ready(fn(q, k, v)), fn)
    return calls


def torch_call(args, q, k, v):
    import torch

    torch.set_num_threads(os.cpu_count())
    q, k, v = (torch.from_numpy(np.asarray(x)).transpose(1, 2).contiguous().requires_grad_(args.backward)
               for x in (q, k, v))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if args.backward:
        def call():
            q.grad = k.grad = v.grad = None
            sdpa(q, k, v).sum().backward()
    else:
        def call():
            with torch.inference_mode():
                sdpa(q, k, v)
    return call


def run(args, argv) -> str:
    load_start = common.load_average()
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((args.batch, args.length, args.heads, args.head_dim), np.float32))
               for _ in range(3))
    calls = {**jax_calls(args, q, k, v), "SDPA": torch_call(args, q, k, v)}
    for call in calls.values():
        call()  # compiles
    times = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(1e3 * (time.perf_counter() - start))
    sdpa = statistics.median(times["SDPA"])
    cells = "; ".join(f"{name} {min(t):.0f}/{statistics.median(t):.0f} ms ({statistics.median(t) / sdpa:.2f}×)"
                      for name, t in times.items())
    pass_ = "forward + backward" if args.backward else "forward"
    return common.markdown_row([f"{args.batch}×{args.length}×{args.heads}×{args.head_dim}", pass_, cells,
                                f"{load_start:.1f}–{common.load_average():.1f}", common.machine(),
                                common.command("benchmarks.attention_cpu", argv)])


COLUMNS = ("B×T×N×H", "pass", "min/median ms per call (median / SDPA median)", "load avg", "machine", "command")


def main(argv=None):
    common.main(parse_args, run, COLUMNS, argv)


if __name__ == "__main__":
    main()

"""The real-TPU table of docs/scale.md: every paper-scale recipe at its paper global batch, compiled for a TPU slice by
`python -m invideo_jax.aot` (libtpu's deviceless AOT: no TPU needed), one subprocess per compile.

    python benchmarks/tpu_memory.py [--rows="NAME;..."] [--smaller] [--out=tpu_memory.jsonl] [--timeout=1800]

Each row starts from a slice, FSDP over all of its chips, a remat policy and an accumulation count. While the step
does not fit (peak > (1 - aot.FIT_MARGIN) x HBM), the accumulation doubles (halving the clips per chip in a
microbatch) down to one clip per chip, then the slice doubles. With --smaller, a row that fits at its first attempt
is compiled once more on half the slice (same clips per chip), so the slice it names is the smallest that fits with
that remat and microbatch. Every attempt
goes to --out as a JSON line (the aot row plus `row` and `command`) as soon as it finishes; at the end a Markdown table
of each row's smallest fitting attempt.
"""
import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from invideo_jax import aot  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    config: str  # PATH:ARG with the paper batch and remat
    topology: str  # the slice to start from
    grad_accum_steps: int = 1
    overrides: tuple = ()


PAPER = [
    Row("VideoMAE-B pre-training", "configs/videomae_pretrain.py:vit_b,batch=2048,remat=full", "v5e-16", 4),
    Row("VideoMAE-L pre-training", "configs/videomae_pretrain.py:vit_l,batch=512,remat=full", "v5e-16", 2),
    Row("VideoMAE-H pre-training", "configs/videomae_pretrain.py:vit_h,batch=1024,remat=full", "v5e-32", 4),
    Row("VideoMAE V2-g pre-training", "configs/videomae_pretrain.py:vit_g,v2=True,batch=2048,remat=full", "v5e-32", 8),
    Row("VideoMAE-B fine-tuning", "configs/videomae_finetune.py:vit_b,batch=384,remat=full", "v5e-16", 2),
    Row("VideoMAE-L fine-tuning", "configs/videomae_finetune.py:vit_l,batch=128,remat=full", "v5e-16", 1),
    Row("VideoMAE-H fine-tuning", "configs/videomae_finetune.py:vit_h,batch=384,remat=full", "v5e-32", 2),
    Row("UniFormerV2-L/14", "configs/uniformerv2_finetune.py:L/14,classes=710,batch=512,remat=full", "v5e-16", 1),
    Row("InternVideo-MM L/14", "configs/internvideo_mm_pretrain.py:L/14,batch=1024,remat=full", "v5e-32", 1),
    Row("Fusion H + L", "configs/internvideo_fusion.py:batch=256", "v5e-16", 1),
    Row("InternVideo2-1B stage 1", "configs/internvideo2_distill.py:1B,batch=4096", "v5p-64", 4),
    Row("InternVideo2-1B stage 1 from stored targets", "configs/internvideo2_distill.py:1B,batch=4096,targets=stored",
        "v5p-64", 2),
    Row("InternVideo2-1B stage 2", "configs/internvideo2_align.py:1B,batch=4096,vision_remat=full", "v5p-64", 4),
    Row("InternVideo2-6B stage 2", "configs/internvideo2_align.py:6B,batch=4096,vision_remat=full", "v5p-128", 16),
    Row("InternVideo2-6B stage 2 with audio", "configs/internvideo2_align.py:6B,batch=4096,vision_remat=full,"
        "audio=beats_iter3,embed_dim=768,text_length=40", "v5p-128", 16),
]
FSDP = ("--config.mesh.data=1", "--config.mesh.fsdp=-1", "--config.sharding_rules=fsdp")


def chips(topology: str) -> int:
    return aot.parse_topology(topology).chips


def resized(topology: str, factor: float) -> str:
    """The same generation's slice with `factor` times the chips ('v5p-64', 2 -> 'v5p-128')."""
    t = aot.parse_topology(topology)
    per_chip = 2 if t.generation in aot.MEGACORE else 1
    return f"{t.generation}-{int(t.chips * factor) * per_chip}"


def compile_row(row: Row, topology: str, k: int, timeout: int) -> dict:
    command = [sys.executable, "-m", "invideo_jax.aot", f"--config={row.config}", f"--topology={topology}",
               "--predict=false", f"--config.grad_accum_steps={k}", *FSDP, *row.overrides]
    env = dict(os.environ, JAX_PLATFORMS="cpu", TPU_SKIP_MDS_QUERY="1")
    start = time.perf_counter()
    try:
        out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        result = json.loads(lines[-1]) if out.returncode == 0 and lines else {
            "error": (out.stderr.strip().splitlines() or ["no output"])[-1][:500]}
    except subprocess.TimeoutExpired:
        result = {"error": f"compile did not finish in {timeout} s"}
    result.update(row=row.name, topology_asked=topology, grad_accum_steps=k,
                  wall_s=round(time.perf_counter() - start, 1),
                  command=" ".join(["python"] + command[1:]))
    return result


def smallest_fit(row: Row, log, timeout: int, smaller: bool) -> dict:
    """Escalates accumulation, then the slice, until the step fits; then (`smaller`) tries half the slice once."""
    batch = int(row.config.split("batch=")[1].split(",")[0])
    topology, k, first = row.topology, row.grad_accum_steps, True
    for _ in range(8):
        result = compile_row(row, topology, k, timeout)
        log(result)
        if result.get("fits"):
            if not smaller or not first or chips(topology) <= 4:
                return result
            smaller = compile_row(row, resized(topology, 0.5), 2 * k, timeout)  # the same clips per chip
            log(smaller)
            return smaller if smaller.get("fits") else result
        first = False
        if "error" in result:
            return result
        if batch // (chips(topology) * k) > 1:
            k *= 2
        else:
            topology, k = resized(topology, 2), row.grad_accum_steps
    return result


def markdown(results) -> str:
    lines = ["| recipe | slice | chips | global batch | clips / chip / microbatch | accumulation | remat | dtype "
             "| argument | temp | peak GiB | HBM | state / chip | TFLOP / step | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['row']} | {r['topology_asked']} | | | | {r['grad_accum_steps']} | | | failed: "
                         f"{r['error'][:160]} | | | | | | |")
            continue
        m, n = r["per_device"], r["num_devices"]
        lines.append(
            f"| {r['row']} | {r['topology_asked']} ({r['topology']}) | {n} | {r['batch']} | "
            f"{r['batch'] // n // r['grad_accum_steps']} | {r['grad_accum_steps']} | {'/'.join(r['remat'])} | "
            f"{'/'.join(r['dtype'])} | {m['argument']:.2f} | {m['temp']:.2f} | {m['peak']:.2f} | "
            f"{r['hbm_per_device']} | {r['state_per_device']:.2f} | {r['flops_per_step'] / 1e12:.0f} | "
            f"{r['compile_s']:.0f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="", help="Row names separated by ; (default: all).")
    parser.add_argument("--out", default="tpu_memory.jsonl")
    parser.add_argument("--timeout", type=int, default=1800, help="Seconds per compile.")
    parser.add_argument("--smaller", action="store_true", help="Try half the slice of a row that fits at once.")
    args = parser.parse_args()
    wanted = [name.strip() for name in args.rows.split(";") if name.strip()]
    by_name = {row.name: row for row in PAPER}
    unknown = sorted(set(wanted) - set(by_name))
    if unknown:
        parser.error(f"unknown rows {unknown}; rows: {sorted(by_name)}")
    rows = [by_name[name] for name in wanted] if wanted else PAPER
    with open(args.out, "a") as f:
        def log(result):
            f.write(json.dumps(result) + "\n")
            f.flush()
            print(json.dumps({k: result.get(k) for k in ("row", "topology_asked", "grad_accum_steps", "fits",
                                                          "per_device", "compile_s", "error")}), flush=True)
        results = [smallest_fit(row, log, args.timeout, args.smaller) for row in rows]
    print(markdown(results))


if __name__ == "__main__":
    main()

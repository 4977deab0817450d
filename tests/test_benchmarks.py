"""The step benchmark: a Markdown row on a tiny config (no timing assertions), and its analytic FLOPs."""
import math

import jax
import jax.numpy as jnp
import pytest

from benchmarks import common, videomae_step
from configs import common as sizes
from invideo_jax import masking

TINY = ["--model=tiny", "--frames=4", "--image_size=32", "--batch=1", "--warmup=1", "--steps=1", "--peak_size=128"]


def cells(row):
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


@pytest.mark.parametrize("task", ["pretrain", "finetune", "inference"])
def test_row_on_a_tiny_config(task, capsys):
    argv = TINY + [f"--task={task}"]
    row = cells(videomae_step.run(videomae_step.parse_args(argv), argv))
    assert len(row) == len(videomae_step.COLUMNS)
    got = dict(zip(videomae_step.COLUMNS, row))
    assert (got["model"], got["task"], got["clip"], got["batch"]) == ("tiny", task, "4×32²", "1")
    assert float(got["JAX/PyTorch clips/s"]) > 0 and got["JAX MFU"].endswith("%")
    assert got["command"].endswith(f" -m benchmarks.videomae_step {' '.join(argv)}`")
    assert "matmul peak GFLOP/s: JAX" in capsys.readouterr().out


@pytest.mark.parametrize("variant,gmacs", [("B/16", 180), ("L/16", 597)])
def test_flops_match_the_videomae_paper(variant, gmacs):
    """The paper's 180 / 597 G for a 16x224 view of ViT-B / ViT-L count multiply-adds; we count 2 FLOPs each."""
    flops = common.video_vit_flops(sizes.vit_encoder(variant), "inference", num_classes=400)
    assert flops / 2e9 == pytest.approx(gmacs, rel=0.005)


def dot_flops(jaxpr) -> int:
    """2 x multiply-adds of every dot_general in a jaxpr, sub-jaxprs included (scan bodies times their length)."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
        repeat = eqn.params["length"] if eqn.primitive.name == "scan" else 1
        for param in eqn.params.values():
            sub = getattr(param, "jaxpr", param)
            if isinstance(sub, jax.extend.core.Jaxpr):
                total += repeat * dot_flops(sub)
    return total


@pytest.mark.parametrize("task", ["pretrain", "inference"])
def test_flops_formula_counts_every_matmul_of_our_forward(task):
    batch, grid = 2, (2, 4, 4)
    args = videomae_step.parse_args(["--model=tiny", "--frames=4", "--image_size=64", f"--task={task}"])
    model = videomae_step.make_task(args).model
    encoder = videomae_step.encoder_kwargs(args)
    video = jnp.zeros((batch, 4, 64, 64, 3))
    if task == "pretrain":
        num_masked = masking.tube_num_masked(grid, args.mask_ratio)
        order = jnp.broadcast_to(jnp.arange(math.prod(grid)), (batch, math.prod(grid)))
        inputs = (video, order[:, num_masked:], order[:, :num_masked])
        forward = common.video_vit_flops(encoder, task, videomae_step.decoder_kwargs(args), num_masked) // 3
    else:
        inputs = (video,)
        forward = common.video_vit_flops(encoder, task, num_classes=args.classes)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), *inputs)
    assert dot_flops(jax.make_jaxpr(model.apply)(variables, *inputs).jaxpr) == batch * forward

"""The step benchmark: a Markdown row on a tiny config (no timing assertions), and its analytic FLOPs."""
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from benchmarks import common, memory, train_step, videomae_step
from configs import common as sizes
from invideo_jax import aot, masking
from tests.tiny_models import tiny

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
    assert common.matmul_flops(jax.make_jaxpr(model.apply)(variables, *inputs).jaxpr) == batch * forward


PLAIN_CONFIG = """from configs import common, videomae_pretrain


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="vit_s", frames=16)
    return videomae_pretrain.get_config(f"{arg.variant},frames={arg.frames}")
"""


def test_memory_builds_each_config_with_its_remat_batch_and_frames_options(tmp_path):
    """benchmarks/memory.py: the default is VideoMAE V2 ViT-g; --remat, --batch, --frames go through the config's
    ARG options where it has them (no compile here)."""
    [spec] = memory.default_configs(["vit_g"])
    config = common.build(spec, "dots", 8)
    assert common.label(spec) == "videomae_pretrain:vit_g,v2=True,scan=True"
    assert (config.model.kwargs.encoder.remat, config.batch_size, config.data.num_frames) == ("dots", 8, 16)
    assert config.mask.decoder_kind == "running_cell"  # v2: dual masking
    config = common.build("configs/internvideo2_distill.py:1B", "none", 8, frames=4)
    assert common.label("configs/internvideo2_distill.py:1B") == "internvideo2_distill:1B"
    assert (config.model.kwargs.student.remat, config.batch_size) == ("none", 8)
    assert (config.model.kwargs.student.num_frames, config.data.num_frames) == (4, 8)  # the video teacher: 2x
    assert common.build("configs/internvideo2_distill.py:1B", "", 8).model.kwargs.student.remat == "full"
    path = tmp_path / "plain.py"
    path.write_text(PLAIN_CONFIG)
    config = common.build(f"{path}:vit_b", "", 4, frames=8)  # no batch option: config.batch_size is set
    assert (config.batch_size, config.data.num_frames, config.model.kwargs.encoder.width) == (4, 8, 768)
    with pytest.raises(ValueError, match=r"plain.py has no remat= option \(unknown config arg 'remat'; known: "
                                         r"\['frames', 'variant'\]\); pass --remat="):
        common.build(str(path), "full", 8)
    assert common.parse_mesh("fsdp=4,tensor=2") == dict(data=1, fsdp=4, tensor=2)
    assert common.rules_for(common.parse_mesh("fsdp=4,tensor=2")) == "fsdp_tp"


TINY_CLASSIFIER = """from configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, batch=256)
    encoder = common.vit_encoder("B/16", width=32, depth=2, num_heads=2, mlp_dim=64, num_frames=2, image_size=32,
                                 scan=True)
    c = common.train_config("classification", dict(encoder, pool="mean", final_norm=False, num_classes=3))
    c.data.update(dict(num_frames=2, crop_size=32, short_side=32, num_classes=3))
    c.batch_size = arg.batch
    return c
"""


def test_train_step_row_for_any_config(tmp_path, capsys):
    """benchmarks/train_step.py: the trainer's compiled step of a config file on a random state and batch, over all
    (8 simulated) devices; one Markdown row with the step's matmul FLOPs."""
    path = tmp_path / "tiny_classifier.py"
    path.write_text(TINY_CLASSIFIER)
    train_step.main([f"--config={path}", "--batch=8", "--warmup=1", "--steps=2", "--peak_size=256"])
    header, _, row = capsys.readouterr().out.strip().splitlines()[-3:]
    cells = dict(zip(header.strip("|").split("|"), row.strip("|").split("|")))
    cells = {k.strip(): v.strip() for k, v in cells.items()}
    assert cells["config"] == "tiny_classifier" and cells["devices"] == "8" and cells["mesh"] == "data=8"
    assert cells["batch"] == "8" and float(cells["ms/step"]) > 0
    # the traced step's matmuls (scanned layers counted per layer) are the analytic 3x forward, less the patch
    # embedding's input gradient, which is never computed
    config = common.build(str(path), batch=8)
    config.mesh = common.parse_mesh("data=-1", jax.device_count())
    encoder = config.model.kwargs
    tokens, patch_inputs = 1 * 2 * 2, 2 * 16 * 16 * 3
    expected = 8 * (common.video_vit_flops(encoder, "finetune", num_classes=3) - 2 * tokens * patch_inputs * 32)
    assert common.matmul_flops(aot.trace_train_step(config)[0].jaxpr.jaxpr) == expected
    assert float(cells["GFLOP/step/device"]) == pytest.approx(expected / 8 / 1e9, rel=1e-2)
    assert common.parse_mesh("fsdp=2,data=-1", 8) == dict(data=4, fsdp=2, tensor=1)
    with pytest.raises(ValueError, match="at most one size may be -1"):
        common.parse_mesh("fsdp=-1,data=-1", 8)


def test_extract_throughput_times_the_model_the_decoding_and_the_extractor_on_the_same_clips(tmp_path):
    """benchmarks/extract_throughput.py on the tiny ViT and one generated 10 s video: three rows over the same clips
    (no timing assertions) and the overlap line."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.extract_throughput", f"--model={tiny('vit')}",
                          "--videos=1", "--batch=2", "--repeats=1", f"--dir={tmp_path}"],
                         capture_output=True, text=True, cwd=common.ROOT, check=True).stdout
    rows = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    parts = {cells[0].strip(): (int(cells[1]), float(cells[3])) for cells in rows[1:]}
    assert list(parts) == ["model alone", "decode + crop alone", "extract, end to end"]
    clips = {n for n, _ in parts.values()}
    assert len(clips) == 1 and clips.pop() > 0 and all(rate > 0 for _, rate in parts.values())
    assert "overlap (decode s + model s) / extract s = " in out

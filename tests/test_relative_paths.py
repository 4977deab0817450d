"""Paths as a user types them: the real CLIs run from a temporary current directory with relative paths (workdir,
checkpoints, videos, outputs), and the presets in configs/ work from any directory. The console stays quiet: absl /
Orbax INFO lines go to WORKDIR/log.txt, not to the terminal."""
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from invideo_jax.convert import cli, videomae
from invideo_jax.convert.api import save
from tests.test_extract import write_test_video
from tests.tiny_models import random_variables, tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABSL_INFO = re.compile(r"^I\d{4} ", re.MULTILINE)  # absl's INFO prefix: I<month><day> <time> ...


def run(args, cwd, env=None, timeout=600):
    """`python -m ...` in `cwd`; the environment (PYTHONPATH included) inherited unless `env` is given."""
    out = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env or dict(os.environ), capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """tests/tiny_config.py run by the real CLI from a temporary current directory into the relative workdir `run`,
    then by the same command again once its step-4 checkpoint and summary are removed, as if it had stopped after its
    step-2 checkpoint. The second run reads its compiled programs back from the workdir's XLA cache. Both compile
    with XLA's LLVM optimisations and MLIR fusion emitters off: the same computations, compiled in a third of the
    time. Returns the directory, the command, the environment, both runs' output and the log file after them."""
    cwd = tmp_path_factory.mktemp("cli")
    command = ["invideo_jax.main", f"--config={os.path.join(ROOT, 'tests', 'tiny_config.py')}:steps=4,batch=8",
               "--workdir=run"]
    env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1",
               XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_fusion_emitters=false")
    first = run(command, cwd=cwd, env=env)
    stage = cwd / "run" / "classify"
    assert (stage / "checkpoints" / "2").is_dir()
    shutil.rmtree(stage / "checkpoints" / "4")
    os.remove(stage / "summary.json")
    second = run(command, cwd=cwd, env=env)
    return cwd, command, env, (first, second), (cwd / "run" / "log.txt").read_text()


def test_main_with_relative_workdir_checkpoints_resumes_and_keeps_the_terminal_quiet(pipeline_run):
    cwd, _, _, outs, log = pipeline_run
    with open(cwd / "run" / "classify" / "summary.json") as f:
        assert json.load(f)["steps"] == 4
    assert "resumed from step 2" in log
    assert "checkpoint_manager.py" in log  # Orbax's INFO lines are in the log file ...
    for out in outs:  # ... not on the terminal, which shows the stages, results and the report
        terminal = out.stdout + out.stderr
        assert not ABSL_INFO.search(terminal), ABSL_INFO.findall(terminal)[:3]
        assert "=== stage classify" in out.stdout and "classify: top-1" in out.stdout
        assert f"report: {cwd / 'run' / 'report.md'}" in out.stdout


def test_alsologtostderr_brings_info_lines_back_to_the_terminal(pipeline_run):
    """The finished run once more, its summary removed: it resumes from its last checkpoint and evaluates."""
    cwd, command, env, _, _ = pipeline_run
    os.remove(cwd / "run" / "classify" / "summary.json")
    out = run(command + ["--alsologtostderr"], cwd=cwd, env=env)
    assert "resumed from step 4" in out.stderr and "classify: top-1" in out.stdout
    assert ABSL_INFO.search(out.stderr)


def test_extract_with_relative_checkpoint_videos_and_output(tmp_path):
    write_test_video(tmp_path / "videos" / "a.mp4", 12, 10)
    save(random_variables(tiny("vit"), seed=1), str(tmp_path / "checkpoint"))
    run(["invideo_jax.extract", f"--model={tiny('vit')}", "--checkpoint=checkpoint", "--videos=videos",
         "--output=features", "--no_progress"], cwd=tmp_path)
    with np.load(tmp_path / "features" / "a.npz") as out:
        assert out["features"].ndim == 2 and out["features"].shape[0] >= 1


TINY_CONFIG = '''from configs import common


def get_config():
    return common.train_config("classification", common.vit_encoder(
        "S/8", width=32, depth=1, num_heads=2, mlp_dim=64, num_frames=4, image_size=16, pool="mean", final_norm=False,
        num_classes=3))
'''


def test_convert_with_relative_model_input_and_output(tmp_path):
    (tmp_path / "model.py").write_text(TINY_CONFIG)
    model = cli.build_model(cli.parse_args(["--format=videomae", f"--model={tmp_path / 'model.py'}", "--input=x",
                                            "--output=y"]))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), videomae.expected_params(model))
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in videomae.to_state_dict(params).items()}
    torch.save(state, tmp_path / "weights.pth")
    out = run(["invideo_jax.convert.cli", "--format=videomae", "--model=model.py", "--input=weights.pth",
               "--output=converted"], cwd=tmp_path)
    assert f"wrote {tmp_path / 'converted' / '0'}" in out.stdout
    assert (tmp_path / "converted" / "0").is_dir()


def test_presets_work_from_any_directory_without_configs_on_the_import_path(tmp_path):
    """Only the package is importable (as from an installed entry point): `configs/...` presets are still found."""
    (tmp_path / "site").mkdir()
    os.symlink(os.path.join(ROOT, "invideo_jax"), tmp_path / "site" / "invideo_jax")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    out = run(["invideo_jax.registry", "list", "videomae_vit_b_k400"], cwd=tmp_path, env=env)
    assert re.search(r"^videomae_vit_b_k400\s+86.5M\s+videomae", out.stdout, re.MULTILINE), out.stdout

"""The train loop: exact resume, stage-to-stage restore, and configs that fail fast naming the field."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import common
from invideo_jax.train import trainer
from invideo_jax.train.tasks import get_task

pytestmark = pytest.mark.usefixtures("quick_compiling")  # conftest.py

ENCODER = dict(width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8, tubelet_size=2, num_frames=4,
               image_size=16)


def _config(task, model, data_dir, num_classes):
    c = common.train_config(task, model)
    c.data.update(dict(train_annotations=f"{data_dir}/train.csv", eval_annotations=f"{data_dir}/val.csv",
                       root=data_dir, num_frames=4, sampling_rate=2, crop_size=16, short_side=16,
                       train_crop="multiscale", flip=False, num_classes=num_classes, workers=0))
    c.batch_size = c.eval_batch_size = 4
    c.total_steps, c.log_every, c.checkpoint_every = 6, 2, 2
    c.mesh.data = 1
    c.optim.update(dict(base_lr=1e-3, lr_batch_denom=0, warmup_steps=2))
    return c


def classifier_config(data_dir):
    return _config("classification", dict(ENCODER, final_norm=False, pool="mean", num_classes=8, drop_path=0.1),
                   data_dir, 8)


def pretrain_config(data_dir):
    c = _config("videomae_pretrain", dict(encoder=ENCODER, decoder_width=16, decoder_depth=1, decoder_heads=2,
                                          decoder_mlp_dim=32), data_dir, 0)
    c.mask = common.mask_config(ratio=0.75)
    return c


def saved_params(workdir, step):
    tree = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    return tree["params"]


def metric_rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "clips_per_s"} for line in f]


def test_resumed_run_equals_uninterrupted_run_bitwise(tmp_path, synthetic_videos):
    config = classifier_config(synthetic_videos)
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    trainer.train(config, whole)
    assert trainer.train(config, broken, stop_after=4) is None  # "preempted" after step 4
    assert not os.path.exists(os.path.join(broken, trainer.SUMMARY))
    trainer.train(config, broken)  # restarts from step 4, data position included
    a, b = saved_params(whole, 6), saved_params(broken, 6)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert metric_rows(whole) == metric_rows(broken)
    assert not jax.tree.all(jax.tree.map(np.array_equal, a, saved_params(whole, 4)))  # training changed them


def test_classifier_restores_the_pretrained_encoder(tmp_path, synthetic_videos):
    pretrain = str(tmp_path / "pretrain")
    config = pretrain_config(synthetic_videos)
    config.total_steps, config.optim.warmup_steps = 2, 1
    trainer.train(config, pretrain)
    finetune = classifier_config(synthetic_videos)
    finetune.total_steps, finetune.checkpoint_every = 1, 1
    finetune.optim.update(dict(warmup_steps=0, frozen=("patch_embed", "transformer")))  # encoder stays as restored
    finetune.init_from.checkpoint = os.path.join(pretrain, "checkpoints")
    result = trainer.train(finetune, str(tmp_path / "finetune"))
    assert result["eval"]["num_videos"] == 8
    source, target = saved_params(pretrain, 2)["encoder"], saved_params(str(tmp_path / "finetune"), 1)
    for name in ("patch_embed", "transformer"):
        jax.tree.map(np.testing.assert_array_equal, source[name], target[name])
    assert "head" in target and "head" not in source


def test_bad_config_values_name_the_field(synthetic_videos):
    config = pretrain_config(synthetic_videos)
    config.mask.kind = "cube"
    with pytest.raises(ValueError, match="config.mask.kind"):
        get_task(config)
    config = classifier_config(synthetic_videos)
    config.model.kwargs.num_classes = 0
    with pytest.raises(ValueError, match="num_classes"):
        get_task(config)


@pytest.mark.parametrize("override, message", [
    ("--config.stages.pretrain.no_such_field=1", "no_such_field"),
    ("--config.stages.pretrain.batch_size=many", "batch_size"),
])
def test_command_line_rejects_unknown_or_mistyped_fields(tmp_path, override, message):
    cmd = [sys.executable, "-m", "invideo_jax.main", "--config=configs/demo.py", f"--workdir={tmp_path}", override]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode != 0
    assert message in out.stderr
    assert not os.path.exists(tmp_path / "data")  # failed before doing any work

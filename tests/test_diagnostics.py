"""Run diagnostics: the parameter overview at init and at restore, the opt-in profiler trace, the transfer guard."""
import glob
import logging
import os

import jax
import numpy as np
import pytest

from invideo_jax import stages
from invideo_jax.models.vit import VisionTransformer
from invideo_jax.train import trainer
from tests import tiny_config

pytestmark = pytest.mark.usefixtures("quick_compiling")  # conftest.py


def classifier_config(data_dir, **overrides):
    """tests/tiny_config.py's one-layer classifier on the shared synthetic videos."""
    config = stages.stage_config(tiny_config.get_config("steps=4"), "classify", data_dir)
    config.unlock()
    config.data.update(dict(train_annotations=f"{data_dir}/train.csv", eval_annotations=f"{data_dir}/val.csv",
                            root=data_dir, workers=0))
    config.mesh.data = 1
    config.update(overrides)
    return config


def overview_lines(caplog, what):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(what)]


def test_parameter_overview_at_init_and_restore_and_profile_only_when_asked(tmp_path, synthetic_videos, caplog):
    caplog.set_level(logging.INFO)
    shapes = jax.eval_shape(VisionTransformer(**tiny_config.ENCODER).init, jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1, 4, 16, 16, 3), np.float32))["params"]
    total = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
    head = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["head"]))
    workdir = str(tmp_path / "run")

    assert trainer.train(classifier_config(synthetic_videos), workdir, stop_after=2) is None
    (line,) = overview_lines(caplog, "initialised parameters")
    assert line.startswith(f"initialised parameters: {total:,} in total; ") and f"head {head:,}" in line
    assert not os.path.exists(os.path.join(workdir, "profile"))  # profile_steps = 0: no trace

    caplog.clear()  # resumes at step 2: steps 3 and 4, the second of them traced
    trainer.train(classifier_config(synthetic_videos, profile_steps=1), workdir)
    (line,) = overview_lines(caplog, "restored parameters (step 2)")
    assert f": {total:,} in total; " in line and f"head {head:,}" in line
    assert glob.glob(os.path.join(workdir, "profile", "**", "*.xplane.pb"), recursive=True)


def test_transfer_guard_makes_an_implicit_host_transfer_in_the_step_raise(tmp_path, synthetic_videos, monkeypatch):
    """The batch left on the host (numpy): an implicit transfer when the step is called. Allowed by default;
    `transfer_guard='disallow'` raises; the normal run (device batches) passes under the guard."""
    def one_step(name, **overrides):
        return trainer.train(classifier_config(synthetic_videos, **overrides), str(tmp_path / name), stop_after=1)

    one_step("device_batch", transfer_guard="disallow")
    monkeypatch.setattr(trainer.pipeline, "make_global", lambda batch, sharding: batch)
    one_step("host_batch")
    with pytest.raises(Exception, match="Disallowed host-to-device transfer"):
        one_step("host_batch_guarded", transfer_guard="disallow")
    with pytest.raises(ValueError, match="config.transfer_guard='never'"):
        one_step("bad", transfer_guard="never")

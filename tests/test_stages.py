"""Pipeline stages: finished stages are skipped; a re-run stage re-runs those after it; nothing is deleted."""
import json
import os

import ml_collections
import numpy as np
import pytest

from invideo_jax import stages


def _pipeline():
    c = ml_collections.ConfigDict()
    stage = lambda: ml_collections.ConfigDict(dict(
        data=dict(root="{workdir}/data"), init_from=dict(checkpoint="", mapping={})))
    c.stages = ml_collections.ConfigDict(dict(b_first=stage(), a_second=stage()))
    c.stages.a_second.init_from.checkpoint = "b_first"
    c.stage_order = ("b_first", "a_second")  # not alphabetical: order comes from stage_order
    return c


@pytest.fixture
def ran(monkeypatch):
    calls = []

    def fake_stage(config, workdir):
        calls.append((os.path.basename(workdir), config))
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump({"steps": 1}, f)
        return {"steps": 1}

    monkeypatch.setattr(stages.trainer, "train", fake_stage)
    monkeypatch.setattr(stages, "check_init_from", lambda config, workdir: None)  # the fake stages have no model
    return calls


def test_order_placeholders_and_stage_references(tmp_path, ran):
    stages.run_pipeline(_pipeline(), str(tmp_path))
    assert [name for name, _ in ran] == ["b_first", "a_second"]
    second = ran[1][1]
    assert second.data.root == f"{tmp_path}/data"
    assert second.init_from.checkpoint == os.path.join(str(tmp_path), "b_first", "checkpoints")
    assert (tmp_path / "report.md").exists()


def test_finished_stages_are_skipped(tmp_path, ran):
    stages.run_pipeline(_pipeline(), str(tmp_path))
    ran.clear()
    stages.run_pipeline(_pipeline(), str(tmp_path))
    assert ran == []


def test_deleting_a_stage_reruns_it_and_later_ones_keeping_old_results(tmp_path, ran):
    stages.run_pipeline(_pipeline(), str(tmp_path))
    (tmp_path / "b_first" / "summary.json").unlink()
    ran.clear()
    stages.run_pipeline(_pipeline(), str(tmp_path))
    assert [name for name, _ in ran] == ["b_first", "a_second"]
    assert len(list(tmp_path.glob("a_second.stale-*"))) == 1  # moved aside, not deleted


def test_stage_order_must_match_stages(tmp_path, ran):
    config = _pipeline()
    config.stage_order = ("b_first",)
    with pytest.raises(ValueError, match="stage_order"):
        stages.run_pipeline(config, str(tmp_path))


def test_named_init_from_sources_resolve_each_stage_and_ensembles_average_predictions(tmp_path, monkeypatch):
    """A stage restoring from two earlier stages (the fusion stage) gets both checkpoint dirs; an ensemble averages
    the members' per-video probabilities from their predictions.npz."""
    import numpy as np
    from invideo_jax.train import trainer

    probs = {"m1": [[0.6, 0.4], [0.6, 0.4], [0.2, 0.8]], "m2": [[0.0, 1.0], [0.45, 0.55], [0.3, 0.7]]}
    seen = {}

    def fake_stage(config, workdir):
        name = os.path.basename(workdir)
        seen[name] = config
        os.makedirs(workdir, exist_ok=True)
        if name in probs:
            np.savez(os.path.join(workdir, trainer.PREDICTIONS), video_index=np.arange(3), label=np.array([1, 0, 1]),
                     probs=np.array(probs[name]))
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump({"steps": 1}, f)
        return {"steps": 1}

    monkeypatch.setattr(stages.trainer, "train", fake_stage)
    monkeypatch.setattr(stages, "check_init_from", lambda config, workdir: None)
    c = ml_collections.ConfigDict()
    stage = lambda: ml_collections.ConfigDict(dict(init_from=dict(checkpoint="", mapping={})))
    c.stages = ml_collections.ConfigDict(dict(m1=stage(), m2=stage(), fused=stage()))
    c.stages.fused.init_from = ml_collections.ConfigDict(dict(
        a=dict(checkpoint="m1", mapping={"x": "params"}), b=dict(checkpoint="/elsewhere", mapping={"y": "params"})))
    c.stage_order = ("m1", "m2", "fused")
    c.ensembles = ml_collections.ConfigDict({"both": ("m1", "m2")})
    results = stages.run_pipeline(c, str(tmp_path))
    assert seen["fused"].init_from.a.checkpoint == os.path.join(str(tmp_path), "m1", "checkpoints")
    assert seen["fused"].init_from.b.checkpoint == "/elsewhere"
    # Labels 1, 0, 1: m1 alone misses video 0, m2 alone video 1; the averaged probabilities get all three.
    assert results["both"]["eval"]["top1"] == 1.0 and results["both"]["members"] == ["m1", "m2"]
    assert "| both |" in (tmp_path / "report.md").read_text()

    c.ensembles = ml_collections.ConfigDict({"m1": ("m1", "m2")})
    with pytest.raises(ValueError, match="ensembles.m1"):
        stages.run_pipeline(c, str(tmp_path))


def test_an_ensemble_member_without_class_probabilities_is_named(tmp_path):
    (tmp_path / "chat").mkdir()
    np.savez(tmp_path / "chat" / "predictions.npz", prediction=np.array(["red"]))  # a stage's other predictions
    for stage in ("chat", "never_ran"):
        with pytest.raises(FileNotFoundError, match=f"{stage}/predictions.npz is missing or holds no class"):
            stages._predictions(str(tmp_path), stage)

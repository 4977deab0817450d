"""Pipeline stages: finished stages are skipped; a re-run stage re-runs those after it; nothing is deleted."""
import json
import os

import ml_collections
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

    monkeypatch.setattr(stages, "run_stage", fake_stage)
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

"""The video-text task: caption targets, a short training run with zero-shot and retrieval evaluation, bad configs."""
import json
import os

import numpy as np
import pytest

from configs import demo
from invideo_jax import stages
from invideo_jax.train import trainer
from invideo_jax.train.tasks import get_task
from invideo_jax.train.tasks.videotext import caption_targets, class_names


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, synthetic_videos):
    """A workdir whose data/ is the shared synthetic dataset."""
    root = str(tmp_path_factory.mktemp("workdir"))
    os.symlink(synthetic_videos, os.path.join(root, "data"))
    return root


def videotext_config(workdir, steps=4):
    pipeline = demo.get_config(f"train=16,val=8,multimodal_steps={steps},batch=4")
    config = stages.stage_config(pipeline, "multimodal", workdir)
    config.unlock()
    config.model.kwargs.visual_config.update(dict(width=32, depth=2, num_heads=2, mlp_dim=64, image_size=16,
                                                  num_frames=4, global_layers=(1,)))
    config.model.kwargs.text_config.update(dict(width=64, depth=1, num_heads=2, mlp_dim=64))
    config.data.update(dict(num_frames=4, crop_size=16, short_side=16, cache_videos=False))
    config.log_every = config.checkpoint_every = 2
    return config


def test_caption_targets_predict_the_words_not_the_end_or_padding():
    ids = np.array([[1, 7, 8, 9, 40, 0], [1, 5, 40, 0, 0, 0]])  # start, words, end (largest id), padding
    targets, mask = caption_targets(ids)
    np.testing.assert_array_equal(targets, ids[:, 1:])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])


@pytest.mark.slow  # ~50 s on 2 cores; the demo test trains and evaluates this task in CI
@pytest.mark.parametrize("captions, num_texts", [("first", 8), ("all", 16), ("paragraph", 8)])
def test_training_run_reports_retrieval_and_zero_shot(data_dir, captions, num_texts):
    # the synthetic eval videos have two captions each
    workdir = os.path.join(data_dir, f"multimodal_{captions}")
    config = videotext_config(data_dir)
    config.retrieval.captions = captions
    result = trainer.train(config, workdir)
    ev = result["eval"]
    assert ev["num_videos"] == 8 and ev["num_texts"] == num_texts
    for prefix in ("retrieval", "retrieval_dsl"):
        for direction in ("t2v", "v2t"):
            r1, r5, r10 = (ev[f"{prefix}/{direction}_r{k}"] for k in (1, 5, 10))
            assert 0 <= r1 <= r5 <= r10 <= 100.0
        assert ev[f"{prefix}/t2v_r10"] == 100.0  # 8 videos: every text-to-video rank is within 10
    assert 0 <= ev["zero_shot/top1"] <= ev["zero_shot/top5"] <= 1
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [row for row in map(json.loads, f) if "loss" in row]
    assert {"contrastive_loss", "caption_loss", "caption_accuracy"} <= set(rows[-1])
    assert all(np.isfinite(r["loss"]) for r in rows)


def test_bad_configs_are_named(data_dir, tmp_path):
    config = videotext_config(data_dir)
    config.data.tokenizer = "bert"
    with pytest.raises(ValueError, match="end token must be the largest id"):
        get_task(config)
    config = videotext_config(data_dir)
    config.model.kwargs.text_config.vocab_size = 10
    with pytest.raises(ValueError, match="vocab_size is 10"):
        get_task(config)
    config = videotext_config(data_dir)
    config.data.format, config.data.train_annotations = "videomae", os.path.join(data_dir, "data", "train.csv")
    with pytest.raises(ValueError, match="have no captions"):
        trainer.train(config, str(tmp_path / "no_captions"))


def test_class_names_from_a_file(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("abseiling\n\nair drumming\n")
    assert class_names(str(path)) == ["abseiling", "air drumming"]
    assert class_names(("a", "b")) == ["a", "b"]

"""Repeated augmentation (`data.num_sample`, official `--num_sample`): one decode per video, num_sample independently
augmented clips, next to each other in the batch (the official `multiple_samples_collate(fold=False)` layout)."""
import numpy as np
import pytest

from invideo_jax.data import pipeline
from invideo_jax.data.annotations import VideoRecord
from test_data_pipeline import NUM_VIDEOS, config, dataset, decode_colours  # noqa: F401 (dataset: a fixture)
from test_data_video import write_numbered_video


def test_clips_come_from_one_decode_with_independent_augmentation(tmp_path, monkeypatch):
    """By definition: indices drawn once, frames decoded once, then num_sample augmentations in a row from the
    same generator; the first clip is the clip num_sample=1 gives."""
    path = write_numbered_video(tmp_path / "v.mp4", 40)
    cfg = config(tmp_path, num_sample=3, randaug="rand-m7-n2", random_erase=0.25)
    source = pipeline.FileVideoSource([VideoRecord(path, 1)])
    decodes = []
    real_decode = pipeline.decode_frames
    monkeypatch.setattr(pipeline, "decode_frames", lambda *a, **k: decodes.append(a[0]) or real_decode(*a, **k))
    example = pipeline.TrainExample(source, cfg)(0, np.random.default_rng(5))
    assert decodes == [path]
    assert example["video"].shape == (3, 4, 24, 24, 3) and example["label"].tolist() == [1, 1, 1]

    rng = np.random.default_rng(5)
    frames = real_decode(path, lambda n: pipeline.clip_indices(cfg, n, rng=rng))
    augment = pipeline.TrainExample(source, cfg)._augment
    expected = [augment(frames, rng) for _ in range(3)]
    np.testing.assert_array_equal(example["video"], np.stack(expected))
    assert not any(np.array_equal(expected[i], expected[j]) for i, j in [(0, 1), (0, 2), (1, 2)])
    cfg.num_sample = 1
    single = pipeline.TrainExample(source, cfg)(0, np.random.default_rng(5))
    np.testing.assert_array_equal(single["video"], expected[0])


def test_batch_holds_each_videos_clips_together(dataset):
    cfg = config(dataset, num_sample=2, label_smoothing=0.1)
    iterator = pipeline.train_iterator(cfg, seed=0, batch_size=6, process_index=0, process_count=1)
    batches = [next(iterator) for _ in range(2)]  # 2 x 3 videos of the 12
    for batch in batches:
        assert batch["video"].shape == (6, 4, 24, 24, 3) and batch["targets"].shape == (6, NUM_VIDEOS)
        frames, videos = decode_colours(batch["video"])
        np.testing.assert_array_equal(videos, batch["label"])
        np.testing.assert_array_equal(batch["label"][0::2], batch["label"][1::2])
        np.testing.assert_array_equal(frames[0::2], frames[1::2])  # one temporal sample per video
    labels = np.concatenate([batch["label"][0::2] for batch in batches])
    assert len(set(labels.tolist())) == 6  # six different videos: the epoch's order, each video once
    with pytest.raises(ValueError, match="data.num_sample=2: the batch of 5 clips"):
        pipeline.train_iterator(cfg, seed=0, batch_size=5, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="data.num_sample=0 must be >= 1"):
        pipeline.check_data_config(config(dataset, num_sample=0))

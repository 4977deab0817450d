"""grain pipelines: batch contract, host shards, exact resume, bad videos, multi-view evaluation."""
import json
import logging

import jax
import numpy as np
import pytest
from PIL import Image

from invideo_jax.data import pipeline, tokenizer, transforms
from invideo_jax.data.video import write_video
from invideo_jax.evaluate.multiview import MultiViewAccumulator

NUM_VIDEOS, NUM_FRAMES, HEIGHT, WIDTH = 12, 30, 32, 48


def flat_clip(video: int, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """Flat-colour frames: red = 8 * frame number, green = 16 * video + 8 (survive crops, h264)."""
    clip = np.full((num_frames, HEIGHT, WIDTH, 3), 100, np.uint8)
    clip[..., 0] = (8 * np.arange(num_frames))[:, None, None]
    clip[..., 1] = 16 * video + 8
    return clip


def decode_colours(video: np.ndarray, normalize: str = "imagenet") -> tuple[np.ndarray, np.ndarray]:
    """(frame numbers (..., T), video numbers (...)) back from normalised flat-colour clips."""
    mean, std = (np.asarray(v) for v in transforms.NORMALIZATION[normalize])
    rgb = (video.mean(axis=(-3, -2)) * std + mean) * 255
    frames = np.round(rgb[..., 0] / 8).astype(int)
    return frames, np.round((rgb[..., 1].mean(-1) - 8) / 16).astype(int)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """NUM_VIDEOS flat-colour videos with label = video number, a csv list and a JSON list."""
    root = tmp_path_factory.mktemp("pipeline")
    rows, entries = [], []
    for i in range(NUM_VIDEOS):
        write_video(str(root / f"{i}.mp4"), flat_clip(i), options={"g": "10"})
        rows.append(f"{i}.mp4 {i}\n")
        entries.append({"video": f"{i}.mp4", "caption": [f"video {i} a", f"video {i} b"],
                        "label": i})
    (root / "list.csv").write_text("".join(rows))
    (root / "list.json").write_text(json.dumps(entries))
    return root


def config(data_dir, **overrides):
    cfg = pipeline.default_data_config()
    cfg.train_annotations = cfg.eval_annotations = str(data_dir / "list.csv")
    cfg.root = str(data_dir)
    cfg.num_frames, cfg.sampling_rate, cfg.crop_size, cfg.short_side = 4, 3, 24, 32
    cfg.num_classes, cfg.threads = NUM_VIDEOS, 2
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def test_config_is_locked_and_checked(dataset):
    cfg = pipeline.default_data_config()
    with pytest.raises(AttributeError):
        cfg.num_frame = 8
    for field, value in [("sampling", "sparse"), ("short_side", 16), ("randaug", "rand-x1"),
                         ("label_smoothing", 1.5), ("format", "csv")]:
        with pytest.raises(ValueError, match=f"data.{field}"):
            pipeline.check_data_config(config(dataset, **{field: value}))
    with pytest.raises(ValueError, match="train_annotations"):
        pipeline.train_iterator(config(dataset, train_annotations=""), seed=0, batch_size=2)


def test_train_batches_follow_the_contract(dataset):
    cfg = config(dataset, label_smoothing=0.1, flip=False)
    batch = next(pipeline.train_iterator(cfg, seed=0, batch_size=4, process_index=0,
                                         process_count=1))
    assert sorted(batch) == ["bad", "label", "targets", "video"]
    assert batch["video"].shape == (4, 4, 24, 24, 3) and batch["video"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["bad"].dtype == np.int32
    assert batch["targets"].shape == (4, NUM_VIDEOS) and batch["targets"].dtype == np.float32
    frames, videos = decode_colours(batch["video"])
    np.testing.assert_array_equal(videos, batch["label"])
    np.testing.assert_array_equal(np.diff(frames, axis=1), 3)
    np.testing.assert_allclose(batch["targets"].max(1), 0.9 + 0.1 / NUM_VIDEOS, rtol=1e-6)
    np.testing.assert_array_equal(batch["targets"].argmax(1), batch["label"])
    np.testing.assert_array_equal(batch["bad"], 0)


@pytest.mark.parametrize("overrides", [
    dict(label_smoothing=0.1),
    dict(num_classes=0, num_sample=2, tokenizer="words", text_length=6, audio=True, audio_frames=20),
])
def test_batch_spec_lists_the_numeric_fields_of_the_batches(dataset, tmp_path, overrides):
    """`batch_spec` (what the trainer, aot and the registry shape models with) against batches the pipeline yields."""
    tokenizer.train_word_tokenizer([f"video {i} a b" for i in range(NUM_VIDEOS)], str(tmp_path / "words"))
    cfg = config(dataset, format="json", train_annotations=str(dataset / "list.json"),
                 tokenizer_path=str(tmp_path / "words"), **overrides)
    batch = next(pipeline.train_iterator(cfg, seed=0, batch_size=4, process_index=0, process_count=1))
    numeric = {key: (value.shape, value.dtype) for key, value in batch.items() if value.dtype.kind in "biuf"}
    assert numeric == {key: (s.shape, s.dtype) for key, s in pipeline.batch_spec(cfg, 4).items()}


def _epoch_labels(cfg, process_index, process_count, epochs=1, batch_size=3):
    iterator = pipeline.train_iterator(cfg, seed=7, batch_size=batch_size,
                                       process_index=process_index, process_count=process_count)
    steps = NUM_VIDEOS // process_count // batch_size
    return [np.concatenate([next(iterator)["label"] for _ in range(steps)]) for _ in range(epochs)]


def test_hosts_see_disjoint_shards_reshuffled_each_epoch(dataset):
    cfg = config(dataset)
    host0 = _epoch_labels(cfg, 0, 2, epochs=2)
    host1 = _epoch_labels(cfg, 1, 2)
    assert set(host0[0]) == set(host0[1]) and len(set(host0[0])) == NUM_VIDEOS // 2
    assert not np.array_equal(host0[0], host0[1])
    assert set(host0[0]).isdisjoint(host1[0])
    assert set(host0[0]) | set(host1[0]) == set(range(NUM_VIDEOS))
    np.testing.assert_array_equal(_epoch_labels(cfg, 0, 2)[0], host0[0])


def test_train_examples_keeps_the_first_examples_of_the_list(dataset):
    iterator = pipeline.train_iterator(config(dataset, train_examples=4), seed=7, batch_size=3, process_index=0,
                                       process_count=1)
    labels = np.concatenate([next(iterator)["label"] for _ in range(8)])  # six passes over the 4 examples
    assert sorted(labels) == sorted(list(range(4)) * 6)


def _assert_resumes_exactly(cfg):
    iterator = pipeline.train_iterator(cfg, seed=3, batch_size=4, process_index=0,
                                       process_count=1)
    for _ in range(2):
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(3)]
    resumed = pipeline.train_iterator(cfg, seed=3, batch_size=4, process_index=0,
                                      process_count=1)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_resume_continues_exactly(dataset):
    _assert_resumes_exactly(config(dataset, randaug="rand-m7-n2", mixup=0.8, cutmix=1.0,
                                   random_erase=0.5, train_crop="rrc"))


def test_resume_with_worker_processes(dataset):
    _assert_resumes_exactly(config(dataset, workers=2, train_crop="multiscale"))


@pytest.fixture
def dataset_with_bad_videos(dataset, tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    write_video(str(tmp_path / "short.mp4"), flat_clip(0, num_frames=2))
    bad = [tmp_path / "missing.mp4", tmp_path / "empty.mp4", tmp_path / "garbage.mp4",
           tmp_path / "short.mp4"]
    rows = [f"{path} 0\n" for path in bad]
    rows += [f"{dataset / f'{i}.mp4'} {i}\n" for i in range(NUM_VIDEOS - len(bad))]
    (tmp_path / "list.csv").write_text("".join(rows))
    return tmp_path / "list.csv", [str(path) for path in bad]


def test_bad_videos_are_replaced_counted_and_logged(dataset, dataset_with_bad_videos, caplog):
    annotations, bad_paths = dataset_with_bad_videos
    cfg = config(dataset, train_annotations=str(annotations), eval_annotations=str(annotations),
                 root="", min_frames=3)
    caplog.set_level(logging.WARNING)
    iterator = pipeline.train_iterator(cfg, seed=0, batch_size=4, process_index=0,
                                       process_count=1)
    batches = [next(iterator) for _ in range(NUM_VIDEOS // 4)]
    assert sum(int(b["bad"].sum()) for b in batches) == len(bad_paths)
    for path in bad_paths:
        assert path in caplog.text
    for batch in batches:
        _, videos = decode_colours(batch["video"])
        np.testing.assert_array_equal(videos, batch["label"])
    views = list(pipeline.eval_iterator(cfg, batch_size=5, process_index=0, process_count=1))
    mask = np.concatenate([v["mask"] for v in views])
    bad = np.concatenate([v["bad"] for v in views])
    index = np.concatenate([v["video_index"] for v in views])
    assert sorted(set(index[bad == 1])) == [0, 1, 2, 3] and not mask[bad == 1].any()


def test_all_bad_videos_fail_clearly(tmp_path):
    (tmp_path / "list.csv").write_text("missing1.mp4 0\nmissing2.mp4 0\n")
    cfg = config(tmp_path)
    with pytest.raises(RuntimeError, match="bad videos in a row"):
        next(pipeline.train_iterator(cfg, seed=0, batch_size=2, process_index=0,
                                     process_count=1))


def test_eval_sees_every_view_once_across_hosts(dataset):
    cfg = config(dataset, eval_clips=2, eval_crops=3, sampling="dense")
    per_host = []
    for host in range(3):
        batches = list(pipeline.eval_iterator(cfg, batch_size=5, process_index=host,
                                              process_count=3))
        assert all(b["video"].shape == (5, 4, 24, 24, 3) for b in batches)
        per_host.append(batches)
    assert len({len(batches) for batches in per_host}) == 1
    batches = [b for batches in per_host for b in batches]
    mask = np.concatenate([b["mask"] for b in batches]).astype(bool)
    index = np.concatenate([b["video_index"] for b in batches])
    assert (index[~mask] == -1).all()
    np.testing.assert_array_equal(np.bincount(index[mask]), [6] * NUM_VIDEOS)
    frames, videos = decode_colours(np.concatenate([b["video"] for b in batches])[mask])
    np.testing.assert_array_equal(videos, index[mask])
    starts = [frames[(index[mask] == v)][:, 0] for v in range(NUM_VIDEOS)]
    span = (cfg.num_frames - 1) * cfg.sampling_rate + 1
    for start in starts:
        np.testing.assert_array_equal(sorted(start), [0] * 3 + [NUM_FRAMES - span] * 3)


def test_multiview_accuracy_from_eval_batches(dataset):
    cfg = config(dataset, eval_clips=2, eval_crops=1)
    accumulator = MultiViewAccumulator(NUM_VIDEOS)
    for batch in pipeline.eval_iterator(cfg, batch_size=5, process_index=0, process_count=1):
        wrong = batch["video_index"] % 3 == 0  # a third of the videos: the next class ranks first
        logits = (2.0 * np.eye(NUM_VIDEOS)[batch["label"]]
                  + 4.0 * np.eye(NUM_VIDEOS)[(batch["label"] + wrong) % NUM_VIDEOS])
        logits[batch["mask"] == 0] = 100.0  # padding must not count
        accumulator.add(logits, batch["video_index"], batch["mask"], batch["label"])
    result = accumulator.result()
    assert result["num_videos"] == NUM_VIDEOS and result["num_views"] == 2 * NUM_VIDEOS
    assert result["top1"] == pytest.approx(8 / 12) and result["top5"] == 1.0


def test_captions_and_images(dataset, tmp_path):
    Image.fromarray(flat_clip(5, 1)[0]).save(tmp_path / "still.png")
    entries = json.loads((dataset / "list.json").read_text())
    entries = [{**e, "video": str(dataset / e["video"])} for e in entries]
    entries.append({"image": str(tmp_path / "still.png"), "caption": "a still", "label": 5})
    (tmp_path / "list.json").write_text(json.dumps(entries))
    cfg = config(dataset, format="json", train_annotations=str(tmp_path / "list.json"),
                 eval_annotations=str(tmp_path / "list.json"), root="")
    batch = next(pipeline.train_iterator(cfg, seed=0, batch_size=NUM_VIDEOS + 1,
                                         process_index=0, process_count=1))
    for label, caption in zip(batch["label"], batch["caption"]):
        assert caption in (f"video {label} a", f"video {label} b", "a still")
    views = list(pipeline.eval_iterator(cfg, batch_size=NUM_VIDEOS + 1, process_index=0,
                                        process_count=1))[0]
    assert views["caption"][-1] == "a still" and views["caption"][0] == "video 0 a"
    frames, videos = decode_colours(views["video"][-1:])
    np.testing.assert_array_equal(frames, 0)
    assert videos[0] == 5


def test_image_batches_keep_images_apart_at_one_frame(dataset, tmp_path):
    """data.image_batches: 4 still images and 12 videos -> batches of 4 of one kind, images (B, 1, H, W, 3) and videos
    (B, 4, H, W, 3), 1 image batch for 3 video batches (the counts' ratio), each kind's examples once per epoch;
    resumable."""
    entries = [{"video": str(dataset / f"{i}.mp4"), "caption": f"video {i}", "label": i} for i in range(NUM_VIDEOS)]
    for i in range(4):  # the stills take video numbers 12..15 in their green channel
        Image.fromarray(flat_clip(NUM_VIDEOS + i, 1)[0]).save(tmp_path / f"still{i}.png")
        entries.insert(3 * i, {"image": str(tmp_path / f"still{i}.png"), "caption": f"still {i}", "label": 0})
    (tmp_path / "list.json").write_text(json.dumps(entries))
    cfg = config(dataset, format="json", train_annotations=str(tmp_path / "list.json"), root="", num_classes=0,
                 image_batches=True)
    it = pipeline.train_iterator(cfg, seed=0, batch_size=4, process_index=0, process_count=1)
    batches = [next(it) for _ in range(8)]  # two epochs of each kind
    kinds = ["image" if b["video"].shape[1] == 1 else "video" for b in batches]
    assert kinds.count("image") == 2 and kinds.count("video") == 6
    for kind, batch in zip(kinds, batches):
        assert batch["video"].shape == ((4, 1, 24, 24, 3) if kind == "image" else (4, 4, 24, 24, 3))
        assert all(c.startswith("still" if kind == "image" else "video") for c in batch["caption"])
    for kind, count in (("image", 4), ("video", NUM_VIDEOS)):
        first_epoch = [b for k, b in zip(kinds, batches) if k == kind][:count // 4]
        numbers = np.concatenate([decode_colours(b["video"])[1] for b in first_epoch])
        assert sorted(numbers.tolist()) == list(range(NUM_VIDEOS, NUM_VIDEOS + 4) if kind == "image"
                                                else range(NUM_VIDEOS))
    state = it.get_state()
    after = [next(it)["caption"].tolist() for _ in range(3)]
    it.set_state(state)
    assert [next(it)["caption"].tolist() for _ in range(3)] == after
    with pytest.raises(ValueError, match="data.image_batches"):
        pipeline.check_data_config(config(dataset, image_batches=True, audio=True))


def test_make_global_shards_numeric_fields(dataset):
    cfg = config(dataset, format="json", train_annotations=str(dataset / "list.json"))
    batch = next(pipeline.train_iterator(cfg, seed=0, batch_size=8, process_index=0,
                                         process_count=1))
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    arrays = pipeline.make_global(batch, sharding)
    assert sorted(arrays) == ["bad", "label", "targets", "video"]
    assert arrays["video"].shape == (8, 4, 24, 24, 3)
    assert len(arrays["video"].addressable_shards) == 8
    np.testing.assert_array_equal(np.asarray(arrays["label"]), batch["label"])


def test_cached_videos_give_identical_batches(dataset):
    cfg = config(dataset, randaug="")
    plain = pipeline.train_iterator(cfg, seed=3, batch_size=4)
    cached_cfg = config(dataset, randaug="", cache_videos=True)
    cached = pipeline.train_iterator(cached_cfg, seed=3, batch_size=4)
    for _ in range(3):  # the second epoch's clips come from the cache
        a, b = next(plain), next(cached)
        np.testing.assert_array_equal(a["video"], b["video"])
        np.testing.assert_array_equal(a["label"], b["label"])

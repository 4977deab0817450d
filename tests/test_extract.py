"""Feature extraction: clips and timestamps from length / stride / fps, features equal to the model applied directly
to the same frames, resume, corrupt videos, the CLI in a subprocess. Tiny random ViT, 32x32 generated videos."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from invideo_jax import extract, inference
from invideo_jax.convert.api import save
from invideo_jax.data import synthetic, transforms
from invideo_jax.data.video import decode_frames, write_video
from tests.tiny_models import random_variables, tiny

# (frames, fps) of the test videos: longer than several clips, shorter than one clip, a few clips
VIDEOS = {"a.mp4": (37, 10), "short.mp4": (5, 25), "sub/b.mp4": (20, 8)}
CLIP, STRIDE = 8, 4  # the tiny ViT takes T = 4 frames: offsets 0, 2, 4, 6


def write_test_video(path, num_frames, fps, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    frames, _, _ = synthetic.render_clip(seed % 8, np.random.default_rng(seed), num_frames=num_frames, size=32)
    write_video(str(path), frames, fps=fps)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    for seed, (name, (frames, fps)) in enumerate(VIDEOS.items()):
        write_test_video(os.path.join(root, "videos", name), frames, fps, seed)
    variables = random_variables(tiny("vit"), seed=1)
    save(variables, str(root / "checkpoint"))
    model = inference.load(tiny("vit"), str(root / "checkpoint"))
    return root, model, variables


def expected_clips(num_frames, fps):
    """Clip starts and [start, end] seconds from the documented rule, written out independently."""
    starts = list(range(0, num_frames - 6, STRIDE)) or [0]  # last sampled frame start + 6 must exist
    return starts, np.array([[s, min(s + CLIP, num_frames)] for s in starts]) / fps


def direct_outputs(model, variables, clips_of):
    """The model applied in one call to every video's clip frames, decoded, cropped and normalised here without the
    extractor: {path: (pooled (n, D), tokens (n, N, D))} for `clips_of` {path: frame indices (n, T)}."""
    clips = []
    for path, indices in clips_of.items():
        frames = decode_frames(path, lambda n: indices)
        box = transforms.short_side_crop_box(*frames.shape[2:4], 32, 32)
        clips += [transforms.resize_box(clip, box, 32) for clip in frames]
    out = jax.jit(model.model.apply)(variables, transforms.normalize(np.stack(clips), "imagenet"))
    bounds = np.cumsum([0] + [len(indices) for indices in clips_of.values()])
    return {path: (np.asarray(out["pooled"][a:b]), np.asarray(out["tokens"][a:b]))
            for path, a, b in zip(clips_of, bounds[:-1], bounds[1:])}


def test_clip_plan_follows_length_stride_and_fps():
    plan = extract.ClipPlan(num_frames=4, clip_frames=8, stride_frames=4)
    np.testing.assert_array_equal(plan.offsets, [0, 2, 4, 6])
    for n in (1, 5, 7, 8, 37, 100):
        starts, seconds = expected_clips(n, 10.0)
        assert plan.num_clips(n) == len(starts)
        np.testing.assert_allclose(plan.timestamps(n, 10.0), seconds)
        indices = plan.frame_indices(n)
        assert indices.max() <= n - 1 and (indices[:, 0] == starts).all()
        # the streaming path gives the same clips as the formula
        streamed = list(plan.clips((i, np.full(1, i)) for i in range(n) if plan.wanted(i) or i == n - 1))
        np.testing.assert_array_equal(np.stack([ix for ix, _ in streamed]), indices)
        np.testing.assert_array_equal(np.stack([frames[:, 0] for _, frames in streamed]), indices)
    assert np.isnan(plan.timestamps(10, 0.0)).all()  # no frame rate: no seconds
    # VideoMAE dense sampling: 16 frames, rate 4
    np.testing.assert_array_equal(extract.ClipPlan(16, 64, 16).offsets, np.arange(16) * 4)


def test_features_equal_the_model_on_the_same_frames(setup, tmp_path):
    root, model, variables = setup
    videos = extract.find_videos(str(root / "videos"))
    assert [name for _, name in videos] == ["a", "short", os.path.join("sub", "b")]
    entries = extract.extract(model, videos, str(tmp_path / "clips"), mode="clips", clip_frames=CLIP,
                              stride_frames=STRIDE, batch_size=8, progress=False)
    assert [e["status"] for e in entries] == ["done"] * 3
    clips_of, all_features = {}, {}
    for (path, name), entry in zip(videos, entries):
        num_frames, fps = VIDEOS[os.path.relpath(path, root / "videos")]
        starts, seconds = expected_clips(num_frames, fps)
        with np.load(tmp_path / "clips" / f"{name}.npz") as out:
            assert out["features"].shape == (len(starts), 32)
            np.testing.assert_allclose(out["timestamps"], seconds, rtol=1e-12)
            assert (int(out["num_frames"]), float(out["fps"])) == (num_frames, fps)
            assert float(out["duration"]) == pytest.approx(num_frames / fps)
            clips_of[path] = np.minimum(np.array(starts)[:, None] + [0, 2, 4, 6], num_frames - 1)
            np.testing.assert_array_equal(out["frame_indices"], clips_of[path])
            all_features[path] = out["features"]
        assert entry["num_clips"] == len(starts) and entry["output"] == f"{name}.npz"
    direct = direct_outputs(model, variables, clips_of)
    for path, features in all_features.items():
        # sharded over 8 devices and batched with other videos' clips vs one unsharded call: float32 rounding
        np.testing.assert_allclose(features, direct[path][0], atol=1e-5, rtol=1e-5)

    extract.extract(model, videos, str(tmp_path / "pooled"), mode="pooled", clip_frames=CLIP, stride_frames=STRIDE,
                    batch_size=8, progress=False)
    extract.extract(model, videos[:1], str(tmp_path / "tokens"), mode="tokens", clip_frames=CLIP,
                    stride_frames=STRIDE, batch_size=8, progress=False)
    for (path, name) in videos:
        with np.load(tmp_path / "pooled" / f"{name}.npz") as out:
            np.testing.assert_allclose(out["features"], all_features[path].mean(axis=0), atol=1e-6)
    with np.load(tmp_path / "tokens" / "a.npz") as out:  # (clips, t, h*w, D)
        assert out["features"].shape == (8, 2, 16, 32)
        tokens = direct[videos[0][0]][1].reshape(8, 2, 16, 32)
        np.testing.assert_allclose(out["features"], tokens, atol=1e-5, rtol=1e-5)


def test_resume_skips_finished_videos_and_does_new_ones(setup, tmp_path):
    root, model, _ = setup
    videos = extract.find_videos(str(root / "videos"))
    out = tmp_path / "out"
    run = lambda vids, **kw: extract.extract(model, vids, str(out), mode="pooled", clip_frames=CLIP,
                                             stride_frames=STRIDE, batch_size=8, progress=False, **kw)
    run(videos[:2])
    stamps = {name: os.stat(out / f"{name}.npz").st_mtime_ns for name in ("a", "short")}
    entries = run(videos)  # one more video
    assert [e["status"] for e in entries] == ["done"] * 3
    assert {name: os.stat(out / f"{name}.npz").st_mtime_ns for name in stamps} == stamps  # not rewritten
    assert (out / "sub" / "b.npz").exists()
    with open(out / "index.json") as f:
        index = json.load(f)
    assert [v["num_clips"] for v in index["videos"]] == [8, 1, 4] and index["settings"]["stride_frames"] == STRIDE
    with pytest.raises(ValueError, match="other settings .*stride_frames: 4 -> 2"):
        extract.extract(model, videos, str(out), mode="pooled", clip_frames=CLIP, stride_frames=2, progress=False)
    assert not [f for f in os.listdir(out) if extract.PARTIAL in f]  # every write was renamed into place


def test_cli_lists_corrupt_videos_as_failed_and_goes_on(setup, tmp_path):
    root, _, _ = setup
    videos = tmp_path / "videos"
    write_test_video(str(videos / "good.mp4"), 12, 6)
    (videos / "garbage.mp4").write_bytes(b"this is not a video")
    (videos / "empty.avi").write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    (out / f"good.npz{extract.PARTIAL}123").write_bytes(b"half a file of a killed run")
    command = [sys.executable, "-m", "invideo_jax.extract", f"--model={tiny('vit')}",
               f"--checkpoint={root / 'checkpoint'}", f"--videos={videos}", f"--output={out}", "--clip_frames=8",
               "--stride_frames=2", "--batch=8", "--no_progress"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=os.getcwd(), timeout=300)
    assert result.returncode == 1, result.stderr  # some videos failed
    assert "1 of 3 videos have features" in result.stdout and "2 failed" in result.stdout
    with open(out / "index.json") as f:
        index = {os.path.basename(v["video"]): v for v in json.load(f)["videos"]}
    assert index["good.mp4"]["status"] == "done" and index["good.mp4"]["num_clips"] == (11 - 6) // 2 + 1
    for name in ("garbage.mp4", "empty.avi"):
        assert index[name]["status"] == "failed" and index[name]["error"], index[name]
    with open(out / "index.csv") as f:
        assert f.readline().strip() == ",".join(extract.INDEX_FIELDS) and len(f.readlines()) == 3
    assert sorted(os.listdir(out)) == ["good.npz", "index.csv", "index.json", "settings.json"]


def test_internvideo2_classifier_features_are_pooled_and_tokens_have_no_cls(setup, tmp_path):
    """The InternVideo2 kind (the demo's classifier, one layer): features the attention-pooled feature, tokens the
    patch tokens without the CLS token, as the model applied directly to the same frames gives them."""
    root, _, _ = setup
    overrides = {"model.kwargs.depth": 1, "model.kwargs.num_frames": 4, "data.num_frames": 4}  # T = 4 as tiny_vit
    variables = random_variables("demo_iv2_classifier", seed=3, overrides=overrides)
    save(variables, str(tmp_path / "checkpoint"))
    model = inference.load("demo_iv2_classifier", str(tmp_path / "checkpoint"), overrides=overrides)
    assert model.config.model.name == "internvideo2" and model.num_frames == 4
    videos = extract.find_videos(str(root / "videos"))[:1]  # a.mp4: 8 clips
    for mode in ("clips", "tokens"):
        extract.extract(model, videos, str(tmp_path / mode), mode=mode, clip_frames=CLIP, stride_frames=STRIDE,
                        batch_size=8, progress=False)
    path = videos[0][0]
    starts, _ = expected_clips(*VIDEOS["a.mp4"])
    pooled, tokens = direct_outputs(model, variables, {path: np.array(starts)[:, None] + [0, 2, 4, 6]})[path]
    with np.load(tmp_path / "clips" / "a.npz") as out:
        np.testing.assert_allclose(out["features"], pooled, atol=1e-5, rtol=1e-5)
    with np.load(tmp_path / "tokens" / "a.npz") as out:  # (clips, t, h*w, D): 4 frames of 4x4 patches, no CLS
        assert out["features"].shape == (8, 4, 16, 64)
        np.testing.assert_allclose(out["features"], tokens[:, 1:].reshape(8, 4, 16, 64), atol=1e-5, rtol=1e-5)

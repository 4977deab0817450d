"""The synthetic demo dataset: classes differ only by motion; files, lists and caching."""
import json
import os

import numpy as np
import pytest

from invideo_jax.data import synthetic
from invideo_jax.data.annotations import read_annotations
from invideo_jax.data.video import decode_frames

OPPOSITES = [(0, 1), (2, 3), (4, 5), (6, 7)]


def _clip(label, seed, num_frames=16, noise_std=6.0):
    return synthetic.render_clip(label, np.random.default_rng(seed), num_frames=num_frames,
                                 size=48, noise_std=noise_std)[0].astype(np.float32)


def _shape_mask(clip):
    """Pixels whose colour is saturated: the shape (clutter and noise are greyish)."""
    return (clip.max(-1) - clip.min(-1)) > 80


def _shape_area(clip):
    return _shape_mask(clip).sum(axis=(-2, -1))


def test_time_reversal_swaps_opposite_classes():
    for seed in range(4):
        for label, opposite in OPPOSITES:
            forward, backward = _clip(label, seed, noise_std=0), _clip(opposite, seed, noise_std=0)
            np.testing.assert_array_equal(forward[::-1], backward)
            assert not np.array_equal(forward, backward)


def test_a_single_frame_cannot_tell_the_classes_apart():
    for seed in range(3):
        clips = [_clip(label, seed, num_frames=17) for label in range(8)]
        for clip in clips[1:]:
            np.testing.assert_array_equal(clip[8], clips[0][8])
        assert len({clip.tobytes() for clip in clips}) == 8


def test_motion_is_visible():
    areas = {label: np.mean([_shape_area(_clip(label, seed)) for seed in range(8)], axis=0)
             for label in (6, 7, 0)}
    assert areas[6][-1] > 1.8 * areas[6][0] and areas[7][0] > 1.8 * areas[7][-1]
    assert abs(areas[0][-1] / areas[0][0] - 1) < 0.2


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    return synthetic.write_dataset(root, num_train=16, num_val=8, num_frames=8, size=32)


def test_dataset_files_and_lists(small_dataset):
    paths = small_dataset
    train = read_annotations(paths["train_csv"], "videomae", paths["root"])
    val = read_annotations(paths["val_json"], "json", paths["root"])
    assert len(train) == 16 and len(val) == 8
    assert np.bincount([r.label for r in train]).tolist() == [2] * 8
    classes = open(paths["classes"]).read().splitlines()
    assert classes == list(synthetic.CLASSES)
    for record in val:
        assert record.captions[0].endswith(synthetic.CAPTION_PHRASES[record.label][0])
        assert any(color in record.captions[0] for color in synthetic.COLORS)
    frames = decode_frames(train[6].path, lambda count: np.arange(count))
    assert frames.shape == (8, 32, 32, 3)
    area = _shape_area(frames.astype(np.float32))
    assert area[-1] > area[0]  # label 6 grows, also after h264


def test_dataset_is_cached(small_dataset):
    paths = small_dataset
    video = os.path.join(paths["root"], "videos", "train", "00000.mp4")
    before = os.path.getmtime(video)
    assert synthetic.write_dataset(paths["root"], num_train=16, num_val=8, num_frames=8,
                                   size=32) == paths
    assert os.path.getmtime(video) == before
    synthetic.write_dataset(paths["root"], num_train=8, num_val=8, num_frames=8, size=32)
    with open(os.path.join(paths["root"], "synthetic.json")) as f:
        assert json.load(f)["num_train"] == 8
    assert len(open(paths["train_csv"]).readlines()) == 8


def test_dataset_bytes_are_the_same_on_every_write(tmp_path):
    """The demo's reproducibility starts here: x264 with several threads wrote different bytes from run to run."""
    def files(root):
        synthetic.write_dataset(str(root), num_train=16, num_val=8, num_frames=16, size=32)
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    first, second = files(tmp_path / "a"), files(tmp_path / "b")
    assert len(first) > 24 and first == second

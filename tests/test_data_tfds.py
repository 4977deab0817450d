"""TFDS ArrayRecord packing: read back without TensorFlow into the same clips as the files."""
import subprocess
import sys

import numpy as np
import pytest

from invideo_jax.data import pipeline
from invideo_jax.data.tfds_builder import TfdsVideoSource, pack
from invideo_jax.data.video import write_video
from test_data_pipeline import config, flat_clip


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """Five videos (one garbage, one missing) packed as split 'train'; two as split 'val'."""
    root = tmp_path_factory.mktemp("tfds")
    for i in range(3):
        write_video(str(root / f"{i}.mp4"), flat_clip(i))
    (root / "garbage.mp4").write_bytes(b"\x00" * 2000)
    (root / "train.csv").write_text("0.mp4 0\ngarbage.mp4 1\n1.mp4 1\nmissing.mp4 2\n2.mp4 2\n")
    (root / "val.json").write_text('[{"video": "2.mp4", "caption": ["two", "deux"], "label": 2},'
                                   ' {"video": "0.mp4", "caption": "zero", "label": 0}]')
    out = root / "out"
    pack(str(root / "train.csv"), str(root), str(out), "toy", "train")
    dataset_dir = pack(str(root / "val.json"), str(root), str(out), "toy", "val", format="json")
    return root, out, dataset_dir


def _tfds_config(root, out, split, **overrides):
    settings = dict(format="tfds", tfds_dir=str(out), tfds_name="toy", train_split=split,
                    eval_split=split, train_annotations=str(root / "train.csv"),
                    eval_annotations=str(root / "train.csv"), num_classes=3)
    return config(root, **{**settings, **overrides})


def test_source_records_in_annotation_order(packed):
    root, out, dataset_dir = packed
    assert dataset_dir == str(out / "toy" / "1.0.0")
    train = TfdsVideoSource(str(out), "toy", "train")
    assert len(train) == 5 and not train.has_captions
    record, data = train[0]
    assert record.path == str(root / "0.mp4") and record.label == 0
    assert data == (root / "0.mp4").read_bytes()
    assert train[3][1] == b""
    val = TfdsVideoSource(str(out), "toy", "val")
    assert val.has_captions and val[0][0].captions == ("two", "deux")
    assert val[1][0].captions == ("zero",) and val[1][0].label == 0


def test_tfds_clips_equal_file_clips(packed):
    root, out, _ = packed
    file_cfg = _tfds_config(root, out, "train", format="videomae", eval_clips=2, eval_crops=3)
    tfds_cfg = _tfds_config(root, out, "train", eval_clips=2, eval_crops=3)
    for make in (lambda cfg: pipeline.eval_iterator(cfg, batch_size=4, process_index=0,
                                                    process_count=1),
                 lambda cfg: [next(pipeline.train_iterator(cfg, seed=1, batch_size=4,
                                                           process_index=0, process_count=1))]):
        for from_files, from_tfds in zip(make(file_cfg), make(tfds_cfg), strict=True):
            assert sorted(from_files) == sorted(from_tfds)
            for key in from_files:
                np.testing.assert_array_equal(from_files[key], from_tfds[key])


def test_corrupt_and_missing_records_are_bad_videos(packed):
    root, out, _ = packed
    batches = list(pipeline.eval_iterator(_tfds_config(root, out, "train"), batch_size=5,
                                          process_index=0, process_count=1))
    np.testing.assert_array_equal(batches[0]["bad"], [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(batches[0]["mask"], [1, 0, 1, 0, 1])


def test_captions_come_through_tfds(packed):
    root, out, _ = packed
    cfg = _tfds_config(root, out, "val")
    batch = next(pipeline.train_iterator(cfg, seed=0, batch_size=2, process_index=0,
                                         process_count=1))
    assert set(batch["caption"]) <= {"two", "deux", "zero"} and "zero" in batch["caption"]


def test_packing_a_split_again_replaces_only_it(packed, tmp_path):
    root, _, _ = packed
    out = str(tmp_path)
    pack(str(root / "train.csv"), str(root), out, "again", "train")
    pack(str(root / "val.json"), str(root), out, "again", "val", format="json")
    (tmp_path / "one.csv").write_text("0.mp4 0\n")
    pack(str(tmp_path / "one.csv"), str(root), out, "again", "train")
    assert len(TfdsVideoSource(out, "again", "train")) == 1
    assert len(TfdsVideoSource(out, "again", "val")) == 2


def test_command_line_packs_a_split(packed, tmp_path):
    root, _, _ = packed
    subprocess.run([sys.executable, "-m", "invideo_jax.data.tfds_builder",
                    f"--annotations={root / 'train.csv'}", f"--root={root}",
                    f"--out_dir={tmp_path}", "--name=cli_toy", "--split=train"],
                   check=True, capture_output=True)
    assert len(TfdsVideoSource(str(tmp_path), "cli_toy", "train")) == 5

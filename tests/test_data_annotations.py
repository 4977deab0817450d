"""Annotation readers: every format, root joining, clear errors."""
import json

import pytest

from invideo_jax.data.annotations import VideoRecord, read_annotations


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_videomae_list(tmp_path):
    path = _write(tmp_path, "train.csv", "a/x.mp4 3\n\n/abs/y.mp4 0\n")
    assert read_annotations(path, "videomae", root="/data") == [
        VideoRecord("/data/a/x.mp4", 3), VideoRecord("/abs/y.mp4", 0)]


def test_uniformer_list(tmp_path):
    path = _write(tmp_path, "train.csv", "a/x.mp4,7\nb.webm,1\n")
    assert read_annotations(path, "uniformer") == [VideoRecord("a/x.mp4", 7),
                                                   VideoRecord("b.webm", 1)]


def test_videomae_v2_pretrain_list(tmp_path):
    path = _write(tmp_path, "pretrain.csv", "k400/x.mp4 0 -1\n")
    assert read_annotations(path, "videomae_v2", root="r") == [VideoRecord("r/k400/x.mp4", -1)]


def test_json_array_and_lines(tmp_path):
    entries = [{"video": "v.mp4", "caption": "a dog runs"},
               {"image": "i.jpg", "caption": ["one", "two"]},
               {"image": "clip.mp4", "caption": "VINDLU-style video under 'image'", "label": 2}]
    expected = [VideoRecord("/d/v.mp4", -1, ("a dog runs",), False),
                VideoRecord("/d/i.jpg", -1, ("one", "two"), True),
                VideoRecord("/d/clip.mp4", 2, ("VINDLU-style video under 'image'",), False)]
    array = _write(tmp_path, "a.json", json.dumps(entries))
    lines = _write(tmp_path, "a.jsonl", "\n".join(json.dumps(e) for e in entries))
    assert read_annotations(array, "json", root="/d") == expected
    assert read_annotations(lines, "json", root="/d") == expected


def test_rawframe_list(tmp_path):
    """Official RawFrameClsDataset lists: `frame_dir total_frames label`, space separated."""
    path = _write(tmp_path, "train.csv", "ssv2/74225 62 140\n/abs/k400/abseiling_0 300 0\n")
    assert read_annotations(path, "rawframes", root="/data") == [
        VideoRecord("/data/ssv2/74225", 140, frame_count=62), VideoRecord("/abs/k400/abseiling_0", 0, frame_count=300)]


def test_json_windows(tmp_path):
    entries = [{"video": "a.mp4", "video_start_frame": 10, "video_end_frame": 25},
               {"video": "b.mp4", "caption": "c", "start": 1, "end": 2.5},
               {"video": "c.mp4", "video_start_frame": 4, "video_end_frame": 4}]
    assert read_annotations(_write(tmp_path, "w.json", json.dumps(entries)), "json") == [
        VideoRecord("a.mp4", frame_window=(10, 25)), VideoRecord("b.mp4", captions=("c",), time_window=(1.0, 2.5)),
        VideoRecord("c.mp4", frame_window=(4, 4))]


@pytest.mark.parametrize("entry, message", [
    ({"video_start_frame": 3}, "'video_start_frame' and 'video_end_frame' must both be given"),
    ({"video_start_frame": 9, "video_end_frame": 3}, "0 <= video_start_frame <= video_end_frame"),
    ({"video_start_frame": 1.5, "video_end_frame": 3}, "frame indices"),
    ({"start": 2.0, "end": 2.0}, "0 <= start < end"),
    ({"start": -1, "end": 2}, "seconds"),
    ({"end": 2}, "'start' and 'end' must both be given"),
    ({"start": 0, "end": 2, "video_start_frame": 0, "video_end_frame": 9}, "not both"),
])
def test_bad_windows_are_named(tmp_path, entry, message):
    path = _write(tmp_path, "w.json", json.dumps([dict(video="a.mp4", **entry)]))
    with pytest.raises(ValueError, match=f"w.json: entry 0: .*{message}"):
        read_annotations(path, "json")


@pytest.mark.parametrize("format, text, where", [
    ("videomae", "a.mp4 1\nb.mp4\n", ":2:"),
    ("videomae", "a.mp4 x\n", ":1:"),
    ("videomae", "a.mp4 0 -1\n", ":1:"),
    ("uniformer", "a.mp4,1\na.mp4 1\n", ":2:"),
    ("videomae_v2", "a.mp4 0 -1\na.mp4 1\n", ":2:"),
    ("rawframes", "a 30 1\nb 30\n", ":2:"),
    ("rawframes", "a 0 1\n", ":1:"),
    ("json", '{"video": "a.mp4"}\n{"caption": "no path"}\n', ":2:"),
    ("json", '{"video": "a.mp4"}\n{"video": \n', ":2:"),
    ("json", '[{"video": "a.mp4", "caption": 3}]', "entry 0"),
])
def test_malformed_lines_name_file_and_line(tmp_path, format, text, where):
    path = _write(tmp_path, "bad.txt", text)
    with pytest.raises(ValueError, match=f"bad.txt{where}" if where.startswith(":") else where):
        read_annotations(path, format)


def test_empty_annotation_file_fails_clearly(tmp_path):
    path = _write(tmp_path, "empty.csv", "\n\n")
    with pytest.raises(ValueError, match="no examples"):
        read_annotations(path, "videomae")
    with pytest.raises(ValueError, match="no examples"):
        read_annotations(_write(tmp_path, "empty.json", "[]"), "json")


def test_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="Unknown annotation format"):
        read_annotations(_write(tmp_path, "a.csv", "a.mp4 1\n"), "kinetics")

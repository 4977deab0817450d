"""Rawframe folders and annotation windows: a folder of a video's frames gives the video's batches; samplers stay
inside `video_start_frame`/`video_end_frame` and `start`/`end` second windows."""
import json
import logging

import numpy as np
import pytest
from PIL import Image

from invideo_jax.data import pipeline
from invideo_jax.data.video import BadVideo, decode_frames, read_frame_folder, within
from test_data_pipeline import config, dataset, decode_colours, flat_clip  # noqa: F401 (dataset: a fixture)

FOLDER_VIDEOS = 4  # videos also stored as frame folders


def write_frame_folder(directory, frames, template: str, start_index: int) -> None:
    directory.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(directory / template.format(i + start_index))


@pytest.fixture(scope="module", params=[("img_{:05}.png", 1), ("{:06}.png", 0)], ids=["img_from_1", "plain_from_0"])
def frame_dataset(request, dataset, tmp_path_factory):
    """The first FOLDER_VIDEOS pipeline videos decoded and stored losslessly as frame folders, with two lists of the
    same examples: video files (`videos.csv`) and frame folders (`frames.csv`, `dir num_frames label`)."""
    template, start_index = request.param
    root = tmp_path_factory.mktemp("rawframes")
    videos, folders = [], []
    for i in range(FOLDER_VIDEOS):
        frames = decode_frames(str(dataset / f"{i}.mp4"), np.arange)
        write_frame_folder(root / f"v{i}", frames, template, start_index)
        videos.append(f"{dataset / f'{i}.mp4'} {i}\n")
        folders.append(f"v{i} {len(frames)} {i}\n")
    (root / "videos.csv").write_text("".join(videos))
    (root / "frames.csv").write_text("".join(folders))
    return root, template, start_index


def _folder_and_video_configs(frame_dataset, **overrides):
    root, template, start_index = frame_dataset
    as_folders = config(root, format="rawframes", train_annotations=str(root / "frames.csv"),
                        eval_annotations=str(root / "frames.csv"), frame_template=template,
                        frame_start_index=start_index, num_classes=FOLDER_VIDEOS, **overrides)
    as_videos = config(root, train_annotations=str(root / "videos.csv"), eval_annotations=str(root / "videos.csv"),
                       num_classes=FOLDER_VIDEOS, **overrides)
    return as_folders, as_videos


@pytest.mark.parametrize("sampling", ["dense", "segment"])
def test_frame_folders_give_the_batches_of_their_videos(frame_dataset, sampling):
    """The same frames, stored as PNG: training (same seed) and evaluation batches are identical to the video's."""
    as_folders, as_videos = _folder_and_video_configs(frame_dataset, sampling=sampling, eval_clips=2, eval_crops=2,
                                                      randaug="rand-m7-n2", random_erase=0.25)
    train = [next(pipeline.train_iterator(cfg, seed=3, batch_size=4, process_index=0, process_count=1))
             for cfg in (as_folders, as_videos)]
    evaluation = [list(pipeline.eval_iterator(cfg, batch_size=4, process_index=0, process_count=1))
                  for cfg in (as_folders, as_videos)]
    for folder_batch, video_batch in [train, *zip(*evaluation)]:
        assert sorted(folder_batch) == sorted(video_batch)
        for key in folder_batch:
            np.testing.assert_array_equal(folder_batch[key], video_batch[key], err_msg=key)
    assert len(evaluation[0]) == FOLDER_VIDEOS * 4 // 4
    assert not train[0]["bad"].any()


def test_missing_folder_or_frame_is_named(tmp_path):
    frames = flat_clip(0, num_frames=6)
    write_frame_folder(tmp_path / "clip", frames, "img_{:05}.jpg", 1)
    with pytest.raises(BadVideo, match="frame folder .*nowhere does not exist"):
        read_frame_folder(str(tmp_path / "nowhere"), 6, np.arange)
    with pytest.raises(BadVideo, match=r"frame 6 of 8: .*img_00007\.jpg"):  # the list counts 8 frames, 6 exist
        read_frame_folder(str(tmp_path / "clip"), 8, np.arange)
    with pytest.raises(BadVideo, match="6 frames, fewer than min_frames=7"):
        read_frame_folder(str(tmp_path / "clip"), 6, np.arange, min_frames=7)
    clip = read_frame_folder(str(tmp_path / "clip"), 6, lambda n: np.array([[0, 5], [2, 2]]))
    assert clip.shape == (2, 2, 32, 48, 3)
    np.testing.assert_allclose(clip.astype(int), frames[[[0, 5], [2, 2]]], atol=6)  # JPEG of flat colours


def test_bad_frame_folders_are_replaced_and_logged(frame_dataset, tmp_path, caplog):
    root = frame_dataset[0]
    (tmp_path / "list.csv").write_text(f"{root / 'v0'} 30 0\n{tmp_path / 'gone'} 30 1\n{root / 'v1'} 99 1\n")
    cfg, _ = _folder_and_video_configs(frame_dataset, sampling="segment")  # segments reach past frame 29 of 99
    cfg.train_annotations = str(tmp_path / "list.csv")
    with caplog.at_level(logging.WARNING):
        batch = next(pipeline.train_iterator(cfg, seed=0, batch_size=6, process_index=0, process_count=1))
    assert batch["bad"].sum() == 4 and set(batch["label"][batch["bad"] == 1]) == {0}  # only v0 can be read
    assert "gone does not exist" in caplog.text and " of 99: FileNotFoundError" in caplog.text


def test_rawframes_without_audio():
    cfg = pipeline.default_data_config()
    cfg.format, cfg.audio = "rawframes", True
    with pytest.raises(ValueError, match="data.audio needs video files"):
        pipeline.check_data_config(cfg)


def test_within_shifts_and_clips_the_sampler():
    assert within(np.arange, 10, 13)(30).tolist() == [10, 11, 12, 13]
    assert within(np.arange, 27, 40)(30).tolist() == [27, 28, 29]  # clipped to the video's end
    assert within(np.arange, 50, 60)(30).tolist() == [29]  # a window past the end: the last frame


@pytest.fixture(scope="module")
def windows(dataset, tmp_path_factory):
    """Video 5 (30 frames at 30 fps) with a frame window 10..25 and a window 0.5 s .. 0.8 s (frames 15..24)."""
    root = tmp_path_factory.mktemp("windows")
    entries = [{"video": str(dataset / "5.mp4"), "label": 5, "video_start_frame": 10, "video_end_frame": 25},
               {"video": str(dataset / "5.mp4"), "label": 5, "start": 0.5, "end": 0.8}]
    for name, entry in zip(("frames", "seconds"), entries):
        (root / f"{name}.json").write_text(json.dumps([entry]))
    return root


@pytest.mark.parametrize("window, expected", [
    # segment sampling of T=4 over the n window frames (UniFormerV2 get_seq_frames): segment (n-1)/4, starts
    # round(segment*k), evaluation offset int(segment/2).
    ("frames", [11, 15, 19, 22]),  # n=16: segment 3.75, starts 0 4 8 11 (round half to even), offset 1, + 10
    ("seconds", [16, 18, 20, 23]),  # frames round(0.5*30)=15 .. round(0.8*30)=24, n=10: 2.25, 0 2 4 7, 1, + 15
])
def test_windows_restrict_the_sampler(windows, window, expected):
    cfg = config(windows, format="json", sampling="segment", train_annotations=str(windows / f"{window}.json"),
                 eval_annotations=str(windows / f"{window}.json"), eval_clips=1, eval_crops=1, flip=False)
    batch = next(pipeline.eval_iterator(cfg, batch_size=1, process_index=0, process_count=1))
    frames, videos = decode_colours(batch["video"])
    assert frames.tolist() == [expected] and videos.tolist() == [5]
    first, last = (10, 25) if window == "frames" else (15, 24)
    train = pipeline.train_iterator(cfg, seed=0, batch_size=4, process_index=0, process_count=1)
    frames = np.concatenate([decode_colours(next(train)["video"])[0] for _ in range(3)])
    assert frames.min() >= first and frames.max() <= last and len(np.unique(frames)) > 4

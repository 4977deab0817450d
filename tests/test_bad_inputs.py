"""Bad inputs get a clear answer or a documented fallback (docs/fault_tolerance.md, docs/data.md): videos that are
empty, audio-only, of unusual pixel formats or rotated; captions longer than the context; a checkpoint of another
model in the workdir. (Corrupt, truncated and missing videos: test_data_video.py and test_data_pipeline.py; config
fields: test_train.py, test_data_pipeline.py; init_from of another model: test_checkpoint.py.)"""
import logging

import av
import jax.numpy as jnp
import numpy as np
import pytest
from test_checkpoint import abstract, make_state
from test_data_pipeline import config
from test_data_video import frame_numbers, numbered_frames

from invideo_jax.data import pipeline
from invideo_jax.data.tokenizer import load_tokenizer, train_word_tokenizer
from invideo_jax.data.video import BadVideo, decode_frames
from invideo_jax.train import checkpoint

FRAMES = 20
# (file, codec, stored pixel format): all decode to the same RGB frames.
PIXEL_FORMATS = [("yuv444p.mp4", "libx264", "yuv444p"), ("yuv420p10le.mp4", "libx264", "yuv420p10le"),
                 ("gbrp.mp4", "libx264rgb", "rgb24"), ("rgb24.mov", "png", "rgb24"), ("gray.mkv", "ffv1", "gray")]


def write(path, codec="libx264", pix_fmt="yuv420p", frames=None, rotation=None) -> str:
    frames = numbered_frames(FRAMES) if frames is None else frames
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if rotation is not None:
            stream.set_display_rotation(rotation)
        container.start_encoding()  # the header, also for a file without frames
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return str(path)


def write_audio_only(path) -> str:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return str(path)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    good = {name: write(root / name, codec, pix_fmt) for name, codec, pix_fmt in PIXEL_FORMATS}
    bad = {"no_frames.mp4": write(root / "no_frames.mp4", frames=numbered_frames(0)),  # header, no frames
           "no_frames.mkv": write(root / "no_frames.mkv", frames=numbered_frames(0)),
           "audio_only.m4a": write_audio_only(root / "audio_only.m4a")}
    return root, good, bad


@pytest.mark.parametrize("name, codec, pix_fmt", PIXEL_FORMATS)
def test_unusual_pixel_formats_decode_to_the_same_frames(videos, name, codec, pix_fmt):
    _, good, _ = videos
    with av.open(good[name]) as container:
        stored = container.streams.video[0].codec_context.pix_fmt
    assert stored == ("gbrp" if codec == "libx264rgb" else pix_fmt)  # really stored that way
    frames = decode_frames(good[name], lambda count: np.arange(0, count, 3))
    assert frames.dtype == np.uint8 and frames.shape == (7, 32, 72, 3)
    np.testing.assert_array_equal(frame_numbers(frames), np.arange(0, FRAMES, 3))
    if pix_fmt == "gray":
        assert (frames[..., 0] == frames[..., 1]).all() and (frames[..., 1] == frames[..., 2]).all()


@pytest.mark.parametrize("name, message", [("no_frames.mp4", r"no video stream \(streams: none\)"),
                                           ("no_frames.mkv", "End of file"),
                                           ("audio_only.m4a", r"no video stream \(streams: audio\)")])
def test_empty_and_audio_only_files_are_bad_videos(videos, name, message):
    _, _, bad = videos
    with pytest.raises(BadVideo, match=message):
        decode_frames(bad[name], lambda count: np.arange(4))


def test_pipeline_skips_counts_and_logs_them_and_keeps_every_good_video(videos, caplog):
    root, good, bad = videos
    names = list(good) + list(bad)
    (root / "list.csv").write_text("".join(f"{name} {label}\n" for label, name in enumerate(names)))
    cfg = config(root)
    caplog.set_level(logging.WARNING)
    batch = next(pipeline.train_iterator(cfg, seed=0, batch_size=len(names), process_index=0, process_count=1))
    assert batch["bad"].sum() == len(bad)
    assert sorted(batch["label"][batch["bad"] == 0]) == list(range(len(good)))  # every good video, once
    for path in bad.values():
        assert f"Bad video, replaced by another example: {path}" in caplog.text


def test_rotation_metadata_is_ignored_frames_decode_as_stored(tmp_path):
    """Like decord, which the original InternVideo/VideoMAE pipelines use: a phone video tagged 'rotate 90' is
    decoded in its stored orientation (docs/data.md says how to bake the rotation in)."""
    rotated = write(tmp_path / "rotated.mp4", rotation=90)
    with av.open(rotated) as container:
        assert next(container.decode(video=0)).rotation == 90  # the tag is there
    frames = decode_frames(rotated, lambda count: np.arange(count))
    assert frames.shape == (FRAMES, 32, 72, 3)  # stored (H, W), not turned to (72, 32)
    np.testing.assert_array_equal(frames, decode_frames(write(tmp_path / "plain.mp4"), lambda count: np.arange(count)))


def test_long_text_is_cut_keeping_the_end_token(tmp_path):
    words = train_word_tokenizer(["a man plays the guitar on a small stage"], str(tmp_path / "words"),
                                 context_length=6)
    ids = words.encode(["a man plays the guitar on a small stage", "a man"])
    full = load_tokenizer("words", str(tmp_path / "words"), context_length=20).encode("a man plays the guitar")[0]
    np.testing.assert_array_equal(ids[0], [*full[:5], words.end_id])  # start, 4 words, end
    np.testing.assert_array_equal(ids[1], [words.start_id, *full[1:3], words.end_id, words.pad_id, words.pad_id])
    try:
        bert = load_tokenizer("bert", context_length=6)
    except FileNotFoundError:
        return  # the vocabulary package is not installed (test_tokenizer.py covers CLIP the same way)
    ids = bert.encode("a man plays the guitar on a small stage")[0]
    assert ids[0] == bert.start_id and ids[-1] == bert.end_id and bert.pad_id not in ids


def test_resuming_a_workdir_of_another_model_lists_the_differences(tmp_path):
    ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
    ckpt.save(5, make_state(5))
    wider = make_state(params={"encoder": {"pos_embed": jnp.zeros((1, 17, 16)),
                                           "blocks_0": {"kernel": jnp.zeros((16, 16), jnp.bfloat16)}},
                               "head": {"kernel": jnp.zeros((16, 4))}, "extra": {"bias": jnp.zeros(4)}})
    with pytest.raises(ValueError) as error:
        ckpt.restore(abstract(wider))
    ckpt.close()
    lines = str(error.value).splitlines()
    assert lines[0] == (f"checkpoint step 5 in {tmp_path} does not fit this model (another model or size in this "
                        "workdir?); 12 difference(s), first:")
    assert lines[1:5] == ["  params/encoder/blocks_0/kernel: model (16, 16) vs checkpoint (8, 16)",
                          "  params/encoder/pos_embed: model (1, 17, 16) vs checkpoint (1, 17, 8)",
                          "  params/extra/bias: model (4,), missing in the checkpoint",
                          "  params/head/kernel: model (16, 4) vs checkpoint (8, 4)"]

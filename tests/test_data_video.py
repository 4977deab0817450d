"""PyAV decoding of chosen frames, bad-input detection and the frame samplers."""
import numpy as np
import pytest
from PIL import Image

from invideo_jax.data import video
from invideo_jax.data.video import BadVideo, decode_frames, dense_indices, segment_indices

BITS = 9  # frame numbers up to 511, one black/white vertical stripe per bit


def numbered_frames(count: int, height: int = 32, width: int = 72, first: int = 0) -> np.ndarray:
    """Frames whose stripes spell the frame number (first + t) in binary."""
    frames = np.zeros((count, height, width, 3), np.uint8)
    stripe = width // BITS
    for t in range(count):
        for bit in range(BITS):
            if (first + t) >> bit & 1:
                frames[t, :, bit * stripe:(bit + 1) * stripe] = 255
    return frames


def frame_numbers(frames: np.ndarray) -> np.ndarray:
    """Reads back the numbers of numbered frames (any leading shape), robust to compression."""
    height, width = frames.shape[-3:-1]
    stripe = width // BITS
    flat = frames.reshape(-1, height, width, 3).astype(np.float32)
    centres = [flat[:, :, bit * stripe + 2:(bit + 1) * stripe - 2].mean(axis=(1, 2, 3)) > 128
               for bit in range(BITS)]
    numbers = sum(centre.astype(np.int64) << bit for bit, centre in enumerate(centres))
    return numbers.reshape(frames.shape[:-3])


def write_numbered_video(path, count: int, **kwargs) -> str:
    video.write_video(str(path), numbered_frames(count, **kwargs), options={"g": "24"})
    return str(path)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    return write_numbered_video(tmp_path_factory.mktemp("video") / "long.mp4", 200)


@pytest.mark.parametrize("first", [0, 5, 60, 150, 199])
def test_decoded_frames_are_the_requested_ones(long_video, first):
    wanted = np.array([[first, first + 3, first], [first + 1, first + 2, first + 7]])
    wanted = np.minimum(wanted, 199)
    frames = decode_frames(long_video, lambda count: wanted)
    assert frames.shape == (2, 3, 32, 72, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frame_numbers(frames), wanted)


def test_seeking_and_sequential_decoding_agree(long_video, monkeypatch):
    wanted = np.arange(100, 164, 4)
    seeking = decode_frames(long_video, lambda count: wanted)
    monkeypatch.setattr(video, "SEEK_MIN_FRAME", 10**9)
    sequential = decode_frames(long_video, lambda count: wanted)
    np.testing.assert_array_equal(frame_numbers(seeking), wanted)
    np.testing.assert_array_equal(frame_numbers(sequential), wanted)


def test_bytes_and_frame_count(long_video):
    with open(long_video, "rb") as f:
        data = f.read()
    counts = []
    frames = decode_frames(data, lambda count: counts.append(count) or np.array([count - 1]))
    assert counts == [200]
    np.testing.assert_array_equal(frame_numbers(frames), [199])


def test_image_is_a_one_frame_video(tmp_path):
    path = tmp_path / "still.png"
    Image.fromarray(numbered_frames(1, first=77)[0]).save(path)
    counts = []
    frames = decode_frames(str(path), lambda count: counts.append(count) or
                           dense_indices(count, 4, 2, view=0))
    assert counts == [1]
    np.testing.assert_array_equal(frame_numbers(frames), [77] * 4)


def _truncated(path, tmp_path, name, fraction=0.5):
    data = open(path, "rb").read()
    (tmp_path / name).write_bytes(data[:int(len(data) * fraction)])
    return str(tmp_path / name)


def test_bad_inputs_raise_bad_video(tmp_path, long_video):
    faststart = str(tmp_path / "faststart.mp4")
    video.write_video(faststart, numbered_frames(120), options={"g": "24"})
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    bad_sources = [str(tmp_path / "missing.mp4"), str(tmp_path / "empty.mp4"),
                   str(tmp_path / "garbage.mp4"), b"not a video",
                   _truncated(long_video, tmp_path, "cut.mp4")]
    for source in bad_sources:
        with pytest.raises(BadVideo):
            decode_frames(source, lambda count: np.arange(4))
    with pytest.raises(BadVideo, match="min_frames"):
        decode_frames(long_video, lambda count: np.arange(4), min_frames=500)


def test_truncated_data_with_intact_header(tmp_path):
    """A faststart mp4 (header first) cut mid-packet raises; cut between packets it ends early."""
    path = str(tmp_path / "front.mp4")
    with video.av.open(path, "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=30, options={"bf": "0"})
        stream.width, stream.height, stream.pix_fmt = 72, 32, "yuv420p"
        for frame in numbered_frames(150):
            container.mux(stream.encode(video.av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    with video.av.open(path) as container:
        ends = [packet.pos + packet.size for packet in container.demux(video=0) if packet.size]
    data = open(path, "rb").read()
    (tmp_path / "mid_packet.mp4").write_bytes(data[:ends[80] - 10])
    (tmp_path / "at_packet.mp4").write_bytes(data[:ends[80]])
    with pytest.raises(BadVideo):
        decode_frames(str(tmp_path / "mid_packet.mp4"), lambda count: np.array([79, 100]))
    cut = str(tmp_path / "at_packet.mp4")
    np.testing.assert_array_equal(frame_numbers(decode_frames(cut, lambda n: np.arange(3))),
                                  [0, 1, 2])
    past_end = decode_frames(cut, lambda count: np.arange(79, 83))
    np.testing.assert_array_equal(frame_numbers(past_end), [79, 80, 80, 80])
    with pytest.raises(BadVideo, match="truncated"):
        decode_frames(cut, lambda count: np.array([81 + video.HEADER_SLACK]))


def test_dense_sampler_training_windows():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(2000):
        indices = dense_indices(100, 8, 4, rng=rng)
        np.testing.assert_array_equal(np.diff(indices), 4)
        starts.add(int(indices[0]))
    assert starts == set(range(100 - 29 + 1))


def test_dense_sampler_test_views_and_short_videos():
    for k in range(5):
        indices = dense_indices(300, 16, 4, view=k, num_views=5)
        assert indices[0] == k * (300 - 61) // 4
    assert dense_indices(300, 16, 4, view=0, num_views=1)[0] == (300 - 61) // 2
    np.testing.assert_array_equal(dense_indices(10, 6, 3, view=0, num_views=1),
                                  [0, 3, 6, 9, 9, 9])
    np.testing.assert_array_equal(dense_indices(10, 6, 3, rng=np.random.default_rng(0)),
                                  [0, 3, 6, 9, 9, 9])


def test_segment_sampler_matches_get_seq_frames():
    video_frames, num_frames = 100, 8
    segment = (video_frames - 1) / num_frames
    starts = [int(np.round(segment * i)) for i in range(num_frames)]
    ends = [int(np.round(segment * (i + 1))) for i in range(num_frames)]
    rng = np.random.default_rng(0)
    seen = np.zeros(video_frames, bool)
    for _ in range(200):
        indices = segment_indices(video_frames, num_frames, rng=rng)
        assert all(s <= i <= e for s, i, e in zip(starts, indices, ends))
        seen[indices] = True
    assert seen[:ends[-1] + 1].all()
    for clip in range(3):
        expected = [s + int(segment / 4 * (clip + 1)) for s in starts]
        np.testing.assert_array_equal(segment_indices(100, 8, view=clip, num_views=3), expected)
    centre = [s + int(segment / 2) for s in starts]
    np.testing.assert_array_equal(segment_indices(100, 8), centre)


def test_segment_sampler_short_videos_repeat_frames():
    indices = segment_indices(3, 8, view=0, num_views=1)
    assert indices.min() >= 0 and indices.max() <= 2 and len(indices) == 8
    assert list(indices) == sorted(indices)
    np.testing.assert_array_equal(segment_indices(1, 4, rng=np.random.default_rng(0)), 0)

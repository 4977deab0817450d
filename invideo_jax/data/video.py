"""PyAV decoding of chosen frames, frame folders (rawframes), and the frame-index samplers (dense and segment)."""
import io
import os
from typing import Callable

import av
import numpy as np
from PIL import Image

from invideo_jax.data.transforms import spaced_offset

# Seek to the keyframe before the first wanted frame when it lies at least this far in. A seek
# costs nothing measurable and saves decoding when a keyframe lies between the start and the frame
# (docs/benchmarks.md); nearer frames rarely have one (x264's minimum keyframe interval is 25), and
# sequential decoding there counts frames instead of trusting timestamps.
SEEK_MIN_FRAME = 32
# Container headers may count a frame or two that the decoder never returns (edit lists, delayed
# frames): wanted frames this close past the end repeat the last one instead of making a bad video.
HEADER_SLACK = 2


class BadVideo(Exception):
    """A video that cannot supply the requested frames (missing, empty, truncated, undecodable)."""


def _open(source: str | bytes):
    return av.open(io.BytesIO(source) if isinstance(source, bytes) else source)


def _video_stream(container):
    if not container.streams.video:  # audio only, or an mp4 whose video track has no frames (dropped on reading)
        kinds = ", ".join(sorted({stream.type for stream in container.streams})) or "none"
        raise BadVideo(f"no video stream (streams: {kinds})")
    stream = container.streams.video[0]
    # Parallelism comes from decoding many clips at once; codec threads cost more to start than they save.
    stream.codec_context.thread_count = 1
    return stream


def _count_frames(source: str | bytes) -> int:
    """Counts the video packets, for containers whose header gives no frame count."""
    with _open(source) as container:
        return sum(1 for packet in container.demux(_video_stream(container)) if packet.size)


def _position(frame, stream) -> int | None:
    """The frame's index in the video from its timestamp (constant frame rate assumed)."""
    if frame.pts is None or not stream.average_rate:
        return None
    offset = frame.pts - (stream.start_time or 0)
    return round(offset * stream.time_base * stream.average_rate)


def _decode(container, stream, wanted: np.ndarray, seek: bool) -> dict[int, np.ndarray]:
    """Decodes up to the last wanted index; returns the wanted frames found, by index."""
    if seek:
        target = wanted[0] / stream.average_rate / stream.time_base
        container.seek(int(target) + (stream.start_time or 0), stream=stream)
    wanted_set = set(wanted.tolist())
    frames, position, frame = {}, None, None
    for frame in container.decode(stream):
        if position is None:
            position = _position(frame, stream) if seek else 0
            if position is None:  # no timestamp: where the seek landed is unknown
                return {}
        else:
            position += 1
        if position in wanted_set:
            frames[position] = frame.to_ndarray(format="rgb24")
        if position >= wanted[-1]:
            break
    else:  # the stream ended before the last wanted frame
        if frame is not None and wanted[-1] - position <= HEADER_SLACK:
            last = frame.to_ndarray(format="rgb24")
            frames.update({i: last for i in wanted_set if i > position})
    return frames


def decode_frames(source: str | bytes, indices_for: Callable[[int], np.ndarray],
                  *, min_frames: int = 1) -> np.ndarray:
    """Decodes frames indices_for(frame_count) (any shape) of a video path or encoded bytes.

    Returns uint8 (*indices.shape, H, W, 3). A still image is a one-frame video. Raises BadVideo.
    """
    try:
        with _open(source) as container:
            stream = _video_stream(container)
            count = stream.frames or _count_frames(source)
            if count < min_frames:
                raise BadVideo(f"{count} frames, fewer than min_frames={min_frames}")
            indices = np.asarray(indices_for(count))
            wanted = np.unique(indices)
            seek = bool(wanted[0] >= SEEK_MIN_FRAME and stream.average_rate)
            frames = _decode(container, stream, wanted, seek)
        if seek and len(frames) < len(wanted):  # landed past the first wanted frame, or unknown
            with _open(source) as container:
                frames = _decode(container, _video_stream(container), wanted, seek=False)
    except (OSError, av.error.FFmpegError) as e:
        raise BadVideo(f"{type(e).__name__}: {e}") from e
    missing = [i for i in wanted.tolist() if i not in frames]
    if missing:
        raise BadVideo(f"frame {missing[0]} of {count} could not be decoded (truncated?)")
    clip = np.stack([frames[i] for i in indices.ravel().tolist()])
    return clip.reshape(indices.shape + clip.shape[1:])


def cached_frames(cache: dict, key: str, read_all: Callable[[], np.ndarray],
                  indices_for: Callable[[int], np.ndarray]) -> np.ndarray:
    """Frames indices_for(frame_count) of the whole video cache[key], which read_all() decodes the first time."""
    if key not in cache:
        cache[key] = read_all()
    frames = cache[key]
    return frames[np.asarray(indices_for(len(frames)))]


def read_frame_folder(directory: str, frame_count: int, indices_for: Callable[[int], np.ndarray], *,
                      template: str = "img_{:05}.jpg", start_index: int = 1, min_frames: int = 1) -> np.ndarray:
    """Frames indices_for(frame_count) (any shape) of a folder of numbered images: frame i is the file
    template.format(i + start_index) (the official rawframe lists: `img_{:05}.jpg` from 1).

    Returns uint8 (*indices.shape, H, W, 3), like decode_frames. Raises BadVideo naming a missing folder or frame.
    """
    if not os.path.isdir(directory):
        raise BadVideo(f"frame folder {directory} does not exist")
    if frame_count < min_frames:
        raise BadVideo(f"{frame_count} frames, fewer than min_frames={min_frames}")
    indices = np.asarray(indices_for(frame_count))
    frames = {}
    for index in np.unique(indices).tolist():
        path = os.path.join(directory, template.format(index + start_index))
        try:
            with Image.open(path) as image:
                frames[index] = np.asarray(image.convert("RGB"))
        except OSError as e:  # missing or unreadable file (PIL's UnidentifiedImageError is an OSError)
            raise BadVideo(f"frame {index} of {frame_count}: {type(e).__name__}: {e}") from e
    clip = np.stack([frames[i] for i in indices.ravel().tolist()])
    return clip.reshape(indices.shape + clip.shape[1:])


def within(indices_for: Callable[[int], np.ndarray], first: int, last: int) -> Callable[[int], np.ndarray]:
    """`indices_for` applied to the frames first..last (both included, clipped to the video) instead of the whole
    video: the window's length goes in, and the indices come out shifted by its start."""

    def windowed(video_frames: int) -> np.ndarray:
        start = min(max(first, 0), video_frames - 1)
        stop = max(min(last, video_frames - 1), start)
        return start + np.asarray(indices_for(stop - start + 1))

    return windowed


def frame_rate(source: str | bytes) -> float:
    """Frames per second from the container header (average, else guessed rate); 0.0 if unknown.
    Raises BadVideo."""
    try:
        with _open(source) as container:
            stream = _video_stream(container)
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    except (OSError, av.error.FFmpegError) as e:
        raise BadVideo(f"{type(e).__name__}: {e}") from e
    return float(rate) if rate else 0.0


def iter_frames(source: str | bytes, wanted: Callable[[int], bool] | None = None):
    """Decodes a whole video in order: yields (index, uint8 (H, W, 3)) for each frame that
    wanted(index) accepts (all if None), and the last frame in any case, so the last index + 1 is
    the frame count. Frames that are not wanted are not converted to RGB. Raises BadVideo (also for
    a video without decodable frames)."""
    try:
        with _open(source) as container:
            index, unsent = -1, None
            for index, frame in enumerate(container.decode(_video_stream(container))):
                if wanted is None or wanted(index):
                    unsent = None
                    yield index, frame.to_ndarray(format="rgb24")
                else:
                    unsent = frame
            if index < 0:
                raise BadVideo("no decodable frames")
            if unsent is not None:
                yield index, unsent.to_ndarray(format="rgb24")
    except (OSError, av.error.FFmpegError) as e:
        raise BadVideo(f"{type(e).__name__}: {e}") from e


def dense_indices(video_frames: int, num_frames: int, stride: int, *,
                  rng: np.random.Generator | None = None, view: int = 0,
                  num_views: int = 1) -> np.ndarray:
    """`num_frames` frames `stride` apart: a random window (rng), else the view-th of num_views
    evenly spaced windows; indices past the end repeat the last frame."""
    span = (num_frames - 1) * stride + 1
    room = max(video_frames - span, 0)
    start = int(rng.integers(room + 1)) if rng is not None else spaced_offset(room, view, num_views)
    return np.minimum(start + stride * np.arange(num_frames), video_frames - 1)


def segment_indices(video_frames: int, num_frames: int, *,
                    rng: np.random.Generator | None = None, view: int = 0,
                    num_views: int = 1) -> np.ndarray:
    """One frame in each of `num_frames` equal segments (UniFormerV2 `get_seq_frames`): random in
    training (rng), else at offset (view+1)/(num_views+1) of each segment."""
    segment = max(video_frames - 1, 0) / num_frames
    starts = np.round(segment * np.arange(num_frames)).astype(np.int64)
    if rng is not None:
        ends = np.round(segment * np.arange(1, num_frames + 1)).astype(np.int64)
        indices = rng.integers(starts, ends + 1)
    else:
        indices = starts + int(segment / (num_views + 1) * (view + 1))
    return np.minimum(indices, video_frames - 1)


def write_video(path: str, frames: np.ndarray, *, fps: int = 30, codec: str = "libx264",
                options: dict[str, str] | None = None, audio: np.ndarray | None = None,
                audio_rate: int = 16000) -> None:
    """Encodes uint8 (T, H, W, 3) frames (even H and W) as an mp4 file, with an AAC track of `audio` (float32 samples
    in [-1, 1], (N,) mono or (C, N), at `audio_rate`, starting with the first frame) when given."""
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        sound = None
        if audio is not None:
            audio = np.atleast_2d(np.asarray(audio, np.float32))
            sound = container.add_stream("aac", rate=audio_rate)
            sound.layout = {1: "mono", 2: "stereo"}[audio.shape[0]]
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
        if sound is not None:
            for start in range(0, audio.shape[1], 1024):
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, start:start + 1024]),
                                                   format="fltp", layout=sound.layout)
                chunk.sample_rate, chunk.pts = audio_rate, start
                container.mux(sound.encode(chunk))
            container.mux(sound.encode())

"""The audio track of a video as a Kaldi-compatible log-mel filterbank (InternVideo2-6B stage 2's BEATs input).

Official InternVideo2 audio preprocessing (multi_modality/dataset/av_utils.py, `load_audio_av`), reproduced here:
  decode the audio stream with PyAV, average the channels, resample to 16 kHz, keep at most 10 s (a random window in
  training), scale to int16 range (x 2**15), `torchaudio.compliance.kaldi.fbank(num_mel_bins=64, frame_length=25,
  frame_shift=10)`, normalise (x - 15.41663) / (2 x 6.55582) (BEATs' AudioSet statistics), zero-pad to 998 frames.
  BEATs itself uses 128 mel bins with the same normalisation; the bin count is a parameter here.

Differences from the official code (documented, deliberate):
  - resampling uses PyAV's `AudioResampler` (FFmpeg swresample) instead of `torchaudio.transforms.Resample`: the
    two low-pass filters differ slightly near the new Nyquist frequency (8 kHz).
  - the official code decodes from the clip's start until it passes the clip's end (whole codec frames); here the
    segment is cut to the sample: [round(start x 16000), round(end x 16000)) on the video's timeline.
  - a video without audio gets an all-zero spectrogram and `audio_mask` 0 (the official loader returns None).

The filterbank (`kaldi_fbank`) is numpy, float64 inside, with the Kaldi / torchaudio defaults: frames of 400 samples
every 160 (snip_edges: only whole frames), per-frame DC removal, pre-emphasis 0.97 (the first sample is pre-emphasised
against itself), Povey window (Hann^0.85), zero-padding to 512, power spectrum, triangular filters equally spaced on
mel = 1127 ln(1 + f/700) between 20 Hz and Nyquist, natural log floored at float32 epsilon. No dither.

Example fields (`audio_example`): 'audio' float32 (target_frames, num_mel_bins), 'audio_mask' int32 (1: the video
has audio in this segment; 0: no audio, 'audio' is all zeros and the model should skip it), 'audio_frames' int32
(filterbank frames before padding).
"""
import io
import math
from fractions import Fraction

import av
import numpy as np

from invideo_jax.data.video import BadVideo

SAMPLE_RATE = 16000
NUM_MEL_BINS = 64  # InternVideo2 (BEATs' own pre-training: 128)
TARGET_FRAMES = 998  # 10 s: 1 + (160000 - 400) // 160
FBANK_MEAN = 15.41663
FBANK_STD = 6.55582
INT16_SCALE = 2.0 ** 15
# Seek only when the segment starts at least this far in, to this much before it (codec frames overlap).
SEEK_MIN_SECONDS = 1.0
SEEK_MARGIN_SECONDS = 0.5
# Decode this much past the segment's end so the resampler's filter sees real input there.
TAIL_SECONDS = 0.1


class NoAudio(Exception):
    """The video has no usable audio for the segment (no audio stream, undecodable, or the segment lies outside it).

    Not a bad video: the example keeps its frames and gets `audio_mask` 0.
    """


def _open(source: str | bytes):
    try:
        return av.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (OSError, av.error.FFmpegError) as e:
        raise BadVideo(f"{type(e).__name__}: {e}") from e


def has_audio(source: str | bytes) -> bool:
    """Whether the container has an audio stream. Raises BadVideo if it cannot be opened."""
    with _open(source) as container:
        return bool(container.streams.audio)


def clip_seconds(indices, fps: float) -> tuple[float, float]:
    """The (start, end) seconds a clip's frame indices cover: from its first frame to the end of its last."""
    indices = np.asarray(indices)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return float(indices.min()) / fps, float(indices.max() + 1) / fps


def _origin(container) -> float:
    """Seconds of the video stream's first timestamp (0 for most files): the zero of clip times."""
    if container.streams.video:
        stream = container.streams.video[0]
        if stream.start_time is not None:
            return float(stream.start_time * stream.time_base)
    return 0.0


def _decode_resampled(container, stream, sample_rate: int, seek_to: float | None, stop: float | None):
    """Mono float32 samples at `sample_rate` and the timeline index of the first one (None if unknown)."""
    if seek_to is not None:
        container.seek(int(seek_to / stream.time_base), stream=stream)
    resampler = av.AudioResampler(format="fltp", rate=sample_rate)  # keeps the layout: channels averaged below
    chunks, first = [], None
    for frame in container.decode(stream):
        for out in resampler.resample(frame):
            if first is None and out.pts is not None and out.time_base == Fraction(1, sample_rate):
                first = int(out.pts)
            chunks.append(out.to_ndarray())
        if stop is not None and frame.pts is not None and frame.pts * stream.time_base > stop:
            break
    for out in resampler.resample(None):
        chunks.append(out.to_ndarray())
    if not chunks:
        return np.zeros(0, np.float32), first
    return np.concatenate(chunks, axis=1).mean(axis=0).astype(np.float32), first


def decode_audio(source: str | bytes, start: float = 0.0, end: float | None = None, *,
                 sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 samples in [-1, 1] at `sample_rate` of [start, end) seconds of the video (end None: to the end).

    Times count from the video stream's first frame. The segment has round(end*sr) - round(start*sr) samples where
    the audio track covers it; parts outside the track are left out (no padding). Channels are averaged.
    Raises NoAudio (no audio stream, undecodable audio, nothing in the segment) or BadVideo (cannot open).
    """
    if start < 0 or (end is not None and end <= start):
        raise ValueError(f"bad segment [{start}, {end})")
    with _open(source) as container:
        if not container.streams.audio:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
            raise NoAudio(f"no audio stream (streams: {kinds})")
        stream = container.streams.audio[0]
        stream.codec_context.thread_count = 1
        origin = _origin(container)
        begin = int(round((origin + start) * sample_rate))
        stop = None if end is None else origin + end + TAIL_SECONDS
        seek_to = origin + start - SEEK_MARGIN_SECONDS if start >= SEEK_MIN_SECONDS else None
        try:
            samples, first = _decode_resampled(container, stream, sample_rate, seek_to, stop)
            if seek_to is not None and (first is None or first > begin):  # landed late, or position unknown
                container.seek(0, stream=stream)
                samples, first = _decode_resampled(container, stream, sample_rate, None, stop)
        except (OSError, av.error.FFmpegError) as e:
            raise NoAudio(f"audio undecodable: {type(e).__name__}: {e}") from e
    first = 0 if first is None else first
    lo = begin - first
    hi = len(samples) if end is None else int(round((origin + end) * sample_rate)) - first
    segment = samples[max(lo, 0):max(min(hi, len(samples)), 0)]
    if not len(segment):
        raise NoAudio(f"no audio samples in [{start:.3f}, {end}) s (track: {first / sample_rate:.3f} s "
                      f"+ {len(samples) / sample_rate:.3f} s)")
    return segment


# ----------------------------------------------------------------------------------------------------------
# Kaldi-compatible filterbank
# ----------------------------------------------------------------------------------------------------------


def mel_scale(freq):
    """Kaldi's mel scale: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(freq, np.float64) / 700.0)


def mel_banks(num_mel_bins: int, fft_size: int, sample_rate: float, low_freq: float = 20.0,
              high_freq: float = 0.0) -> np.ndarray:
    """(fft_size // 2 + 1, num_mel_bins) triangular weights on the power spectrum (Kaldi's MelBanks, no VTLN).

    high_freq <= 0 counts back from Nyquist. The Nyquist bin's weight is 0, as in Kaldi/torchaudio.
    """
    nyquist = 0.5 * sample_rate
    if high_freq <= 0:
        high_freq += nyquist
    if not 0 <= low_freq < high_freq <= nyquist:
        raise ValueError(f"need 0 <= low_freq ({low_freq}) < high_freq ({high_freq}) <= Nyquist ({nyquist})")
    mel_low, mel_high = mel_scale(low_freq), mel_scale(high_freq)
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    edges = mel_low + delta * np.arange(num_mel_bins + 2)
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]
    mel = mel_scale(np.arange(fft_size // 2) * (sample_rate / fft_size))[:, None]
    weights = np.maximum(0.0, np.minimum((mel - left) / (centre - left), (right - mel) / (right - centre)))
    return np.concatenate([weights, np.zeros((1, num_mel_bins))], axis=0)


def povey_window(size: int) -> np.ndarray:
    """Kaldi's default window: (0.5 - 0.5 cos(2 pi n / (size - 1)))^0.85."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / (size - 1))) ** 0.85


def num_fbank_frames(num_samples: int, sample_rate: int = SAMPLE_RATE, frame_length_ms: float = 25.0,
                     frame_shift_ms: float = 10.0) -> int:
    """Whole frames in `num_samples` (Kaldi snip_edges=True)."""
    window = int(sample_rate * frame_length_ms * 0.001)
    shift = int(sample_rate * frame_shift_ms * 0.001)
    return 0 if num_samples < window else 1 + (num_samples - window) // shift


def kaldi_fbank(waveform: np.ndarray, *, num_mel_bins: int = NUM_MEL_BINS, sample_rate: int = SAMPLE_RATE,
                frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0, preemphasis: float = 0.97,
                low_freq: float = 20.0, high_freq: float = 0.0, remove_dc_offset: bool = True) -> np.ndarray:
    """Log mel filterbank (frames, num_mel_bins) float32 of a 1-D waveform, as `torchaudio.compliance.kaldi.fbank`
    with its defaults (dither 0, Povey window, power spectrum, log, snip_edges, no energy, no mean subtraction).

    Scale matters (the log floor): the official callers pass int16-range samples (x 2**15).
    """
    x = np.asarray(waveform, np.float64)
    if x.ndim != 1:
        raise ValueError(f"waveform must be 1-D, got shape {x.shape}")
    window = int(sample_rate * frame_length_ms * 0.001)
    shift = int(sample_rate * frame_shift_ms * 0.001)
    count = num_fbank_frames(len(x), sample_rate, frame_length_ms, frame_shift_ms)
    if count == 0:
        return np.zeros((0, num_mel_bins), np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(x, window)[::shift][:count]
    if remove_dc_offset:
        frames = frames - frames.mean(axis=1, keepdims=True)
    if preemphasis:
        frames = frames - preemphasis * np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames * povey_window(window)
    fft_size = 1 << (window - 1).bit_length()  # round_to_power_of_two
    spectrum = np.fft.rfft(frames, n=fft_size, axis=1)
    power = spectrum.real ** 2 + spectrum.imag ** 2
    energies = power @ mel_banks(num_mel_bins, fft_size, sample_rate, low_freq, high_freq)
    return np.log(np.maximum(energies, np.finfo(np.float32).eps)).astype(np.float32)


def normalize_fbank(fbank: np.ndarray, mean: float = FBANK_MEAN, std: float = FBANK_STD) -> np.ndarray:
    """BEATs / InternVideo2 normalisation: (x - mean) / (2 std)."""
    return ((fbank - mean) / (2.0 * std)).astype(np.float32)


def fit_frames(fbank: np.ndarray, target_frames: int) -> np.ndarray:
    """Zero-pads (after the end) or cuts (keeps the start) to `target_frames` rows."""
    fbank = fbank[:target_frames]
    return np.pad(fbank, ((0, target_frames - len(fbank)), (0, 0)))


def max_samples(target_frames: int, sample_rate: int = SAMPLE_RATE) -> int:
    """The fewest samples that give `target_frames` whole frames (25 ms frames every 10 ms)."""
    return (target_frames - 1) * int(sample_rate * 0.010) + int(sample_rate * 0.025)


def spectrogram(samples: np.ndarray, *, num_mel_bins: int = NUM_MEL_BINS, target_frames: int = TARGET_FRAMES,
                sample_rate: int = SAMPLE_RATE, rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
    """Samples in [-1, 1] -> (normalised log-mel (target_frames, num_mel_bins) float32, frames before padding).

    Audio longer than `target_frames` frames is cut to a window: random with rng (training), else the start.
    """
    limit = max_samples(target_frames, sample_rate)
    if len(samples) > limit:
        offset = int(rng.integers(len(samples) - limit + 1)) if rng is not None else 0
        samples = samples[offset:offset + limit]
    fbank = kaldi_fbank(np.asarray(samples, np.float64) * INT16_SCALE, num_mel_bins=num_mel_bins,
                        sample_rate=sample_rate)
    return fit_frames(normalize_fbank(fbank), target_frames), len(fbank)


def silent_example(num_mel_bins: int = NUM_MEL_BINS, target_frames: int = TARGET_FRAMES) -> dict:
    """The audio fields of an example without audio: zeros, `audio_mask` 0."""
    return {"audio": np.zeros((target_frames, num_mel_bins), np.float32), "audio_mask": np.int32(0),
            "audio_frames": np.int32(0)}


def audio_example(source: str | bytes, start: float = 0.0, end: float | None = None, *,
                  num_mel_bins: int = NUM_MEL_BINS, target_frames: int = TARGET_FRAMES,
                  rng: np.random.Generator | None = None) -> dict:
    """The audio fields of an example for the clip [start, end) seconds: 'audio', 'audio_mask', 'audio_frames'.

    A video without (usable) audio gives `silent_example` (mask 0). A segment too short for one 25 ms frame counts as
    no audio. Raises BadVideo only when the file cannot be opened.
    """
    try:
        samples = decode_audio(source, start, end)
    except NoAudio:
        return silent_example(num_mel_bins, target_frames)
    audio, frames = spectrogram(samples, num_mel_bins=num_mel_bins, target_frames=target_frames, rng=rng)
    if frames == 0:
        return silent_example(num_mel_bins, target_frames)
    return {"audio": audio, "audio_mask": np.int32(1), "audio_frames": np.int32(min(frames, target_frames))}


def mel_bin_of(freq: float, num_mel_bins: int = NUM_MEL_BINS, sample_rate: int = SAMPLE_RATE,
               low_freq: float = 20.0) -> int:
    """The mel bin whose triangle peaks nearest to `freq` Hz."""
    mel_low, mel_high = mel_scale(low_freq), mel_scale(0.5 * sample_rate)
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    return int(np.clip(math.floor((mel_scale(freq) - mel_low) / delta - 0.5), 0, num_mel_bins - 1))

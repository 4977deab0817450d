"""Audio: the Kaldi filterbank against an independent derivation (and torchaudio when installed), decoding of videos
with and without an audio track, segment alignment, and the BEATs-style encoder (torch parity, masking, scan, size)."""
import math
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from invideo_jax.data import audio
from invideo_jax.data.video import write_video
from invideo_jax.models import audio as audio_model
from tests.random_trees import draw_like

FPS = 10
RATE = 44100  # the encoded rate: decoding resamples to 16 kHz
AMPLITUDE = 0.5


def write_av(path, seconds: float, *, freq: float = 440.0, onset: float = 0.0, with_audio: bool = True,
             layout: str = "stereo", rate: int = RATE) -> str:
    """A tiny h264 video (32x32, FPS) with an AAC sine tone that starts at `onset` seconds (silence before)."""
    frames = np.stack([np.full((32, 32, 3), (i * 10) % 255, np.uint8) for i in range(int(round(seconds * FPS)))])
    tone = None
    if with_audio:
        t = np.arange(int(seconds * rate)) / rate
        tone = np.where(t >= onset, AMPLITUDE * np.sin(2 * np.pi * freq * (t - onset)), 0.0)
        tone = np.tile(tone[None], ({"mono": 1, "stereo": 2}[layout], 1))
    write_video(str(path), frames, fps=FPS, audio=tone, audio_rate=rate)
    return str(path)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    return {"tone": write_av(root / "tone.mp4", 2.0),
            "onset": write_av(root / "onset.mp4", 4.0, onset=1.5),
            "mono": write_av(root / "mono.mp4", 1.0, layout="mono", rate=16000),
            "silent": write_av(root / "silent.mp4", 1.0, with_audio=False)}


# ----------------------------------------------------------------------------------------------------------
# Filterbank
# ----------------------------------------------------------------------------------------------------------


def reference_fbank(x, num_bins, rate=16000):
    """Kaldi's FeatureWindow + MelBanks written out in float64 from the formulas, one frame and one weight at a time:
    frame 25 ms every 10 ms (whole frames), DC removal, pre-emphasis 0.97 (x[0] -= 0.97 x[0]), Povey window, zero-pad
    to 512, |DFT|^2 (explicit sums), triangles on mel = 1127 ln(1 + f/700) from 20 Hz to Nyquist (fft bins 0..255),
    log floored at float32 epsilon."""
    size, shift, fft = 400, 160, 512
    window = [math.pow(0.5 - 0.5 * math.cos(2 * math.pi * n / (size - 1)), 0.85) for n in range(size)]
    mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)  # noqa: E731
    low, high = mel(20.0), mel(rate / 2)
    delta = (high - low) / (num_bins + 1)
    weights = np.zeros((fft // 2, num_bins))
    for b in range(num_bins):
        left, centre, right = low + b * delta, low + (b + 1) * delta, low + (b + 2) * delta
        for i in range(fft // 2):
            m = mel(i * rate / fft)
            if left < m < right:
                weights[i, b] = (m - left) / (centre - left) if m <= centre else (right - m) / (right - centre)
    n = np.arange(fft)
    angle = 2 * np.pi * np.outer(n, np.arange(fft // 2)) / fft
    rows = []
    for start in range(0, len(x) - size + 1, shift):
        frame = list(np.asarray(x[start:start + size], np.float64))
        mean = sum(frame) / size
        frame = [v - mean for v in frame]
        for j in range(size - 1, 0, -1):
            frame[j] -= 0.97 * frame[j - 1]
        frame[0] -= 0.97 * frame[0]
        padded = np.zeros(fft)
        padded[:size] = [v * w for v, w in zip(frame, window)]
        power = (padded @ np.cos(angle)) ** 2 + (padded @ np.sin(angle)) ** 2
        rows.append([math.log(max(e, float(np.finfo(np.float32).eps))) for e in power @ weights])
    return np.array(rows)


def sample_waveform():
    rng = np.random.default_rng(0)
    t = np.arange(4000) / 16000
    x = 3000 * np.sin(2 * np.pi * 440 * t) + 800 * rng.standard_normal(len(t)) + 200  # int16 scale, with DC
    x[:900] = 0.0  # silent frames hit the log floor
    return x.astype(np.float32)


@pytest.mark.parametrize("num_bins", [64, 128])
def test_fbank_matches_independent_kaldi_derivation(num_bins):
    x = sample_waveform()
    got = audio.kaldi_fbank(x, num_mel_bins=num_bins)
    want = reference_fbank(x, num_bins)
    assert got.shape == want.shape == (1 + (4000 - 400) // 160, num_bins) and got.dtype == np.float32
    assert np.isclose(want[0], math.log(np.finfo(np.float32).eps)).all()  # the silent frame is at the floor
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("num_bins", [64, 128])
def test_fbank_matches_transformers_kaldi_emulation(num_bins):
    """transformers' numpy filterbank (the torchaudio-free path of its AST feature extractor, written to match
    `torchaudio.compliance.kaldi.fbank`): a third, independent implementation."""
    audio_utils = pytest.importorskip("transformers.audio_utils")
    x = sample_waveform()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 128 bins: the lowest triangles fall between fft bins (as in Kaldi)
        banks = audio_utils.mel_filter_bank(num_frequency_bins=257, num_mel_filters=num_bins, min_frequency=20,
                                            max_frequency=8000, sampling_rate=16000, norm=None, mel_scale="kaldi",
                                            triangularize_in_mel_space=True)
    want = audio_utils.spectrogram(
        x.astype(np.float64), audio_utils.window_function(400, "povey", periodic=False), frame_length=400,
        hop_length=160, fft_length=512, power=2.0, center=False, preemphasis=0.97, mel_filters=banks, log_mel="log",
        mel_floor=float(np.finfo(np.float32).eps), remove_dc_offset=True).T
    np.testing.assert_allclose(audio.kaldi_fbank(x, num_mel_bins=num_bins), want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("num_bins", [64, 128])
def test_fbank_matches_torchaudio(num_bins):
    kaldi = pytest.importorskip("torchaudio.compliance.kaldi")  # not in the project's environment: skipped there
    x = sample_waveform()
    want = kaldi.fbank(torch.from_numpy(x)[None], num_mel_bins=num_bins, sample_frequency=16000, frame_length=25,
                       frame_shift=10).numpy()
    np.testing.assert_allclose(audio.kaldi_fbank(x, num_mel_bins=num_bins), want, atol=2e-3, rtol=0)


def test_fbank_edges_and_spectrogram_length():
    assert audio.kaldi_fbank(np.zeros(399), num_mel_bins=8).shape == (0, 8)
    assert audio.kaldi_fbank(np.zeros(400), num_mel_bins=8).shape == (1, 8)
    assert audio.num_fbank_frames(160000) == audio.TARGET_FRAMES == 998
    assert audio.max_samples(998) == 159_920
    tone = AMPLITUDE * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    spec, frames = audio.spectrogram(tone)  # 1 s: 98 frames, then zero padding
    assert spec.shape == (998, 64) and frames == 98
    assert np.all(spec[98:] == 0) and np.all(spec[:98] != 0)
    long = np.random.default_rng(0).standard_normal(16000 * 12) * 0.1  # 12 s: cut to a 10 s window
    first, frames = audio.spectrogram(long)
    assert frames == 998
    np.testing.assert_allclose(first, audio.spectrogram(long[:159_920])[0])
    crops = {audio.spectrogram(long, rng=np.random.default_rng(s))[0][0, 0] for s in range(3)}
    assert len(crops) == 3  # training windows are random


# ----------------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------------


def test_tone_peaks_in_its_mel_bin(videos):
    assert audio.has_audio(videos["tone"])
    samples = audio.decode_audio(videos["tone"])
    assert samples.dtype == np.float32 and abs(len(samples) - 32000) <= 1024  # 2 s at 16 kHz (+ codec tail)
    middle = samples[4000:28000]
    # channels are averaged (not summed): the stereo tone keeps its amplitude
    assert abs(np.sqrt(np.mean(middle ** 2)) - AMPLITUDE / math.sqrt(2)) < 0.01
    example = audio.audio_example(videos["tone"], 0.0, 2.0)
    assert example["audio"].shape == (998, 64) and example["audio"].dtype == np.float32
    assert example["audio_mask"] == 1 and example["audio_frames"] == 198
    energy = example["audio"][:198].mean(axis=0)
    bin_440 = audio.mel_bin_of(440.0)
    assert int(energy.argmax()) == bin_440
    banks = audio.mel_banks(64, 512, 16000)
    assert banks[round(440 / 31.25), bin_440] > 0.5  # the triangle of that bin covers 440 Hz
    assert int(audio.audio_example(videos["tone"], num_mel_bins=128)["audio"][:198].mean(0).argmax()) \
        == audio.mel_bin_of(440.0, 128)


def test_mono_16k_track(videos):
    samples = audio.decode_audio(videos["mono"])
    assert abs(len(samples) - 16000) <= 1024
    assert abs(np.sqrt(np.mean(samples[2000:14000] ** 2)) - AMPLITUDE / math.sqrt(2)) < 0.01


def test_video_without_audio(videos):
    path = videos["silent"]
    assert not audio.has_audio(path)
    with open(path, "rb") as f:
        assert not audio.has_audio(f.read())
    with pytest.raises(audio.NoAudio, match="no audio stream"):
        audio.decode_audio(path)
    example = audio.audio_example(path, 0.0, 1.0)
    assert example["audio_mask"] == 0 and example["audio_frames"] == 0
    assert example["audio"].shape == (998, 64) and not example["audio"].any()
    with pytest.raises(audio.BadVideo):
        audio.has_audio(b"not a video")


def onset(samples, start):
    """Seconds (on the video's timeline) of the first sample of the tone."""
    return start + int(np.argmax(np.abs(samples) > 0.05)) / audio.SAMPLE_RATE


@pytest.mark.parametrize("start,end", [(0.0, 2.0), (1.0, 2.0), (1.25, 3.5), (1.45, 1.55)])
def test_segment_alignment(videos, start, end, monkeypatch):
    samples = audio.decode_audio(videos["onset"], start, end)
    assert len(samples) == round(end * 16000) - round(start * 16000)
    assert abs(onset(samples, start) - 1.5) <= 2 / 16000  # the tone starts at 1.5 s, to a sample or two
    monkeypatch.setattr(audio, "SEEK_MIN_SECONDS", 1e9)  # decoding from the start lands on the same samples
    again = audio.decode_audio(videos["onset"], start, end)
    assert len(again) == len(samples) and abs(onset(again, start) - onset(samples, start)) <= 2 / 16000


def test_clip_seconds_and_segment_bounds(videos):
    frames = np.arange(12, 28, 4)  # a 4-frame clip at 10 fps: frames 12..24 cover [1.2, 2.5) s
    start, end = audio.clip_seconds(frames, FPS)
    assert (start, end) == pytest.approx((1.2, 2.5))
    assert len(audio.decode_audio(videos["onset"], start, end)) == 20800
    tail = audio.decode_audio(videos["onset"], 3.5, 5.0)  # the track ends near 4 s: no padding
    assert 0.45 * 16000 <= len(tail) <= 0.6 * 16000
    with pytest.raises(audio.NoAudio, match="no audio samples"):
        audio.decode_audio(videos["onset"], 6.0, 7.0)
    assert audio.audio_example(videos["onset"], 6.0, 7.0)["audio_mask"] == 0
    with pytest.raises(ValueError):
        audio.decode_audio(videos["onset"], 2.0, 1.0)


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------

TINY = dict(audio_model.AUDIO_SIZES["tiny"], num_mel_bins=32)


def random_params(model, fbank, seed=0):
    """Random parameters of the model's shapes (no jitted init: random initialisers compile slowly on CPU)."""
    return draw_like(nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), fbank)["params"]), seed, std=0.2)


def torch_buckets(n, num_buckets, max_distance):
    """BEATs' _relative_positions_bucket (bidirectional) of key - query positions, in torch as the original."""
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
    half = num_buckets // 2
    exact = half // 2
    buckets = (rel > 0).long() * half
    rel = rel.abs()
    large = exact + (torch.log(rel.float() / exact) / math.log(max_distance / exact) * (half - exact)).long()
    large = torch.minimum(large, torch.full_like(large, half - 1))
    return buckets + torch.where(rel < exact, rel, large)


def torch_reference(params, fbank, cfg, depth):
    """BEATs' forward in torch float64 from our params, written independently from microsoft/unilm beats/: Conv2d
    patch embedding, LayerNorm, Linear, x + GELU(SamePad(Conv1d)), LayerNorm, post-LN deep-norm layers; with
    cfg['rel_pos_buckets'] the relative position bias of layer 0 (shared), gated per layer (gru_rel_pos): gate_a,
    gate_b = sigmoid(grep_linear(q).view(2, 4).sum(-1)), bias * (gate_a * (gate_b * grep_a - 1) + 2)."""
    F = torch.nn.functional

    def t(a):
        return torch.from_numpy(np.asarray(a, np.float64))

    def ln(y, norm):
        return F.layer_norm(y, y.shape[-1:], t(norm["scale"]), t(norm["bias"]), 1e-5)

    d, p, heads = cfg["width"], 16, cfg["num_heads"]
    alpha = (2.0 * depth) ** 0.25
    weight = t(params["patch_embed"]["kernel"]).reshape(p, p, -1).permute(2, 0, 1)[:, None]  # (E, 1, p, p)
    x = F.conv2d(t(fbank)[:, None], weight, stride=p)  # (B, E, T', F')
    x = x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)  # (B, T'F', E), time-major
    x = ln(x, params["patch_norm"])
    x = x @ t(params["post_extract_proj"]["kernel"]) + t(params["post_extract_proj"]["bias"])
    conv_w = t(params["pos_conv"]["kernel"]).permute(2, 1, 0)  # (D, D / groups, K)
    y = F.conv1d(x.transpose(1, 2), conv_w, t(params["pos_conv"]["bias"]), padding=cfg["conv_pos"] // 2,
                 groups=cfg["conv_pos_groups"])[..., :-1]  # SamePad: drop the last output (even kernel)
    x = ln(x + F.gelu(y.transpose(1, 2)), params["pos_norm"])
    for i in range(depth):
        blk = params["transformer"][f"blocks_{i}"]

        def linear(y, name):
            return y @ t(blk[name]["kernel"]).reshape(d, -1) + t(blk[name]["bias"]).reshape(-1)

        q, k, v = (linear(x, n).reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2) for n in "qkv")
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
        if cfg.get("rel_pos_buckets"):
            n = x.shape[1]
            table = t(params["rel_pos_bias"])  # (buckets, heads), layer 0's, shared
            position = table[torch_buckets(n, cfg["rel_pos_buckets"], cfg["rel_pos_max_distance"])].permute(2, 0, 1)
            grep = q @ t(blk["grep_linear"]["kernel"]) + t(blk["grep_linear"]["bias"])  # (B, H, N, 8)
            gate_a, gate_b = torch.sigmoid(grep.view(*grep.shape[:3], 2, 4).sum(-1)).chunk(2, dim=-1)
            gate = gate_a * (gate_b * t(blk["grep_a"]).view(1, heads, 1, 1) - 1.0) + 2.0
            scores = scores + gate * position
        attn = torch.softmax(scores, dim=-1) @ v
        attn = attn.transpose(1, 2).reshape(x.shape)
        x = ln(alpha * x + attn @ t(blk["out"]["kernel"]).reshape(d, d) + t(blk["out"]["bias"]), blk["norm1"])
        ffn = F.gelu(x @ t(blk["fc1"]["kernel"]) + t(blk["fc1"]["bias"]))
        x = ln(alpha * x + ffn @ t(blk["fc2"]["kernel"]) + t(blk["fc2"]["bias"]), blk["norm2"])
    pooled = x.mean(1) @ t(params["proj"]["kernel"]) + t(params["proj"]["bias"])
    return x.numpy(), pooled.numpy()


def test_encoder_matches_torch_reference():
    model = audio_model.AudioTransformer(**TINY, embed_dim=24)
    fbank = np.random.default_rng(1).standard_normal((2, 72, 32)).astype(np.float32)  # 72 frames: 4 x 2 patches
    params = random_params(model, fbank)
    out = jax.jit(model.apply)({"params": params}, fbank)
    assert out["tokens"].shape == (2, model.num_tokens(72), 64) == (2, 8, 64) and out["pooled"].shape == (2, 24)
    assert out["mask"].all()
    tokens, pooled = torch_reference(params, fbank, TINY, depth=TINY["depth"])
    np.testing.assert_allclose(out["tokens"], tokens, atol=1e-4)
    np.testing.assert_allclose(out["pooled"], pooled, atol=1e-4)


def test_relative_position_bias_matches_torch_reference():
    """The gated relative position bias: 20 buckets, max distance 12 over 18 tokens (exact and log-spaced buckets,
    both signs, the clipped last bucket), random table, gates and grep_a; float32 vs torch float64, atol 1e-4."""
    cfg = dict(TINY, rel_pos_buckets=20, rel_pos_max_distance=12)
    model = audio_model.AudioTransformer(**cfg, embed_dim=24)
    fbank = np.random.default_rng(4).standard_normal((2, 144, 32)).astype(np.float32)  # 9 x 2 = 18 tokens
    params = random_params(model, fbank)
    params["rel_pos_bias"] = params["rel_pos_bias"] * 10  # large enough to move the attention
    out = jax.jit(model.apply)({"params": params}, fbank)
    tokens, pooled = torch_reference(params, fbank, cfg, depth=cfg["depth"])
    np.testing.assert_allclose(out["tokens"], tokens, atol=1e-4)
    np.testing.assert_allclose(out["pooled"], pooled, atol=1e-4)
    without = dict(params, rel_pos_bias=jnp.zeros_like(params["rel_pos_bias"]))
    assert np.abs(np.asarray(jax.jit(model.apply)({"params": without}, fbank)["tokens"]) - tokens).max() > 1e-2
    buckets = torch_buckets(248, 320, 800).numpy()  # InternVideo2's 248 tokens: the float32 buckets as torch's
    np.testing.assert_array_equal(audio_model.relative_position_buckets(248, 248, 320, 800), buckets)


def test_audio_mask_zeroes_and_isolates_examples():
    model = audio_model.AudioTransformer(**TINY, embed_dim=16)
    rng = np.random.default_rng(2)
    fbank = rng.standard_normal((3, 32, 32)).astype(np.float32)
    variables = {"params": random_params(model, fbank)}
    apply = jax.jit(model.apply)
    mask = np.array([1, 0, 1], np.int32)
    out = apply(variables, fbank, mask)
    assert not out["tokens"][1].any() and not out["pooled"][1].any()
    assert out["pooled"][0].any() and out["pooled"][2].any()
    np.testing.assert_array_equal(out["mask"], [True, False, True])
    garbage = fbank.copy()
    garbage[1] = np.nan  # whatever the masked row holds, nothing leaks
    other = apply(variables, garbage, mask)
    np.testing.assert_array_equal(other["pooled"], out["pooled"])
    unmasked = apply(variables, fbank, np.ones(3, np.int32))  # rows do not interact
    np.testing.assert_allclose(np.asarray(unmasked["pooled"])[[0, 2]], np.asarray(out["pooled"])[[0, 2]], atol=1e-6)

    @jax.jit
    def grads(params, weights):
        return jax.grad(lambda p: (model.apply({"params": p}, garbage, mask)["pooled"].sum(-1) * weights).sum())(params)

    masked_row = grads(variables["params"], jnp.array([0.0, 1.0, 0.0]))
    assert all(not np.asarray(g).any() for g in jax.tree.leaves(masked_row))  # masked rows give no gradient
    real_row = grads(variables["params"], jnp.array([1.0, 0.0, 0.0]))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(real_row))
    assert np.asarray(real_row["patch_embed"]["kernel"]).any()


def test_init_follows_deep_norm():
    model = audio_model.AudioTransformer(width=128, depth=3, num_heads=4, mlp_dim=128, num_mel_bins=32,
                                         patch_embed_dim=32, conv_pos=8, conv_pos_groups=4, scan=True)
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32)))["params"])
    alpha, beta = audio_model.deep_norm_constants(3)
    assert (alpha, beta) == pytest.approx((6 ** 0.25, 24 ** -0.25))
    block = params["transformer"]["blocks"]  # (layers, ...)
    xavier_std = math.sqrt(2 / (128 + 128))
    assert np.std(block["q"]["kernel"]) == pytest.approx(xavier_std, rel=0.1)
    for name in ("v", "out", "fc1", "fc2"):
        assert np.std(block[name]["kernel"]) == pytest.approx(beta * xavier_std, rel=0.1), name
    assert not np.asarray(params["pos_conv"]["bias"]).any()


@pytest.mark.parametrize("rel_pos", [0, 16])
def test_scan_matches_loop_and_bf16_runs(rel_pos):
    fbank = np.random.default_rng(3).standard_normal((2, 48, 32)).astype(np.float32)
    cfg = dict(TINY, rel_pos_buckets=rel_pos, rel_pos_max_distance=20)  # rel_pos: the shared bias reaches every layer
    loop = audio_model.AudioTransformer(**cfg)
    params = random_params(loop, fbank)
    scanned = audio_model.AudioTransformer(**cfg, scan=True, remat="full")
    blocks = [params["transformer"].pop(f"blocks_{i}") for i in range(TINY["depth"])]
    stacked = dict(params, transformer={"blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)})
    abstract = nn.unbox(jax.eval_shape(scanned.init, jax.random.PRNGKey(0), fbank)["params"])
    assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(lambda a: a.shape, stacked)
    params["transformer"] = {f"blocks_{i}": b for i, b in enumerate(blocks)}
    want = jax.jit(loop.apply)({"params": params}, fbank)["tokens"]
    got = jax.jit(scanned.apply)({"params": stacked}, fbank)["tokens"]
    np.testing.assert_allclose(got, want, atol=1e-5)
    half = audio_model.AudioTransformer(**cfg, dtype=jnp.bfloat16)
    out = jax.jit(half.apply)({"params": params}, fbank)
    assert out["tokens"].dtype == jnp.bfloat16 and out["pooled"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out["tokens"], np.float32), want, atol=0.15)


def test_logical_axis_names():
    model = audio_model.AudioTransformer(**TINY, scan=True)
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32)))["params"]
    specs = nn.get_partition_spec(boxed)
    assert specs["transformer"]["blocks"]["q"]["kernel"] == jax.sharding.PartitionSpec("layers", "embed", "heads",
                                                                                         "kv")
    assert specs["transformer"]["blocks"]["fc1"]["kernel"] == jax.sharding.PartitionSpec("layers", "embed", "mlp")
    assert specs["pos_conv"]["kernel"] == jax.sharding.PartitionSpec(None, None, "embed")


@pytest.mark.parametrize("size", sorted(audio_model.AUDIO_SIZES))
def test_parameter_count(size):
    cfg = audio_model.AUDIO_SIZES[size]
    for embed_dim in (0, 512):
        model = audio_model.AudioTransformer(**cfg, embed_dim=embed_dim)
        assert audio_model.abstract_param_count(model) == audio_model.parameter_count(**cfg, embed_dim=embed_dim)
    if size == "beats_iter3":
        # BEATs reports 90M: 90,301,440 without the relative position bias, + 320 x 12 (table) + 12 x (64 x 8 + 8 + 12)
        # (gates)
        assert audio_model.parameter_count(**cfg) == 90_301_440 + 3_840 + 6_384


def test_bad_shapes():
    model = audio_model.AudioTransformer(**TINY)
    with pytest.raises(ValueError, match="num_mel_bins"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 64)))
    with pytest.raises(ValueError, match="fewer than one patch"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 32)))

"""BEATs converter (convert/beats.py) and the InternVideo2-6B audio-visual stage-2 file (convert/internvideo2.py).

Official-layout state dicts hold random values under BEATs' own key names and torch shapes (microsoft/unilm
beats/BEATs.py, backbone.py: Conv2d patch embedding, weight-normalised `pos_conv`, fairseq MultiheadAttention with a
shared `relative_attention_bias` and the `grep_*` gate, post-LN deep-norm layers). Our converted model is compared with
a float64 numpy forward written from that official math, reading the official state dict directly.

Tolerance: max abs error <= 1e-4 on the tokens (float32 model vs float64 reference, weights ~N(0, 0.3), LayerNorm
weights around 1, every output LayerNorm-scaled; measured about 1e-6).
"""
import math
import os

import jax
import numpy as np
import pytest

from invideo_jax.convert import api, beats, cli, common, internvideo2
from invideo_jax.convert.common import ConversionError
from invideo_jax.models.align import VideoTextAlign
from invideo_jax.models.audio import AudioTransformer
from tests.test_convert_internvideo2 import (D, EMBED, TEXT, VISION, clips, max_err, official_forward, official_stage2,
                                             randomise)
from tests.test_internvideo2 import gelu, layer_norm

TOL = 1e-4
# 160 frames x 32 mel bins, patch 16: 10 x 2 = 20 tokens; 16 buckets (exact below 4, log-spaced to 40).
WIDTH, DEPTH, HEADS, MLP, PATCH_DIM, CONV, GROUPS = 32, 2, 4, 48, 24, 8, 4
BUCKETS, MAX_DIST, MELS, FRAMES, PATCH = 16, 40, 32, 160, 16
CFG = dict(input_patch_size=PATCH, embed_dim=PATCH_DIM, conv_bias=False, encoder_layers=DEPTH,
           encoder_embed_dim=WIDTH, encoder_ffn_embed_dim=MLP, encoder_attention_heads=HEADS, activation_fn="gelu",
           layer_norm_first=False, deep_norm=True, conv_pos=CONV, conv_pos_groups=GROUPS,
           relative_position_embedding=True, num_buckets=BUCKETS, max_distance=MAX_DIST, gru_rel_pos=True,
           finetuned_model=False)
AUDIO = dict(width=WIDTH, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP, patch_embed_dim=PATCH_DIM, conv_pos=CONV,
             conv_pos_groups=GROUPS, rel_pos_buckets=BUCKETS, rel_pos_max_distance=MAX_DIST, rel_pos_gate=True,
             num_mel_bins=MELS)


def shapes_beats():
    """{BEATs key: torch shape} (every layer holds the shared relative position table, as torch's state_dict)."""
    hd = WIDTH // HEADS
    s = {"patch_embedding.weight": (PATCH_DIM, 1, PATCH, PATCH), "layer_norm.weight": (PATCH_DIM,),
         "layer_norm.bias": (PATCH_DIM,), "post_extract_proj.weight": (WIDTH, PATCH_DIM),
         "post_extract_proj.bias": (WIDTH,), "encoder.pos_conv.0.bias": (WIDTH,),
         "encoder.pos_conv.0.weight_g": (1, 1, CONV), "encoder.pos_conv.0.weight_v": (WIDTH, WIDTH // GROUPS, CONV),
         "encoder.layer_norm.weight": (WIDTH,), "encoder.layer_norm.bias": (WIDTH,)}
    for i in range(DEPTH):
        layer = {f"self_attn.{n}_proj.{p}": (WIDTH, WIDTH) if p == "weight" else (WIDTH,)
                 for n in ("q", "k", "v", "out") for p in ("weight", "bias")}
        layer.update({"self_attn.relative_attention_bias.weight": (BUCKETS, HEADS),
                      "self_attn.grep_linear.weight": (8, hd), "self_attn.grep_linear.bias": (8,),
                      "self_attn.grep_a": (1, HEADS, 1, 1), "self_attn_layer_norm.weight": (WIDTH,),
                      "self_attn_layer_norm.bias": (WIDTH,), "fc1.weight": (MLP, WIDTH), "fc1.bias": (MLP,),
                      "fc2.weight": (WIDTH, MLP), "fc2.bias": (WIDTH,), "final_layer_norm.weight": (WIDTH,),
                      "final_layer_norm.bias": (WIDTH,)})
        s.update({f"encoder.layers.{i}.{k}": v for k, v in layer.items()})
    return s


def official_beats(seed=0):
    state = randomise(shapes_beats(), seed)
    shared = state["encoder.layers.0.self_attn.relative_attention_bias.weight"]
    for i in range(1, DEPTH):
        state[f"encoder.layers.{i}.self_attn.relative_attention_bias.weight"] = shared.copy()
    state["encoder.pos_conv.0.weight_g"] = np.abs(state["encoder.pos_conv.0.weight_g"]) + 0.5
    return state


def fbanks(seed=3, frames=FRAMES):
    return np.random.default_rng(seed).standard_normal((2, frames, MELS)).astype(np.float32)


def bucket(rel):
    """MultiheadAttention._relative_positions_bucket (bidirectional), its log in float32 as torch's `.float()`."""
    half = BUCKETS // 2
    out = (rel > 0).astype(np.int64) * half
    rel = np.abs(rel)
    exact = half // 2
    with np.errstate(divide="ignore"):
        large = exact + (np.log(rel.astype(np.float32) / exact) / math.log(MAX_DIST / exact)
                         * (half - exact)).astype(np.float32)
    large = np.minimum(np.where(rel < exact, 0, large).astype(np.int64), half - 1)
    return out + np.where(rel < exact, rel, large)


def official_audio_forward(state, fbank, prefix=""):
    """BEATs.extract_features on a filterbank (B, T, F) (eval mode, no padding mask) -> tokens (B, N, D), float64."""
    w = lambda k: np.asarray(state[prefix + k], np.float64)
    b, t, f = fbank.shape
    tp, fp = t // PATCH, f // PATCH
    x = np.asarray(fbank, np.float64)[:, :tp * PATCH].reshape(b, tp, PATCH, fp, PATCH)
    x = np.einsum("btifj,eij->betf", x, w("patch_embedding.weight")[:, 0])  # the stride-16 Conv2d: (B, E, t, f)
    x = x.reshape(b, PATCH_DIM, -1).transpose(0, 2, 1)
    x = layer_norm(x, w("layer_norm.weight"), w("layer_norm.bias"))
    x = x @ w("post_extract_proj.weight").T + w("post_extract_proj.bias")
    n = x.shape[1]
    # pos_conv: weight_norm(dim=2), Conv1d(padding K // 2, groups), SamePad (drops the last output for even K), GELU
    v, g = w("encoder.pos_conv.0.weight_v"), w("encoder.pos_conv.0.weight_g")
    kernel = g * v / np.sqrt((v ** 2).sum(axis=(0, 1), keepdims=True))
    padded = np.pad(x.transpose(0, 2, 1), ((0, 0), (0, 0), (CONV // 2, CONV // 2)))
    length = n + 2 * (CONV // 2) - CONV + 1
    windows = np.stack([padded[:, :, j:j + length] for j in range(CONV)], -1)  # (B, D, L, K)
    per = WIDTH // GROUPS
    conv = np.concatenate([np.einsum("bclk,ock->bol", windows[:, gi * per:(gi + 1) * per],
                                     kernel[gi * per:(gi + 1) * per]) for gi in range(GROUPS)], axis=1)
    conv = conv + w("encoder.pos_conv.0.bias")[None, :, None]
    if CONV % 2 == 0:
        conv = conv[:, :, :-1]
    x = x + gelu(conv.transpose(0, 2, 1), exact=True)
    x = layer_norm(x, w("encoder.layer_norm.weight"), w("encoder.layer_norm.bias"))

    rel = np.arange(n)[None, :] - np.arange(n)[:, None]  # memory - context
    bias = w("encoder.layers.0.self_attn.relative_attention_bias.weight")[bucket(rel)].transpose(2, 0, 1)
    alpha, hd = (2 * DEPTH) ** 0.25, WIDTH // HEADS
    for i in range(DEPTH):
        lw = lambda k: w(f"encoder.layers.{i}.{k}")
        proj = lambda y, name: y @ lw(f"self_attn.{name}.weight").T + lw(f"self_attn.{name}.bias")
        heads = lambda y: y.reshape(b, n, HEADS, hd).transpose(0, 2, 1, 3)
        q, k, vv = heads(proj(x, "q_proj")), heads(proj(x, "k_proj")), heads(proj(x, "v_proj"))
        scores = (q * hd ** -0.5) @ k.transpose(0, 1, 3, 2)
        gates = 1 / (1 + np.exp(-(q @ lw("self_attn.grep_linear.weight").T + lw("self_attn.grep_linear.bias"))
                                 .reshape(b, HEADS, n, 2, 4).sum(-1)))
        gate_a, gate_b = gates[..., :1], gates[..., 1:]
        scores = scores + (gate_a * (gate_b * lw("self_attn.grep_a") - 1.0) + 2.0) * bias[None]
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = (probs @ vv).transpose(0, 2, 1, 3).reshape(b, n, WIDTH)
        x = layer_norm(x * alpha + proj(attn, "out_proj"), lw("self_attn_layer_norm.weight"),
                       lw("self_attn_layer_norm.bias"))
        ffn = gelu(x @ lw("fc1.weight").T + lw("fc1.bias"), exact=True) @ lw("fc2.weight").T + lw("fc2.bias")
        x = layer_norm(x * alpha + ffn, lw("final_layer_norm.weight"), lw("final_layer_norm.bias"))
    return x


def audio_model(**kw):
    return AudioTransformer(**dict(AUDIO, **kw))


# ----------------------------------------------------------------------------------------------------------
# A BEATs release file -> AudioTransformer
# ----------------------------------------------------------------------------------------------------------


def test_bucket_reference_covers_exact_and_log_buckets():
    rel = np.arange(-19, 20)
    got = bucket(rel)
    assert got[19] == 0 and got[20] == 1 + BUCKETS // 2 and got[0] < BUCKETS // 2 <= got[-1] <= BUCKETS - 1
    assert len(set(got[rel < -3])) > 2  # several log-spaced buckets among these distances


@pytest.mark.parametrize("scan", [False, True])
def test_beats_file_matches_the_official_forward(scan):
    state = official_beats()
    model = audio_model(scan=scan)
    variables, report = beats.load_variables({"cfg": CFG, "model": state}, model)
    # every tensor once, less the shared table's copies and weight_g (weight_v's shape is the kernel's)
    shared = (DEPTH - 1) * BUCKETS * HEADS
    assert not report.dropped and report.num_params == sum(v.size for v in state.values()) - shared - CONV
    fbank = fbanks()
    tokens = jax.jit(lambda v, x: model.apply(v, x)["tokens"])(variables, fbank)
    max_err("BEATs tokens", tokens, official_audio_forward(state, fbank))


def test_beats_round_trip_and_parametrizations_names():
    state = official_beats()
    model = audio_model()
    variables, _ = beats.load_variables(state, model)
    back = beats.to_state_dict(variables, model)
    assert back.keys() == state.keys()
    assert all(back[k].shape == state[k].shape for k in state)
    fbank = fbanks()
    # float32 rounding of g v / ||v|| and its norm only
    max_err("exported BEATs", official_audio_forward(back, fbank), official_audio_forward(state, fbank), 1e-6)
    renamed = {k.replace("weight_g", "parametrizations.weight.original0")
               .replace("weight_v", "parametrizations.weight.original1"): v for k, v in state.items()}
    again, _ = beats.load_variables(renamed, model)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(variables)))


def test_finetuned_predictor_is_dropped_and_listed():
    state = dict(official_beats(), **{"predictor.weight": np.zeros((5, WIDTH), np.float32),
                                     "predictor.bias": np.zeros(5, np.float32)})
    _, report = beats.load_variables({"cfg": dict(CFG, finetuned_model=True), "model": state}, audio_model())
    assert report.dropped == ["predictor.bias", "predictor.weight"]


def test_beats_errors_name_the_fields_and_keys():
    state = official_beats()
    model = audio_model()
    for field, value in (("max_distance", 80), ("deep_norm", False), ("layer_norm_first", True),
                         ("encoder_layers", 3)):
        with pytest.raises(ConversionError, match=f"{field}={value!r}"):
            beats.load_variables({"cfg": dict(CFG, **{field: value}), "model": state}, model)
    with pytest.raises(ConversionError, match="relative_position_embedding=False"):
        beats.load_variables({"cfg": dict(CFG, relative_position_embedding=False), "model": state}, model)
    key = "encoder.layers.1.self_attn.relative_attention_bias.weight"
    with pytest.raises(ConversionError, match=f"{key} differs"):
        beats.load_variables(dict(state, **{key: state[key] + 1}), model)
    with pytest.raises(ConversionError, match=r"missing keys:\n    encoder.layers.1.self_attn.grep_a"):
        beats.load_variables({k: v for k, v in state.items() if k != "encoder.layers.1.self_attn.grep_a"}, model)
    with pytest.raises(ConversionError, match="not a VideoTextAlign"):
        beats.load_variables(state, VideoTextAlign(vision_config=VISION, text_config=TEXT))


# ----------------------------------------------------------------------------------------------------------
# The InternVideo2-6B audio-visual stage-2 file -> VideoTextAlign with audio
# ----------------------------------------------------------------------------------------------------------


def av_model():
    # av_concat_dim = D: the fusion layers' keys / values project from D wide context tokens, as shapes_text has it
    return VideoTextAlign(vision_config=VISION, text_config=TEXT, embed_dim=EMBED, audio_config=AUDIO,
                          av_concat_dim=D)


def official_av_stage2(seed=0):
    state = official_stage2(seed)
    state.update({f"audio_encoder.{k}": v for k, v in official_beats(seed + 5).items()})
    state.update(randomise({
        "audio_proj.weight": (EMBED, WIDTH), "audio_proj.bias": (EMBED,),
        "av_concat_audio_proj.0.weight": (D, WIDTH), "av_concat_audio_proj.0.bias": (D,),
        "av_concat_audio_proj.1.weight": (D,), "av_concat_audio_proj.1.bias": (D,),
        "av_concat_vision_proj.0.weight": (D, D), "av_concat_vision_proj.0.bias": (D,),
        "av_concat_vision_proj.1.weight": (D,), "av_concat_vision_proj.1.bias": (D,),
        "av_fusion.weight": (EMBED, 2 * EMBED), "av_fusion.bias": (EMBED,),
        "atm_head.weight": (2, TEXT["width"]), "atm_head.bias": (2,),
        "avtm_head.weight": (2, TEXT["width"]), "avtm_head.bias": (2,)}, seed + 6))
    for name in ("av_concat_audio_proj.1.weight", "av_concat_vision_proj.1.weight"):
        state[name] = state[name] + 1.0
    return state


def test_audio_visual_stage2_file_matches_the_official_forward():
    state = official_av_stage2()
    model = av_model()
    variables, report = internvideo2.load_variables({"module": state}, model, "internvideo2_stage2")
    assert "atm_head.weight" in report.dropped and not report.at_init
    fbank, video = fbanks(), clips()
    tokens, pooled, _ = jax.jit(lambda v, a: model.apply(v, a, method="encode_audio"))(variables, fbank)
    features = jax.jit(lambda v, x, a: model.apply(v, x, a, method="encode_audio_video"))(variables, video, fbank)

    w = lambda k: np.asarray(state[k], np.float64)
    audio = official_audio_forward(state, fbank, "audio_encoder.")
    max_err("audio context tokens", tokens, layer_norm(audio @ w("av_concat_audio_proj.0.weight").T
                                                       + w("av_concat_audio_proj.0.bias"),
                                                       w("av_concat_audio_proj.1.weight"),
                                                       w("av_concat_audio_proj.1.bias")))
    max_err("pooled audio", pooled, audio.mean(1))
    vision = official_forward(state, video, "vision_encoder.")["pooled"]
    both = np.concatenate([audio.mean(1) @ w("audio_proj.weight").T + w("audio_proj.bias"),
                           vision @ w("vision_proj.weight").T + w("vision_proj.bias")], -1)
    fused = both @ w("av_fusion.weight").T + w("av_fusion.bias")
    max_err("audio-visual feature", features, fused / np.linalg.norm(fused, axis=-1, keepdims=True))


def test_audio_visual_stage2_round_trips():
    state = official_av_stage2()
    model = av_model()
    variables, report = internvideo2.load_variables(state, model, "internvideo2_stage2")
    back = internvideo2.to_state_dict(variables, "internvideo2_stage2")
    kept = {k for k in state if k not in report.dropped or ".predictions.decoder." in k}
    assert back.keys() == kept
    again, _ = internvideo2.load_variables(back, model, "internvideo2_stage2")
    flat, flat_again = common.flatten(variables["params"]), common.flatten(again["params"])
    assert flat.keys() == flat_again.keys()
    for path in flat:  # exact but for the pos_conv kernel's weight-norm round trip (g v / ||v||)
        np.testing.assert_allclose(flat_again[path], flat[path], rtol=1e-6, atol=1e-7, err_msg=path)


def test_audio_visual_file_into_a_model_without_audio_is_refused():
    state = official_av_stage2()
    model = VideoTextAlign(vision_config=VISION, text_config=TEXT, embed_dim=EMBED)
    with pytest.raises(ConversionError, match="audio_encoder.* an audio-visual stage-2 file .* audio=beats_iter3"):
        internvideo2.load_variables(state, model, "internvideo2_stage2")


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------



def test_cli_converts_a_beats_release_file_into_the_audio_encoder_of_a_model(tmp_path, capsys):
    import torch

    from tests.test_convert_internvideo2 import restore
    state = official_beats()
    path = tmp_path / "BEATs_iter3.pt"
    torch.save({"cfg": CFG, "model": {k: torch.from_numpy(v) for k, v in state.items()}}, path)
    model = VideoTextAlign(vision_config=VISION, text_config=TEXT, embed_dim=EMBED, av_concat_dim=D,
                           audio_config=dict(AUDIO, scan=True))
    variables, report = api.convert_checkpoint(str(path), "beats", model)  # into the model's audio encoder
    # the shared table's copies are checked, not converted; weight_g and weight_v become one kernel
    assert report.num_tensors == len(state) - (DEPTH - 1) - 1
    restored = restore(os.path.dirname(api.save(variables, str(tmp_path / "beats"))))
    want, _ = beats.load_variables(state, audio_model(scan=True))
    assert jax.tree.structure(restored) == jax.tree.structure(want)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(want)))
    # preset: an AUDIO_SIZES row at BEATs' 128 mel bins; a model without audio is refused, naming the fix
    preset = cli.build_model(cli.parse_args(["--format=beats", "--model=beats_iter3", "--input=x", "--output=y"]))
    assert (preset.width, preset.depth, preset.rel_pos_buckets, preset.num_mel_bins) == (768, 12, 320, 128)
    with pytest.raises(ValueError, match="audio=beats_iter3"):
        api.audio_encoder(VideoTextAlign(vision_config=VISION, text_config=TEXT))
    assert cli.main(["--format=beats", "--model=B", "--input=x", "--output=y"]) == 2

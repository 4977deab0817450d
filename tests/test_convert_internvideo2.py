"""InternVideo2 converters: official-layout state dicts (random numpy arrays under the official key names and torch
shapes, written from internvideo.md 1.7-1.9 / 2.5, not from our rules) convert into our models, whose outputs equal a
float64 numpy forward that reads the OFFICIAL state dict directly; exact round trips (looped and scanned); stage-1
extras dropped or (Distiller) converted, with the heads' widths given directly (the official `clip_teacher_embed_dim`,
`clip_teacher_final_dim`, `mae_teacher_embed_dim`) and checked against the official PretrainInternVideo2 forward;
both MLP activations (fused tanh GELU, exact GELU); pos_embed resampling; error messages; stage 2 into
VideoTextAlign; the CLI and the registry presets.

Tolerance: max abs error <= 1e-4 (float32 model vs float64 reference, every weight ~N(0, 0.3), norm weights around
1; measured about 1e-6); 1e-5 for the activation and stage-1 head checks.
"""
import math
import re

import flax.linen as nn
import jax
import numpy as np
import pytest
import safetensors.numpy

from invideo_jax import presets
from invideo_jax.convert import api, cli, common, internvideo2 as convert
from invideo_jax.convert.common import ConversionError
from invideo_jax.models.align import VideoTextAlign
from invideo_jax.models.distill import Distiller
from invideo_jax.models.internvideo2 import InternVideo2
from invideo_jax.models.posembed import resample_pos_embed
from invideo_jax.train.tasks import get_task
from tests.test_internvideo2 import gelu, layer_norm, multi_head, rms_norm, sincos_code
from tests.tiny_models import random_variables, tiny

TOL = 1e-4
# 2 frames of 12x12, patch 4: 2 x 3 x 3 = 18 patch tokens + CLS; 4 heads of 8; pool: 4 heads, out 24.
D, DEPTH, HEADS, MLP, PATCH, FRAMES, IMAGE, POOL_HEADS, POOL_OUT, CLASSES = 32, 2, 4, 80, 4, 2, 12, 4, 24, 5
GRID = (FRAMES, IMAGE // PATCH, IMAGE // PATCH)
TOKENS = math.prod(GRID)
VISION = dict(width=D, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP, patch_size=PATCH, num_frames=FRAMES,
              image_size=IMAGE, attn_pool_heads=POOL_HEADS, clip_embed_dim=POOL_OUT)
# stage-1 heads: 2 aligned layers each; image teacher width 16 (pooled 12), video teacher width 20
CLIP_LAYERS, CLIP_DIM, CLIP_FINAL, MAE_LAYERS, MAE_DIM = 2, 16, 12, 2, 20
# stage 2: BERT 16 wide, 2 layers (layer 1 with cross-attention), vocab 50; embed 8
TW, TDEPTH, THEADS, TMLP, VOCAB, MAX_LEN, FUSION, EMBED = 16, 2, 2, 32, 50, 16, 1, 8
TEXT = dict(width=TW, depth=TDEPTH, num_heads=THEADS, mlp_dim=TMLP, vocab_size=VOCAB, max_len=MAX_LEN,
            fusion_layer=FUSION)


def encoder(**kw):
    return InternVideo2(**dict(VISION, **kw))


def clips(frames=FRAMES, seed=1):
    return np.random.default_rng(seed).standard_normal((2, frames, IMAGE, IMAGE, 3)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Official state dicts, from the published names and torch shapes
# ----------------------------------------------------------------------------------------------------------


def shapes_vision(classes=0, stage1=False, tokens=TOKENS, clip_dim=CLIP_DIM, clip_final=CLIP_FINAL, mae_dim=MAE_DIM):
    """{official key: torch shape} of a single_modality InternVideo2 (fine-tune: fc_norm/head; pre-train: heads whose
    widths are PretrainInternVideo2's clip_teacher_embed_dim, clip_teacher_final_dim, mae_teacher_embed_dim)."""
    s = {"patch_embed.proj.weight": (D, 3, 1, PATCH, PATCH), "patch_embed.proj.bias": (D,),
         "cls_token": (1, 1, D), "pos_embed": (1, 1 + tokens, D)}
    for i in range(DEPTH):
        s.update({f"blocks.{i}.{k}": v for k, v in {
            "norm1.weight": (D,), "attn.qkv.weight": (3 * D, D), "attn.q_norm.weight": (D,),
            "attn.k_norm.weight": (D,), "attn.proj.weight": (D, D), "attn.proj.bias": (D,), "ls1.gamma": (D,),
            "norm2.weight": (D,), "mlp.fc1.weight": (MLP, D), "mlp.fc1.bias": (MLP,), "mlp.fc2.weight": (D, MLP),
            "mlp.fc2.bias": (D,), "ls2.gamma": (D,)}.items()})
    for n in "qkv":
        s.update({f"clip_projector.norm1_{n}.weight": (D,), f"clip_projector.norm1_{n}.bias": (D,),
                  f"clip_projector.cross_attn.{n}.weight": (D, D), f"clip_projector.cross_attn.{n}_bias": (D,)})
    s.update({"clip_projector.cross_attn.proj.weight": (POOL_OUT, D),
              "clip_projector.cross_attn.proj.bias": (POOL_OUT,)})
    if classes:
        s.update({"fc_norm.weight": (POOL_OUT,), "fc_norm.bias": (POOL_OUT,), "head.weight": (classes, POOL_OUT),
                  "head.bias": (classes,)})
    if stage1:
        for k in range(CLIP_LAYERS):
            s.update({f"clip_decoder.{k}.head.weight": (clip_dim, D), f"clip_decoder.{k}.head.bias": (clip_dim,),
                      f"clip_decoder.{k}.norm.weight": (clip_dim,), f"clip_decoder.{k}.norm.bias": (clip_dim,)})
        s.update({"final_clip_decoder.head.weight": (clip_final, POOL_OUT),
                  "final_clip_decoder.head.bias": (clip_final,), "final_clip_decoder.norm.weight": (clip_final,),
                  "final_clip_decoder.norm.bias": (clip_final,)})
        for k in range(MAE_LAYERS):
            s.update({f"mae_decoder.{k}.head.0.weight": (D, D), f"mae_decoder.{k}.head.0.bias": (D,),
                      f"mae_decoder.{k}.head.2.weight": (mae_dim, D), f"mae_decoder.{k}.head.2.bias": (mae_dim,),
                      f"mae_decoder.{k}.norm.weight": (mae_dim,), f"mae_decoder.{k}.norm.bias": (mae_dim,)})
        s.update({"clip_pos_embed": (1, 1 + tokens, D), "mae_pos_embed": (1, tokens, D)})
    return s


def shapes_text():
    """{key below `text_encoder.`: shape} of the stage-2 BERT (xbert BertForMaskedLM, fusion layers from FUSION)."""
    s = {"bert.embeddings.word_embeddings.weight": (VOCAB, TW),
         "bert.embeddings.position_embeddings.weight": (MAX_LEN, TW),
         "bert.embeddings.token_type_embeddings.weight": (2, TW),
         "bert.embeddings.LayerNorm.weight": (TW,), "bert.embeddings.LayerNorm.bias": (TW,)}
    for i in range(TDEPTH):
        layer = {f"attention.self.{n}.{p}": (TW, TW) if p == "weight" else (TW,)
                 for n in ("query", "key", "value") for p in ("weight", "bias")}
        layer.update({"attention.output.dense.weight": (TW, TW), "attention.output.dense.bias": (TW,),
                      "attention.output.LayerNorm.weight": (TW,), "attention.output.LayerNorm.bias": (TW,),
                      "intermediate.dense.weight": (TMLP, TW), "intermediate.dense.bias": (TMLP,),
                      "output.dense.weight": (TW, TMLP), "output.dense.bias": (TW,),
                      "output.LayerNorm.weight": (TW,), "output.LayerNorm.bias": (TW,)})
        if i >= FUSION:  # keys / values project from the vision width D
            layer.update({"crossattention.self.query.weight": (TW, TW), "crossattention.self.query.bias": (TW,),
                          "crossattention.self.key.weight": (TW, D), "crossattention.self.key.bias": (TW,),
                          "crossattention.self.value.weight": (TW, D), "crossattention.self.value.bias": (TW,),
                          "crossattention.output.dense.weight": (TW, TW), "crossattention.output.dense.bias": (TW,),
                          "crossattention.output.LayerNorm.weight": (TW,),
                          "crossattention.output.LayerNorm.bias": (TW,)})
        s.update({f"bert.encoder.layer.{i}.{k}": v for k, v in layer.items()})
    s.update({"cls.predictions.transform.dense.weight": (TW, TW), "cls.predictions.transform.dense.bias": (TW,),
              "cls.predictions.transform.LayerNorm.weight": (TW,), "cls.predictions.transform.LayerNorm.bias": (TW,),
              "cls.predictions.bias": (VOCAB,)})
    return s


def randomise(shapes, seed=0):
    """N(0, 0.3) values; norm weights (RMSNorm, LayerNorm) around 1 so every term of the formulas matters."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in shapes.items():
        value = 0.3 * rng.standard_normal(shape)
        if re.search(r"(norm\w*|LayerNorm)\.weight$", key):
            value += 1.0
        out[key] = value.astype(np.float32)
    return out


def official_vision(classes=0, stage1=False, tokens=TOKENS, seed=0, **head_dims):
    return randomise(shapes_vision(classes, stage1, tokens, **head_dims), seed)


def official_stage2(seed=0):
    """A stage-2 file: vision_encoder.* (with its stage-1 leftovers), text_encoder.* (tied decoder, position-id
    buffer), the projections, itm_head, temp."""
    state = {f"vision_encoder.{k}": v for k, v in official_vision(stage1=True, seed=seed).items()
             if not k.startswith("mae_")}
    state["vision_encoder.img_pos_embed"] = np.zeros((1, 1 + 9, D), np.float32)
    text = randomise(shapes_text(), seed + 1)
    text["cls.predictions.decoder.weight"] = text["bert.embeddings.word_embeddings.weight"].copy()
    text["cls.predictions.decoder.bias"] = text["cls.predictions.bias"].copy()
    state.update({f"text_encoder.{k}": v for k, v in text.items()})
    state["text_encoder.bert.embeddings.position_ids"] = np.arange(MAX_LEN)[None]
    state.update(randomise({"vision_proj.weight": (EMBED, POOL_OUT), "vision_proj.bias": (EMBED,),
                            "text_proj.weight": (EMBED, TW), "text_proj.bias": (EMBED,),
                            "itm_head.weight": (2, TW), "itm_head.bias": (2,)}, seed + 2))
    state["temp"] = np.asarray(0.07, np.float32)
    return state


# ----------------------------------------------------------------------------------------------------------
# float64 numpy forward reading the official state dict (torch conventions: Linear y = x W^T + b)
# ----------------------------------------------------------------------------------------------------------


def official_forward(state, video, prefix="", visible=None, exact_gelu=False, use_image=False):
    """-> {'tokens' (B, 1 + N, D), 'layers' (each block's output), 'pooled' (B, POOL_OUT), 'logits' or None}.

    visible (B, M): the patch tokens kept (PretrainInternVideo2: `x[~mask]` after the pos_embed, the CLS always);
    exact_gelu: the Mlp of `use_fused_mlp=False` (nn.GELU) instead of the fused MLP's tanh approximation;
    use_image: PretrainInternVideo2's `use_image` (a one-frame input): positions from `img_pos_embed` when the state
    holds it (`sep_image_video_pos_embed=True`), else the CLS position and `pos_embed`'s mean over its frames."""
    w = lambda k: np.asarray(state[prefix + k], np.float64)
    pos_embed = w("pos_embed")
    if use_image and prefix + "img_pos_embed" in state:
        pos_embed = w("img_pos_embed")
    elif use_image:
        frames = pos_embed[:, 1:].reshape(1, FRAMES, -1, D).mean(axis=1)
        pos_embed = np.concatenate([pos_embed[:, :1], frames], axis=1)
    x = np.asarray(video, np.float64).transpose(0, 4, 1, 2, 3)  # (B, 3, T, H, W), as torch sees it
    b, c, t, hh, ww = x.shape
    patches = x.reshape(b, c, t, hh // PATCH, PATCH, ww // PATCH, PATCH)
    # Conv3d with kernel = stride = (1, p, p): a patch-wise contraction; tokens ordered (t, h, w)
    x = np.einsum("bcthiwj,dcij->bthwd", patches, w("patch_embed.proj.weight")[:, :, 0]) + w("patch_embed.proj.bias")
    x = x.reshape(b, -1, D)
    x = np.concatenate([np.broadcast_to(w("cls_token"), (b, 1, D)), x], axis=1) + pos_embed
    if visible is not None:
        x = np.concatenate([x[:, :1], np.take_along_axis(x[:, 1:], np.asarray(visible)[..., None], axis=1)], axis=1)
    layers = []
    for i in range(DEPTH):
        p = lambda k: w(f"blocks.{i}.{k}")
        y = rms_norm(x, p("norm1.weight"))
        qkv = (y @ p("attn.qkv.weight").T).reshape(b, -1, 3, HEADS, D // HEADS)  # rows [q; k; v], no bias
        q, k, v = (qkv[:, :, j].reshape(b, -1, D) for j in range(3))
        q, k = rms_norm(q, p("attn.q_norm.weight")), rms_norm(k, p("attn.k_norm.weight"))  # over the full width
        attn = multi_head(q, k, v, HEADS) @ p("attn.proj.weight").T + p("attn.proj.bias")
        x = x + p("ls1.gamma") * attn
        y = rms_norm(x, p("norm2.weight"))
        hidden = gelu(y @ p("mlp.fc1.weight").T + p("mlp.fc1.bias"), exact_gelu)
        x = x + p("ls2.gamma") * (hidden @ p("mlp.fc2.weight").T + p("mlp.fc2.bias"))
        layers.append(x)
    pool = lambda k: w(f"clip_projector.{k}")
    ln = lambda y, n: layer_norm(y, pool(f"norm1_{n}.weight"), pool(f"norm1_{n}.bias"), eps=1e-5)
    project = lambda y, n: y @ pool(f"cross_attn.{n}.weight").T + pool(f"cross_attn.{n}_bias")
    query = ln(x.mean(axis=1, keepdims=True), "q")  # the mean of all tokens, CLS included
    out = multi_head(project(query, "q"), project(ln(x, "k"), "k"), project(ln(x, "v"), "v"), POOL_HEADS)
    pooled = (out @ pool("cross_attn.proj.weight").T + pool("cross_attn.proj.bias"))[:, 0]
    logits = None
    if prefix + "head.weight" in state:
        logits = layer_norm(pooled, w("fc_norm.weight"), w("fc_norm.bias"), eps=1e-5) @ w("head.weight").T
        logits = logits + w("head.bias")
    return {"tokens": x, "layers": layers, "pooled": pooled, "logits": logits}


def official_stage1_heads(state, out, visible):
    """PretrainInternVideo2's heads on `official_forward(..., visible)`: the last CLIP_LAYERS blocks + clip_pos_embed
    (CLS and visible positions) -> clip_decoder.{k} (Linear_Decoder: Linear -> LayerNorm 1e-5 -> L2); the pooled
    feature -> final_clip_decoder; the last MAE_LAYERS blocks' patch tokens + mae_pos_embed (visible positions) ->
    mae_decoder.{k} (MLP_Decoder: Linear -> nn.GELU -> Linear -> LayerNorm -> L2)."""
    w = lambda k: np.asarray(state[k], np.float64)
    l2 = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    norm = lambda x, name: layer_norm(x, w(f"{name}.norm.weight"), w(f"{name}.norm.bias"), eps=1e-5)
    linear = lambda x, name: x @ w(f"{name}.weight").T + w(f"{name}.bias")
    pick = lambda table: np.take_along_axis(np.broadcast_to(table, (len(visible),) + table.shape[1:]),
                                            np.asarray(visible)[..., None], axis=1)
    clip_pos = np.concatenate([np.broadcast_to(w("clip_pos_embed")[:, :1], (len(visible), 1, D)),
                               pick(w("clip_pos_embed")[:, 1:])], axis=1)
    image = [l2(norm(linear(x + clip_pos, f"clip_decoder.{k}.head"), f"clip_decoder.{k}"))
             for k, x in enumerate(out["layers"][DEPTH - CLIP_LAYERS:])]
    final = l2(norm(linear(out["pooled"], "final_clip_decoder.head"), "final_clip_decoder"))
    mae_pos = pick(w("mae_pos_embed"))
    video = []
    for k, x in enumerate(out["layers"][DEPTH - MAE_LAYERS:]):
        hidden = gelu(linear(x[:, 1:] + mae_pos, f"mae_decoder.{k}.head.0"), exact=True)
        video.append(l2(norm(linear(hidden, f"mae_decoder.{k}.head.2"), f"mae_decoder.{k}")))
    return {"image_layers": np.stack(image), "image_pooled": final, "video_layers": np.stack(video)}


def max_err(name, ours, want, tol=TOL):
    err = float(np.max(np.abs(np.asarray(ours, np.float64) - want)))
    print(f"{name}: max abs error {err:.2e}")
    assert err <= tol, (name, err)
    return err


def same(a, b) -> bool:
    fa, fb = common.flatten(a), common.flatten(b)
    return fa.keys() == fb.keys() and all(
        np.asarray(fa[k]).dtype == np.asarray(fb[k]).dtype and np.array_equal(fa[k], fb[k]) for k in fa)


def same_state(a, b) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and np.array_equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------------------
# Single-modality files -> InternVideo2
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finetuned():
    state = official_vision(classes=CLASSES)
    return state, convert.load_variables({"module": state}, encoder(num_classes=CLASSES))


def test_finetuned_file_matches_the_official_forward(finetuned):
    state, (variables, report) = finetuned
    assert report.num_tensors == len(state) and not report.dropped and not report.at_init
    out = jax.jit(encoder(num_classes=CLASSES).apply)(variables, clips())
    want = official_forward(state, clips())
    for name in ("tokens", "pooled", "logits"):
        max_err(name, out[name], want[name])


@pytest.mark.parametrize("act, exact", [("gelu", True), ("gelu_tanh", False)])
def test_each_mlp_activation_matches_its_official_mlp(act, exact, finetuned):
    """`act='gelu'` is the official Mlp of use_fused_mlp=False (nn.GELU), 'gelu_tanh' flash-attn's FusedMLP; the
    converted weights are the same, the other activation is about 1e-3 off."""
    state, (variables, _) = finetuned
    with jax.default_matmul_precision("highest"):
        out = jax.jit(encoder(num_classes=CLASSES, act=act).apply)(variables, clips())
    want = official_forward(state, clips(), exact_gelu=exact)
    for name in ("tokens", "pooled", "logits"):
        max_err(f"{name} ({act})", out[name], want[name], tol=1e-5)
    other = official_forward(state, clips(), exact_gelu=not exact)
    assert np.max(np.abs(np.asarray(out["tokens"], np.float64) - other["tokens"])) > 1e-4


def test_activation_is_a_config_field():
    from configs import internvideo2 as sizes, internvideo2_align, internvideo2_distill
    assert sizes.encoder_config("1B")["act"] == "gelu_tanh"  # the released checkpoints' fused MLP
    assert internvideo2_distill.get_config("S,act=gelu").model.kwargs.student.act == "gelu"
    assert internvideo2_align.get_config("S,act=gelu").model.kwargs.vision_config.act == "gelu"
    with pytest.raises(ValueError, match="InternVideo2.act='relu': expected one of"):
        encoder(act="relu").init(jax.random.PRNGKey(0), clips())


@pytest.mark.parametrize("scan", [False, True])
def test_finetuned_file_round_trips(scan, finetuned):
    state, (looped, _) = finetuned
    model = encoder(num_classes=CLASSES, scan=scan)
    variables, _ = convert.load_variables(state, model)
    # stacked layers hold the looped values (tests/test_internvideo2.py checks the scanned forward equals the loop)
    assert same(variables, common.loop_to_scan(looped) if scan else looped)
    back = convert.to_state_dict(variables)
    assert same_state(back, state)
    again, _ = convert.load_variables(back, model)
    assert same(again, variables)
    if scan:
        assert variables["params"]["encoder"]["transformer"]["blocks"]["attn"]["qkv"]["kernel"].shape == (
            DEPTH, D, 3, HEADS, D // HEADS)


@pytest.mark.parametrize("sep", [True, False])
def test_images_run_at_one_frame_with_the_official_image_positions(sep):
    """A one-frame input is an image (official `use_image`): with `sep_image_video_pos_embed` the file's
    `img_pos_embed` converts and gives its positions, without it the CLS position and the frames' mean of
    `pos_embed`; tokens and pooled equal the official forward, every token and a masked subset."""
    state = official_vision()
    state["img_pos_embed"] = randomise({"img_pos_embed": (1, 1 + TOKENS // FRAMES, D)}, seed=7)["img_pos_embed"]
    model = encoder(sep_image_video_pos_embed=sep)
    variables, report = convert.load_variables(state, model)
    assert ("img_pos_embed" in report.dropped) != sep
    reference = state if sep else {k: v for k, v in state.items() if k != "img_pos_embed"}
    image = clips(frames=1)
    visible = np.array([[0, 2, 3, 8], [1, 4, 5, 7]])
    for kept in (None, visible):
        out = model.apply(variables, image, kept)
        want = official_forward(reference, image, visible=kept, use_image=True)
        max_err(f"image tokens (sep={sep}, visible={kept is not None})", out["tokens"], want["tokens"])
        max_err(f"image pooled (sep={sep}, visible={kept is not None})", out["pooled"], want["pooled"])
    assert model.apply(variables, clips())["tokens"].shape == (2, 1 + TOKENS, D)  # videos keep pos_embed
    if sep:
        np.testing.assert_array_equal(variables["params"]["encoder"]["img_pos_embed"], state["img_pos_embed"])
        assert same_state(convert.to_state_dict(variables), state)


def test_image_position_table_starts_from_the_one_frame_sincos_table():
    """The official init_pos_embed: img_pos_embed = get_3d_sincos_pos_embed(D, h, t_size=1, cls_token=True): CLS
    zeros, then (h, w) rows of the temporal code of position 0, the w code and the h code."""
    variables = encoder(sep_image_video_pos_embed=True).init(jax.random.PRNGKey(0), clips())
    image = np.asarray(nn.unbox(variables)["params"]["encoder"]["img_pos_embed"])
    side = IMAGE // PATCH
    table = [[0.0] * D] + [sincos_code(0, D // 4) + sincos_code(wi, 3 * D // 8) + sincos_code(hi, 3 * D // 8)
                           for hi in range(side) for wi in range(side)]
    np.testing.assert_allclose(image[0], np.asarray(table), rtol=0, atol=1e-6)


def test_stage1_file_into_the_encoder_drops_the_distillation_heads():
    state = official_vision(stage1=True)
    state["img_pos_embed"] = np.zeros((1, 10, D), np.float32)
    variables, report = convert.load_variables({"model": {f"module.{k}": v for k, v in state.items()}}, encoder())
    extras = sorted(k for k in state if k.startswith(("clip_decoder.", "final_clip_decoder.", "mae_decoder.",
                                                      "clip_pos_embed", "mae_pos_embed", "img_pos_embed")))
    assert report.dropped == extras and len(extras) == 4 * CLIP_LAYERS + 4 + 6 * MAE_LAYERS + 3
    assert f"dropped {len(extras)} checkpoint keys: clip_decoder.0.head.bias" in report.summary()
    back = convert.to_state_dict(variables)
    assert same_state(back, {k: v for k, v in state.items() if k not in extras})


def test_pretrained_file_into_a_classifier_starts_the_head_at_init():
    state = official_vision()
    model = encoder(num_classes=CLASSES)
    variables, report = convert.load_variables(state, model)
    assert report.at_init == ["params/fc_norm/", "params/head/"]
    assert "left at init (2 subtrees): params/fc_norm/, params/head/" in report.summary()
    params = variables["params"]
    np.testing.assert_array_equal(params["fc_norm"]["scale"], np.ones(POOL_OUT, np.float32))
    assert params["head"]["kernel"].shape == (POOL_OUT, CLASSES) and 0 < np.abs(params["head"]["kernel"]).max() < 1e-3
    np.testing.assert_array_equal(params["encoder"]["cls_token"], state["cls_token"])
    # a head with another number of classes: dropped on request, then it starts at init too
    other = official_vision(classes=7)
    with pytest.raises(ConversionError, match=r"head.weight: checkpoint \(7, 24\), model expects \(5, 24\)"):
        convert.load_variables(other, model)
    _, report = convert.load_variables(other, model, drop=[r"^head\."], initial=variables)
    assert report.at_init == ["params/head/"] and report.dropped == ["head.bias", "head.weight"]


def test_pos_embed_of_other_frames_and_resolution_is_resampled():
    src = official_vision(tokens=4 * 9)  # a 4-frame file into the 2-frame model
    variables, report = convert.load_variables(src, encoder())
    want = resample_pos_embed(src["pos_embed"], (4, 3, 3), GRID)
    np.testing.assert_array_equal(variables["params"]["encoder"]["pos_embed"], want)
    np.testing.assert_array_equal(want[:, 0], src["pos_embed"][:, 0])  # the CLS position is kept
    assert report.resampled == ["pos_embed (4, 3, 3) -> (2, 3, 3)"]
    assert "resampled position embeddings: pos_embed (4, 3, 3) -> (2, 3, 3)" in report.summary()
    other = official_vision(tokens=4 * 16)  # 4 frames of 16x16 (4x4 patches): the frames must be given
    with pytest.raises(ConversionError, match=r"pos_embed \(1, 65, 32\): its 64 positions are not frames of 3x3"):
        convert.load_variables(other, encoder())
    variables, report = convert.load_variables(other, encoder(), src_frames=4)
    np.testing.assert_array_equal(variables["params"]["encoder"]["pos_embed"],
                                  resample_pos_embed(other["pos_embed"], (4, 4, 4), GRID))


def test_errors_name_the_keys():
    model = encoder()
    state = official_vision()
    bad = dict(state, **{"blocks.1.attn.qkv.weight": np.zeros((3 * D, D + 1), np.float32)})
    del bad["clip_projector.cross_attn.k_bias"]
    bad["blocks.2.norm1.weight"] = np.ones(D, np.float32)
    with pytest.raises(ConversionError) as err:
        convert.load_variables(bad, model)
    message = str(err.value)
    assert "blocks.1.attn.qkv.weight: checkpoint (96, 33), model expects (96, 32)" in message
    assert "clip_projector.cross_attn.k_bias (32,) (for params/clip_projector/cross_attn/k/bias)" in message
    assert "unexpected keys:\n    blocks.2.norm1.weight (32,)" in message
    with pytest.raises(ConversionError, match="into the stage-2 VideoTextAlign"):
        convert.load_variables(state, model, "internvideo2_stage2")
    with pytest.raises(ValueError, match="unknown InternVideo2 checkpoint format 'internvideo2_av'"):
        convert.to_state_dict({"params": {}}, "internvideo2_av")


# ----------------------------------------------------------------------------------------------------------
# Stage-1 files -> the Distiller (student + heads; teachers not in the file)
# ----------------------------------------------------------------------------------------------------------

DISTILLER = dict(
    student=dict(VISION), image_layers=CLIP_LAYERS, video_layers=MAE_LAYERS, mask_ratio=0.5,
    teacher_image=dict(width=CLIP_DIM, depth=2, num_heads=2, mlp_dim=32, patch_size=PATCH, num_frames=1,
                       image_size=IMAGE, attn_pool_heads=2, clip_embed_dim=CLIP_FINAL),
    teacher_video=dict(width=MAE_DIM, depth=2, num_heads=2, mlp_dim=40, patch_size=PATCH, tubelet_size=2,
                       num_frames=2 * FRAMES, image_size=IMAGE, final_norm=True))


def test_stage1_file_into_the_distiller_converts_the_heads():
    state = official_vision(stage1=True)
    model = Distiller(**DISTILLER)
    variables, report = convert.load_variables(state, model)
    assert report.num_tensors == len(state) and not report.dropped
    assert report.omitted == ["params/teacher_image/", "params/teacher_video/"]
    assert "not converted (restore them with init_from): params/teacher_image/" in report.summary()
    params = variables["params"]
    assert set(params) == {"student", "clip_pos_embed", "mae_pos_embed", "clip_decoder_0", "clip_decoder_1",
                           "final_clip_decoder", "mae_decoder_0", "mae_decoder_1"}
    np.testing.assert_array_equal(params["clip_decoder_1"]["head"]["kernel"], state["clip_decoder.1.head.weight"].T)
    np.testing.assert_array_equal(params["mae_decoder_0"]["head_2"]["bias"], state["mae_decoder.0.head.2.bias"])
    np.testing.assert_array_equal(params["mae_pos_embed"], state["mae_pos_embed"])
    assert same_state(convert.to_state_dict(variables), state)
    # the student is the encoder: the same values as converting into a plain InternVideo2
    plain, _ = convert.load_variables(state, encoder())
    assert same({"params": params["student"]}, plain)
    # the student alone (the registry's stage-1 preset: no teachers, no heads): the heads are dropped
    student_only = Distiller(student=dict(VISION), teacher_image={}, teacher_video={}, image_layers=0,
                             video_layers=0, image_pooled=False, mask_source="random")
    variables, report = convert.load_variables(state, student_only)
    assert set(variables["params"]) == {"student"} and len(report.dropped) == 4 * CLIP_LAYERS + 4 + 6 * MAE_LAYERS + 2
    assert same({"params": variables["params"]["student"]}, plain)
    # a 4-frame file: all three position tables resampled (the MAE one has no CLS position)
    four = official_vision(stage1=True, tokens=4 * 9)
    variables, report = convert.load_variables(four, model)
    assert [line.split()[0] for line in report.resampled] == ["clip_pos_embed", "mae_pos_embed", "pos_embed"]
    np.testing.assert_array_equal(variables["params"]["mae_pos_embed"],
                                  resample_pos_embed(four["mae_pos_embed"], (4, 3, 3), GRID))


# Head widths of an official stage-1 file that none of our teacher configs has: clip_teacher_embed_dim 24 (an
# InternVideo2 teacher that wide has no 3-D sin-cos table: its 18 spatial channels split into odd halves),
# clip_teacher_final_dim 12, mae_teacher_embed_dim 20.
HEAD_DIMS = dict(clip_dim=24, clip_final=12, mae_dim=20)


def student_only(**overrides):
    """The stage-1 student and its heads, sized directly (no teacher config): Distiller(parts='student')."""
    return Distiller(**dict(dict(
        student=dict(VISION), teacher_image={}, teacher_video={}, image_layers=CLIP_LAYERS, video_layers=MAE_LAYERS,
        mask_ratio=0.5, frame_stride=1, parts="student", clip_teacher_embed_dim=HEAD_DIMS["clip_dim"],
        clip_teacher_final_dim=HEAD_DIMS["clip_final"], mae_teacher_embed_dim=HEAD_DIMS["mae_dim"]), **overrides))


def test_stage1_heads_sized_directly_match_the_official_forward():
    state = official_vision(stage1=True, **HEAD_DIMS)
    model = student_only()
    variables, report = convert.load_variables({"module": state}, model)
    assert report.num_tensors == len(state) and not report.dropped and not report.omitted
    assert same_state(convert.to_state_dict(variables), state)
    # per frame 9 - int(9 * 0.5) = 5 of the 9 patch tokens visible, ascending (the official `x[~mask]` order)
    rng = np.random.default_rng(3)
    visible = np.stack([np.concatenate([np.sort(rng.choice(9, 5, replace=False)) + 9 * t for t in range(FRAMES)])
                        for _ in range(2)]).astype(np.int32)
    teacher = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), model.teacher_shapes(2))
    teacher["visible_idx"] = visible
    with jax.default_matmul_precision("highest"):
        pred = jax.jit(lambda v, x, t: model.apply(v, x, teacher=t))(variables, clips(), teacher)["pred"]
    want = official_stage1_heads(state, official_forward(state, clips(), visible=visible), visible)
    for name in ("image_layers", "image_pooled", "video_layers"):
        max_err(f"stage-1 {name}", pred[name], want[name], tol=1e-5)


def test_stage1_file_into_a_distiller_whose_teacher_cannot_be_built():
    """The loader never builds a Distiller's teachers: with a 24-wide InternVideo2 image teacher the heads take its
    width, and the variables equal the student-only model's."""
    state = official_vision(stage1=True, **HEAD_DIMS)
    teacher_image = dict(DISTILLER["teacher_image"], width=HEAD_DIMS["clip_dim"],
                         clip_embed_dim=HEAD_DIMS["clip_final"])
    teacher_video = dict(DISTILLER["teacher_video"], width=HEAD_DIMS["mae_dim"])
    model = Distiller(**dict(DISTILLER, teacher_image=teacher_image, teacher_video=teacher_video))
    variables, report = convert.load_variables(state, model)
    assert report.omitted == ["params/teacher_image/", "params/teacher_video/"] and not report.dropped
    assert same(variables, convert.load_variables(state, student_only())[0])
    wrong = Distiller(**dict(DISTILLER, teacher_image=teacher_image, teacher_video=teacher_video,
                             clip_teacher_embed_dim=16))
    with pytest.raises(ValueError, match="model.kwargs.clip_teacher_embed_dim=16: expected a width >= 1 equal to "
                                         "teacher_image's 24"):
        convert.load_variables(state, wrong)
    with pytest.raises(ValueError, match="model.kwargs.mae_teacher_embed_dim: the video_layers heads' width is "
                                         "needed without teacher_video"):
        convert.load_variables(state, student_only(mae_teacher_embed_dim=None))
    with pytest.raises(ConversionError, match=r"Distiller\(parts='teachers'\) holds no student"):
        convert.load_variables(state, model.clone(parts="teachers"))


# ----------------------------------------------------------------------------------------------------------
# Stage 2 -> VideoTextAlign
# ----------------------------------------------------------------------------------------------------------


def align(scan=False):
    return VideoTextAlign(vision_config=dict(VISION, scan=scan), text_config=TEXT, embed_dim=EMBED)


@pytest.fixture(scope="module")
def stage2():
    state = official_stage2()
    return state, convert.load_variables({"module": state}, align(), "internvideo2_stage2")


@pytest.mark.parametrize("scan", [False, True])
def test_stage2_file_round_trips(scan, stage2):
    state, (looped, _) = stage2
    model = align(scan)
    variables, report = convert.load_variables({"module": state}, model, "internvideo2_stage2")
    dropped = sorted(k for k in state if re.search(
        r"^vision_encoder\.(clip_decoder|final_clip_decoder|clip_pos_embed|img_pos_embed)|decoder\.|position_ids", k))
    assert report.dropped == dropped and not report.at_init
    assert "text_encoder.cls.predictions.decoder.weight" in dropped and "vision_encoder.img_pos_embed" in dropped
    back = convert.to_state_dict(variables, "internvideo2_stage2")
    kept = {k: v for k, v in state.items() if k not in dropped or ".predictions.decoder." in k}
    assert same_state(back, kept)  # the tied decoder is written back
    again, _ = convert.load_variables(back, model, "internvideo2_stage2")
    assert same(again, variables)
    params = variables["params"]
    np.testing.assert_array_equal(params["temp"], state["temp"])
    np.testing.assert_array_equal(params["text_encoder"]["layer_1"]["cross_attn"]["kv"]["kernel"][:, 1].reshape(D, TW),
                                  state["text_encoder.bert.encoder.layer.1.crossattention.self.value.weight"].T)
    assert same(variables, common.loop_to_scan(looped) if scan else looped)


def test_stage2_encoders_on_the_converted_variables(stage2):
    state, (variables, _) = stage2
    model = align()
    ids = np.array([[1, 7, 9, 3, 0, 0], [1, 4, 4, 5, 6, 3]], np.int32)
    video, text = jax.jit(lambda v, x, i: (model.apply(v, x, method="encode_video"),
                                           model.apply(v, i, method="encode_text")))(variables, clips(), ids)
    pooled = official_forward(state, clips(), "vision_encoder.")["pooled"]
    want = pooled @ state["vision_proj.weight"].T.astype(np.float64) + state["vision_proj.bias"]
    max_err("stage-2 video feature", video, want / np.linalg.norm(want, axis=-1, keepdims=True))
    assert text.shape == (2, EMBED) and np.allclose(np.linalg.norm(text, axis=-1), 1, atol=1e-5)


def test_stage2_image_feature_with_the_files_image_positions():
    """The 1B stage-2 file's `vision_encoder.img_pos_embed` into a model with `sep_image_video_pos_embed`: an image
    (one frame) gets the official `encode_vision(image)` feature (use_image with the file's table)."""
    state = official_stage2()
    state["vision_encoder.img_pos_embed"] = randomise({"t": (1, 1 + TOKENS // FRAMES, D)}, seed=9)["t"]
    model = VideoTextAlign(vision_config=dict(VISION, sep_image_video_pos_embed=True), text_config=TEXT,
                           embed_dim=EMBED)
    variables, report = convert.load_variables({"module": state}, model, "internvideo2_stage2")
    assert "vision_encoder.img_pos_embed" not in report.dropped
    image = clips(frames=1)
    feature = model.apply(variables, image, method="encode_video")
    pooled = official_forward(state, image, "vision_encoder.", use_image=True)["pooled"]
    want = pooled @ state["vision_proj.weight"].T.astype(np.float64) + state["vision_proj.bias"]
    max_err("stage-2 image feature", feature, want / np.linalg.norm(want, axis=-1, keepdims=True))
    assert convert.to_state_dict(variables, "internvideo2_stage2")["vision_encoder.img_pos_embed"].shape == (
        1, 1 + TOKENS // FRAMES, D)


def test_stage2_errors():
    model = align()
    state = official_stage2()
    untied = dict(state, **{"text_encoder.cls.predictions.decoder.bias": np.ones(VOCAB, np.float32)})
    with pytest.raises(ConversionError, match="text_encoder.cls.predictions.decoder.bias differs from "
                                              "text_encoder.cls.predictions.bias"):
        convert.load_variables(untied, model, "internvideo2_stage2")
    audio = dict(state, **{"audio_proj.weight": np.zeros((EMBED, 4), np.float32)})
    with pytest.raises(ConversionError, match="audio_proj.weight .*audio-visual stage-2 file .*needs a model with its "
                                              "audio encoder"):
        convert.load_variables(audio, model, "internvideo2_stage2")  # tests/test_convert_audio.py converts it
    missing = {k: v for k, v in state.items() if k != "text_proj.bias"}
    with pytest.raises(ConversionError, match=r"missing keys:\n    text_proj.bias \(8,\)"):
        convert.load_variables(missing, model, "internvideo2_stage2")
    with pytest.raises(ConversionError, match="not a VideoTextAlign"):
        convert.load_variables(state, model, "internvideo2")


# ----------------------------------------------------------------------------------------------------------
# CLI and registry
# ----------------------------------------------------------------------------------------------------------

CLASSIFIER_CONFIG = f"""
import ml_collections


def get_config(arg=None):
    return ml_collections.ConfigDict(dict(task="classification", model=dict(
        name="internvideo2", kwargs=dict({dict(VISION, num_classes=CLASSES, scan=True)!r}))))
"""


def restore(directory):
    import orbax.checkpoint as ocp
    manager = ocp.CheckpointManager(str(directory), item_names=("state",))
    restored = manager.restore(0, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return restored["state"]


def test_cli_converts_a_finetuned_file(tmp_path, capsys):
    config = tmp_path / "tiny_iv2.py"
    config.write_text(CLASSIFIER_CONFIG)
    state = official_vision(classes=CLASSES, stage1=True)
    path = tmp_path / "iv2.safetensors"
    safetensors.numpy.save_file(state, str(path))
    out = tmp_path / "converted"
    assert cli.main(["--format=internvideo2", f"--config={config}", f"--input={path}", f"--output={out}"]) == 0
    printed = capsys.readouterr().out
    extras = 4 * CLIP_LAYERS + 4 + 6 * MAE_LAYERS + 2
    assert f"converted {len(state) - extras} tensors" in printed and f"dropped {extras} checkpoint keys" in printed
    want, _ = convert.load_variables(state, encoder(num_classes=CLASSES, scan=True))
    assert same(restore(out), want)
    # presets: an InternVideo2 size (8 frames by default), stage 2 needs a config
    args = cli.parse_args(["--format=internvideo2", "--model=1B", "--num_classes=400", "--input=x", "--output=y"])
    model = cli.build_model(args)
    assert isinstance(model, InternVideo2) and (model.width, model.depth, model.num_frames) == (1408, 40, 8)
    assert model.num_classes == 400
    args = cli.parse_args(["--format=internvideo2_stage2", "--model=1B", "--input=x", "--output=y"])
    with pytest.raises(ValueError, match="needs a config file"):
        cli.build_model(args)
    assert cli.main(["--format=internvideo2_stage2", "--model=1B", "--input=x", "--output=y"]) == 2


def test_clip_variant_file_replaces_the_attention_pooler(tmp_path, capsys):
    """The InternVideo2-CLIP extra file (its post-trained `vision_encoder.clip_projector.*` and keys of a text tower
    we have no model for), through the CLI: the checkpoint holds only `clip_projector`; over an encoder converted
    from another file, the pooled feature equals the float64 official forward of that file with this pooler."""
    base = official_vision(seed=0)
    pooler = {k: v for k, v in official_vision(seed=5).items() if k.startswith("clip_projector.")}
    clip_file = {f"vision_encoder.{k}": v for k, v in pooler.items()}
    clip_file.update({"text_encoder.text_projection": np.ones((8, 4), np.float32),
                      "text_encoder.transformer.layers.0.attention.wq.lora_A": np.ones((2, 8), np.float32),
                      "temp": np.asarray(0.01, np.float32)})
    path = tmp_path / "clip.pth.safetensors"
    safetensors.numpy.save_file(clip_file, str(path))
    out = tmp_path / "clip"
    args = ["--format=internvideo2_clip", "--model=S", f"--input={path}", f"--output={out}"]
    size = cli.build_model(cli.parse_args(args))
    assert isinstance(size, InternVideo2) and size.num_frames == 8
    model = encoder()
    variables, report = convert.load_variables(clip_file, model, "internvideo2_clip")
    assert set(variables["params"]) == {"clip_projector"} and len(report.dropped) == 3
    assert same_state(convert.to_state_dict(variables, "internvideo2_clip"), {k: clip_file[k] for k in clip_file
                                                                              if k.startswith("vision_encoder.")})
    merged, _ = convert.load_variables(base, model)
    merged["params"]["clip_projector"] = variables["params"]["clip_projector"]
    pooled = jax.jit(model.apply)(merged, clips())["pooled"]
    max_err("pooled", pooled, official_forward({**base, **pooler}, clips())["pooled"])
    with pytest.raises(ConversionError, match="clip_projector.cross_attn.q.weight"):
        convert.load_variables({k: v for k, v in clip_file.items() if not k.endswith("cross_attn.q.weight")}, model,
                               "internvideo2_clip")
    with pytest.raises(ConversionError, match="into an InternVideo2 encoder"):
        convert.load_variables(clip_file, align(), "internvideo2_clip")
    # the CLI writes it as a checkpoint (the tiny config's classifier: only its clip_projector is converted)
    config = tmp_path / "tiny_iv2.py"
    config.write_text(CLASSIFIER_CONFIG)
    assert cli.main(["--format=internvideo2_clip", f"--config={config}", f"--input={path}", f"--output={out}"]) == 0
    assert "dropped 3 checkpoint keys" in capsys.readouterr().out
    assert same(restore(out), variables)


def test_bert_hf_into_the_align_text_encoder_equals_the_stage2_text_part(tmp_path):
    """The same BERT weights read as a BertForMaskedLM file (bert_hf, through the CLI) and inside a stage-2 file."""
    state = official_stage2()
    hf = {k.removeprefix("text_encoder."): v for k, v in state.items() if k.startswith("text_encoder.")}
    path = tmp_path / "bert.safetensors"
    safetensors.numpy.save_file(hf, str(path))
    text, report = api.convert_checkpoint(str(path), "bert_hf", align())
    assert not report.at_init
    full, _ = convert.load_variables(state, align(), "internvideo2_stage2")
    assert same(text, {"params": full["params"]["text_encoder"]})


def test_registry_presets_convert_through_their_format(tmp_path):
    assert {"internvideo2_1b_stage1", "internvideo2_1b_stage2"} <= set(presets.names())
    for name in ("internvideo2_1b_stage1", "internvideo2_1b_stage2"):
        assert presets.PRESETS[name].format in presets.FORMATS
    assert presets.PRESETS["internvideo2_1b_stage2"].format == "internvideo2_stage2"  # the test-size model's too
    variables = random_variables(tiny("internvideo2_stage2"), seed=3)
    state = convert.to_state_dict(variables, "internvideo2_stage2")
    path = tmp_path / "stage2.safetensors"
    safetensors.numpy.save_file(state, str(path))
    model = get_task(presets.build_config(presets.get(tiny("internvideo2_stage2")))).model
    loaded, report = api.convert_checkpoint(str(path), "internvideo2_stage2", model)
    assert same(loaded, variables)
    assert report.dropped == ["text_encoder.cls.predictions.decoder.bias",
                              "text_encoder.cls.predictions.decoder.weight"]

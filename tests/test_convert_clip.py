"""CLIP-family converters: parity with transformers' CLIPModel, with official-layout UniFormerV2 / InternVideo-MM models
assembled from torch modules, round trips, error messages, the CLI.

Tolerance: max abs error <= 1e-4 in float32 (tiny models, every weight and BatchNorm statistic randomised); a still
clip's video feature against CLIP's image feature: 2e-4, as LayerNorm's eps enters once more (test_clip_hf_parity).
"""
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn
from transformers import CLIPConfig, CLIPModel

from invideo_jax.convert import cli, clip, common
from invideo_jax.models.multimodal import VideoTextModel
from invideo_jax.models.uniformerv2 import UniFormerV2
from invideo_jax.train.init_from import restore_subtrees
from tests import test_caption as caption_ref  # the official caption decoder's state and forward, re-derived
from tests.random_trees import draw_like

TOL = 1e-4
WIDTH, HEADS, DEPTH, PATCH, IMAGE, FRAMES, CLASSES = 32, 2, 2, 8, 16, 4, 5
VOCAB, CONTEXT, TEXT_WIDTH, EMBED = 100, 16, 32, 24
EOT = VOCAB - 1  # CLIP's end-of-text id is the largest id
GRID = IMAGE // PATCH
VISUAL = dict(width=WIDTH, depth=DEPTH, num_heads=HEADS, mlp_dim=2 * WIDTH, patch_size=PATCH, image_size=IMAGE,
              num_frames=FRAMES, global_layers=(0, 1))
TEXT = dict(vocab_size=VOCAB, context_length=CONTEXT, width=TEXT_WIDTH, depth=DEPTH, num_heads=HEADS,
            mlp_dim=2 * TEXT_WIDTH)
# InternVideo-MM test sizes: the caption decoder's are those of tests/test_caption.py, whose reference we reuse.
MM_WIDTH = caption_ref.VISION
MM_TEXT = dict(TEXT, vocab_size=caption_ref.VOCAB, width=caption_ref.WIDTH, mlp_dim=2 * caption_ref.WIDTH)
MM_CAPTION = dict(depth=caption_ref.DEPTH, num_heads=caption_ref.HEADS, num_queries=caption_ref.QUERIES)


def videotext(frames=FRAMES, scan=False):
    return VideoTextModel(visual_config=dict(VISUAL, num_frames=frames, scan=scan), text_config=dict(TEXT, scan=scan),
                          caption_config={}, embed_dim=EMBED)


def multimodal(scan=False):
    return VideoTextModel(visual_config=dict(VISUAL, width=MM_WIDTH, mlp_dim=2 * MM_WIDTH, scan=scan),
                          text_config=dict(MM_TEXT, scan=scan), caption_config=MM_CAPTION, embed_dim=EMBED)


def classifier(scan=False, width=WIDTH, temporal_downsample=True):
    """The SSv2 design: local UniBlocks, temporal downsampling (conv1 k_t = 3), global blocks, a head."""
    return UniFormerV2(**dict(VISUAL, width=width, mlp_dim=2 * width), temporal_downsample=temporal_downsample,
                       local_blocks=True, num_classes=CLASSES, scan=scan)


def randomise(module):
    """Every parameter ~ N(0, 0.2) (norm weights around 1), BatchNorm statistics random too."""
    torch.manual_seed(0)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn_like(param) * 0.2)
        for sub in module.modules():
            if isinstance(sub, (nn.LayerNorm, nn.BatchNorm3d)):
                sub.weight.add_(1.0)
            if isinstance(sub, nn.BatchNorm3d):
                sub.running_mean.copy_(torch.randn_like(sub.running_mean) * 0.2)
                sub.running_var.copy_(torch.rand_like(sub.running_var) + 0.5)
    return module.eval()


apply_classifier = jax.jit(classifier().apply)  # compiled once for the tests that run it


def random_variables(model, seed=0):
    return draw_like(clip.expected_variables(model), seed)


def same(a, b) -> bool:
    fa, fb = common.flatten(a), common.flatten(b)
    return fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


def assert_close(name, ours, theirs, tol=TOL):
    err = float(np.max(np.abs(np.asarray(ours) - np.asarray(theirs))))
    print(f"{name}: max abs error {err:.2e}")
    assert err <= tol, (name, err)


def ids_with_eot(lengths, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, EOT - 1, (len(lengths), CONTEXT)).astype(np.int32)
    for row, n in enumerate(lengths):
        ids[row, n - 1], ids[row, n:] = EOT, 0
    return ids


def frames(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape + (IMAGE, IMAGE, 3)).astype(np.float32)


def to_torch_video(video):
    """(N, T, H, W, 3) -> (N, 3, T, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(video.transpose(0, 4, 1, 2, 3)))


# ----------------------------------------------------------------------------------------------------------
# Hugging Face CLIP
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_clip():
    config = CLIPConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH,
                         num_hidden_layers=DEPTH, num_attention_heads=HEADS, max_position_embeddings=CONTEXT,
                         hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=EOT - 1, eos_token_id=EOT,
                         pad_token_id=0),
        vision_config=dict(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=DEPTH,
                           num_attention_heads=HEADS, image_size=IMAGE, patch_size=PATCH, hidden_act="quick_gelu",
                           layer_norm_eps=1e-5),
        projection_dim=EMBED, attn_implementation="eager")
    return randomise(CLIPModel(config))


@pytest.fixture(scope="module")
def hf_converted(hf_clip):
    return clip.load_variables(hf_clip.state_dict(), videotext(), "clip_hf")


def test_clip_hf_parity(hf_clip, hf_converted):
    model, one_frame = videotext(), videotext(frames=1)
    variables, report = hf_converted
    assert report.num_tensors == len(hf_clip.state_dict()) and not report.dropped
    assert report.at_init == [
        "params/text/text_mask_embedding", "params/visual/backbone/balance", "params/visual/backbone/dec_0/",
        "params/visual/backbone/dec_1/", "params/visual/backbone/dpe_0/", "params/visual/backbone/dpe_1/",
        "params/visual/backbone/temporal_cls_token"]
    assert "left at init (7 subtrees)" in report.summary()

    ids, images = ids_with_eot([5, CONTEXT, 9]), frames((3,))
    frame_features = lambda m, video: m.visual_ln_post(m.visual(video)["frame_cls"][:, 0]) @ m.visual_proj
    text, frame, video = jax.jit(lambda v, ids, one, still: (  # one compilation for the three
        model.apply(v, ids, method="encode_text")["features"], one_frame.apply(v, one, method=frame_features),
        model.apply(v, still, method="encode_video")[0]))(
        variables, ids, images[:, None], np.repeat(images[:, None], FRAMES, axis=1))
    pixels = torch.from_numpy(images.transpose(0, 3, 1, 2))
    with torch.no_grad():
        want_text = hf_clip.get_text_features(input_ids=torch.from_numpy(ids).long()).pooler_output
        want_image = hf_clip.get_image_features(pixel_values=pixels).pooler_output
        cls = hf_clip.vision_model(pixel_values=pixels).last_hidden_state[:, 0]
        want_half = hf_clip.visual_projection(hf_clip.vision_model.post_layernorm(0.5 * cls))
    # (a) text features pooled at the end token (the largest id) against get_text_features
    assert_close("clip_hf text features", text, want_text)
    # (b) one-frame clips: the frame's CLS after visual_ln_post and visual_proj against get_image_features
    assert_close("clip_hf one-frame CLS features", frame, want_image)
    # (c) still clips (T identical frames), UniBlocks at their zero init: the query stays 0, so the fused feature is
    # 0.5 * the frame CLS and LayerNorm sees x/2, which is x with eps -> 4 eps. The exact expectation is CLIP's feature
    # of CLS/2 (tolerance 1e-4); its distance to CLIP's image feature (the eps effect, relative ~1.5 eps / var(CLS))
    # is itself checked to be under 1e-4, so the video feature equals CLIP's image feature within 2e-4.
    assert_close("clip_hf still-clip video features vs CLIP(CLS/2)", video, want_half)
    assert_close("eps effect: CLIP(CLS/2) vs CLIP(CLS)", want_half, want_image)
    assert_close("clip_hf still-clip video features vs CLIP image features", video, want_image, 2 * TOL)


def test_clip_vision_tower_inflates_into_a_uniformerv2_classifier(hf_clip):
    """conv1 k_t = 3 takes CLIP's kernel as its centre slice; the zero-initialised local UniBlocks leave the frames as
    CLIP sees them: output time t' (stride 2, padding 1) is CLIP's final CLS of input frame 2 t'."""
    model = classifier()
    variables, report = clip.load_variables(hf_clip.state_dict(), model, "clip_hf")
    assert {k.split(".")[0] for k in report.dropped} == {"text_model", "text_projection", "visual_projection",
                                                         "logit_scale", "vision_model"}
    assert [k for k in report.dropped if k.startswith("vision_model")] == [
        "vision_model.post_layernorm.bias", "vision_model.post_layernorm.weight"]
    assert "params/head/" in report.at_init and "batch_stats/backbone/transformer/blocks_1/lmhra2/" in report.at_init
    kernel = np.asarray(variables["params"]["backbone"]["conv1"]["kernel"])
    assert kernel.shape == (3, PATCH, PATCH, 3, WIDTH) and not kernel[0].any() and not kernel[2].any()
    video = frames((2, FRAMES))
    got = apply_classifier(variables, video)["frame_cls"]
    with torch.no_grad():
        centre = video[:, ::2].reshape(-1, IMAGE, IMAGE, 3).transpose(0, 3, 1, 2)
        want = hf_clip.vision_model(pixel_values=torch.from_numpy(np.ascontiguousarray(centre))).last_hidden_state
    assert_close("inflated conv1: frame CLS", got.reshape(-1, WIDTH), want[:, 0])


# ----------------------------------------------------------------------------------------------------------
# Official layouts assembled from torch modules under the official attribute names, with re-derived forwards
# (slowfast/models/uniformerv2_model.py, InternVideo clip_utils/model.py and clip_vit_only_global.py)
# ----------------------------------------------------------------------------------------------------------


def clip_block(width, local=False, extractor=False):
    """ResidualAttentionBlock (with lmhra1/lmhra2 when `local`) or, with `extractor`, a global block (+ ln_3)."""
    block = nn.Module()
    block.attn, block.ln_1, block.ln_2 = nn.MultiheadAttention(width, HEADS), nn.LayerNorm(width), nn.LayerNorm(width)
    block.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 2 * width), c_proj=nn.Linear(2 * width, width)))
    if extractor:
        block.ln_3 = nn.LayerNorm(width)
    reduced = int(width // 1.5)
    for name in ("lmhra1", "lmhra2") if local else ():
        lmhra = nn.Module()
        lmhra.pos_embed = nn.Sequential(
            nn.BatchNorm3d(width), nn.Conv3d(width, reduced, 1),
            nn.Conv3d(reduced, reduced, (3, 1, 1), padding=(1, 0, 0), groups=reduced), nn.Conv3d(reduced, width, 1))
        setattr(block, name, lmhra)
    return block


def official_uniformerv2(width, local, k_t, classes):
    """The official VisionTransformer's modules (`conv1` ... `transformer.proj`), randomised."""
    m = nn.Module()
    m.conv1 = nn.Conv3d(3, width, (k_t, PATCH, PATCH), (2 if k_t == 3 else 1, PATCH, PATCH), (k_t // 2, 0, 0),
                        bias=False)
    m.class_embedding = nn.Parameter(torch.zeros(width))
    m.positional_embedding = nn.Parameter(torch.zeros(GRID * GRID + 1, width))
    m.ln_pre = nn.LayerNorm(width)
    t = m.transformer = nn.Module()
    t.resblocks = nn.ModuleList([clip_block(width, local) for _ in range(DEPTH)])
    t.temporal_cls_token = nn.Parameter(torch.zeros(1, 1, width))
    t.dpe = nn.ModuleList([nn.Conv3d(width, width, 3, padding=1, groups=width) for _ in VISUAL["global_layers"]])
    t.dec = nn.ModuleList([clip_block(width, extractor=True) for _ in VISUAL["global_layers"]])
    t.balance = nn.Parameter(torch.zeros(width))
    if classes:
        t.proj = nn.Sequential(nn.LayerNorm(width), nn.Dropout(0.5), nn.Linear(width, classes))
    return randomise(m)


def mlp(block, x):
    fc = block.mlp.c_fc(x)
    return block.mlp.c_proj(fc * torch.sigmoid(1.702 * fc))


def residual_block(block, x, mask=None, local=lambda module, x: x):
    if hasattr(block, "lmhra1"):
        x = local(block.lmhra1, x)
    y = block.ln_1(x)
    x = x + block.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
    if hasattr(block, "lmhra2"):
        x = local(block.lmhra2, x)
    return x + mlp(block, block.ln_2(x))


@torch.no_grad()
def official_video_forward(m, video):
    """VisionTransformer.forward in eval mode: logits with `transformer.proj`, else the fused features."""
    x = m.conv1(video)
    n, c, t, h, w = x.shape
    x = x.permute(0, 2, 3, 4, 1).reshape(n * t, h * w, c)
    x = torch.cat([m.class_embedding.expand(n * t, 1, c), x], 1) + m.positional_embedding
    x = m.ln_pre(x).permute(1, 0, 2)  # (L, N*T, C), batch index n*T + t

    def local(lmhra, x):  # patch tokens as (N, C, T, H, W); CLS untouched
        patches = x[1:].reshape(h, w, n, t, c).permute(2, 4, 3, 0, 1)
        patches = patches + lmhra.pos_embed(patches)
        return torch.cat([x[:1], patches.permute(3, 4, 0, 2, 1).reshape(h * w, n * t, c)])

    tr = m.transformer
    query = tr.temporal_cls_token.repeat(1, n, 1)
    for i, block in enumerate(tr.resblocks):
        x = residual_block(block, x, local=local)
        if i in VISUAL["global_layers"]:
            j = VISUAL["global_layers"].index(i)
            tokens = x.reshape(h * w + 1, n, t, c)
            feats = tokens[1:].permute(1, 3, 2, 0).reshape(n, c, t, h, w)
            feats = tr.dpe[j](feats).reshape(n, c, t, h * w).permute(3, 0, 2, 1)
            context = torch.cat([tokens[:1], tokens[1:] + feats]).permute(2, 0, 1, 3).flatten(0, 1)  # (T*L, N, C)
            dec = tr.dec[j]
            context = dec.ln_3(context)
            query = query + dec.attn(dec.ln_1(query), context, context, need_weights=False)[0]
            query = query + mlp(dec, dec.ln_2(query))
    weight = torch.sigmoid(tr.balance)
    features = (1 - weight) * query[0] + weight * x.reshape(h * w + 1, n, t, c)[0].mean(1)
    return tr.proj(features) if hasattr(tr, "proj") else features


def official_internvideo():
    """InternVideo-MM's `clip` module (VideoIntern): vit_only_global visual tower, text tower, projections."""
    m = nn.Module()
    m.visual = official_uniformerv2(MM_WIDTH, local=False, k_t=1, classes=0)
    m.visual_ln_post = nn.LayerNorm(MM_WIDTH)
    m.visual_proj = nn.Parameter(torch.zeros(MM_WIDTH, EMBED))
    width = MM_TEXT["width"]
    m.transformer = nn.Module()
    m.transformer.resblocks = nn.ModuleList([clip_block(width) for _ in range(DEPTH)])
    m.token_embedding = nn.Embedding(MM_TEXT["vocab_size"], width)
    m.positional_embedding = nn.Parameter(torch.zeros(CONTEXT, width))
    m.ln_final = nn.LayerNorm(width)
    m.text_projection = nn.Parameter(torch.zeros(width, EMBED))
    m.logit_scale = nn.Parameter(torch.zeros(()))
    m.text_mask_embedding = nn.Parameter(torch.zeros(1, 1, width))
    return randomise(m)


@torch.no_grad()
def official_text_forward(m, ids):
    x = (m.token_embedding(ids) + m.positional_embedding).permute(1, 0, 2)
    mask = torch.full((CONTEXT, CONTEXT), -torch.inf).triu(1)
    for block in m.transformer.resblocks:
        x = residual_block(block, x, mask)
    x = m.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), ids.argmax(-1)] @ m.text_projection


def test_official_uniformerv2_forward():
    """Every kind of transform at once: conv1 (k_t = 3), fused in_proj (backbone) and its q / kv split (global
    blocks), depthwise dpe and LMHRA convs, 1x1x1 convs, BatchNorm running statistics, balance, head."""
    official = official_uniformerv2(WIDTH, local=True, k_t=3, classes=CLASSES)
    state = {f"backbone.{k}": v for k, v in official.state_dict().items()}
    model = classifier()
    variables, report = clip.load_variables({"model_state": state, "epoch": 30}, model)  # a SlowFast .pyth
    assert report.num_tensors == len(state) - 2 * DEPTH and not report.at_init
    assert sorted(report.dropped) == sorted(k.removeprefix("backbone.") for k in state if "num_batches" in k)
    assert set(variables) == {"params", "batch_stats"}
    assert same(clip.load_variables(state, model)[0], variables)  # a K710 raw state dict
    video = frames((2, FRAMES))
    got = apply_classifier(variables, video)["logits"]
    assert_close("official UniFormerV2 logits", got, official_video_forward(official, to_torch_video(video)))


def test_official_internvideo_mm_forward():
    official = official_internvideo()
    caption_state = caption_ref.official_state()  # with its zero `beta` and rotary `inv_freq` buffers
    state = {"state_dict": {**{f"clip.{k}": v for k, v in official.state_dict().items()},
                            **{f"caption_decoder.{k}": torch.from_numpy(v) for k, v in caption_state.items()}}}
    model = multimodal()
    variables, report = clip.load_variables(state, model, "internvideo_mm")
    buffers = sorted(f"caption_decoder.{k}" for k in caption_state if k.endswith(("beta", "inv_freq")))
    assert sorted(report.dropped) == buffers and not report.at_init
    assert report.num_tensors == len(state["state_dict"]) - len(buffers)
    params = variables["params"]
    np.testing.assert_array_equal(params["text"]["text_mask_embedding"], official.text_mask_embedding[0, 0].detach())
    np.testing.assert_array_equal(params["logit_scale"], official.logit_scale.detach())

    # The caption decoder: test_caption.py's own key table, which it checks against the official forward.
    caption = caption_ref.to_ours(caption_state, common.flatten(clip.expected_variables(model)["params"]
                                                                ["caption_decoder"]))
    assert same(params["caption_decoder"], caption)

    video = frames((2, FRAMES))
    ids = np.minimum(ids_with_eot([4, CONTEXT, 7]), MM_TEXT["vocab_size"] - 1)  # the end token: the largest id
    video_features, text_features = jax.jit(lambda v, video, ids: (  # one compilation
        model.apply(v, video, method="encode_video")[0], model.apply(v, ids, method="encode_text")["features"]))(
        variables, video, ids)
    with torch.no_grad():
        want = official.visual_ln_post(official_video_forward(official.visual, to_torch_video(video)))
        want = want @ official.visual_proj
    assert_close("official InternVideo-MM video features", video_features, want)
    assert_close("official InternVideo-MM text features", text_features,
                 official_text_forward(official, torch.from_numpy(ids)))


# ----------------------------------------------------------------------------------------------------------
# Round trips, wrappers, errors
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,make", [
    ("uniformerv2", classifier), ("uniformerv2", lambda: classifier(scan=True)),
    ("internvideo_mm", lambda: multimodal(scan=True)),
    ("clip_hf", lambda: videotext(scan=True)), ("clip_hf", lambda: classifier(scan=True, temporal_downsample=False)),
])
def test_round_trip_is_exact(fmt, make):
    model = make()
    ours = random_variables(model)
    state = clip.to_state_dict(ours, fmt)
    back, report = clip.load_variables(state, model, fmt, initial=random_variables(model, seed=1))
    again = clip.to_state_dict(back, fmt)
    assert again.keys() == state.keys() and all(np.array_equal(again[k], state[k]) for k in state)
    if fmt == "clip_hf":  # UniBlocks, heads, the MLM embedding are not in CLIP (k_t = 1): the rest comes back exactly
        ours, back = (common.flatten(common.scan_to_loop(tree)) for tree in (ours, back))
        held = [k for k in ours if not k.startswith(tuple(report.at_init))]
        assert held and all(np.array_equal(back[k], ours[k]) for k in held)
    else:
        assert same(back, ours) and not report.at_init
        assert report.num_params == sum(x.size for x in jax.tree.leaves(ours))


def conversion_error(state, model, fmt="uniformerv2"):
    with pytest.raises(common.ConversionError) as info:
        clip.load_variables(state, model, fmt)
    return str(info.value)


def test_errors_name_the_key_and_both_shapes():
    state = clip.to_state_dict(random_variables(classifier(width=48)))
    message = conversion_error({f"backbone.{k}": v for k, v in state.items()}, classifier())
    assert ("transformer.dec.0.attn.in_proj_weight: checkpoint (144, 48), model expects (96, 32) "
            "(for params/backbone/dec_0/attn/q/kernel)") in message
    assert ("transformer.resblocks.1.lmhra2.pos_embed.0.running_var: checkpoint (48,), model expects (32,) "
            "(for batch_stats/backbone/transformer/blocks_1/lmhra2/bn/var)") in message

    state = clip.to_state_dict(random_variables(classifier()))
    del state["transformer.resblocks.1.lmhra2.pos_embed.0.running_var"]
    message = conversion_error(state, classifier())
    assert "1 missing keys" in message and "unexpected" not in message and "mis-shaped" not in message
    assert ("transformer.resblocks.1.lmhra2.pos_embed.0.running_var (32,) "
            "(for batch_stats/backbone/transformer/blocks_1/lmhra2/bn/var)") in message


def test_clip_hf_leaves_only_the_known_params_at_init():
    model = videotext()
    state = clip.to_state_dict(random_variables(model), "clip_hf")
    del state["vision_model.pre_layrnorm.weight"]
    message = conversion_error(state, model, "clip_hf")
    assert "1 missing keys" in message
    assert "vision_model.pre_layrnorm.weight (32,) (for params/visual/backbone/ln_pre/scale)" in message
    assert "dec" not in message and "text_mask_embedding" not in message


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------

CONFIG = f"""
import ml_collections


def get_config(arg=None):
    return ml_collections.ConfigDict(dict(
        task="videotext",
        model=dict(kwargs=dict(visual_config={VISUAL!r}, text_config={TEXT!r}, caption_config={{}}, embed_dim={EMBED})),
        data=dict(tokenizer="words", tokenizer_path="", text_length={CONTEXT})))
"""


def test_cli_converts_clip_hf_into_a_restorable_checkpoint(tmp_path, capsys, hf_clip, hf_converted):
    config = tmp_path / "tiny_videotext.py"
    config.write_text(CONFIG)
    path = tmp_path / "pytorch_model.bin"
    torch.save(hf_clip.state_dict(), path)
    out = tmp_path / "converted"
    assert cli.main(["--format=clip_hf", f"--model={config}", f"--input={path}", f"--output={out}"]) == 0
    printed = capsys.readouterr().out
    assert f"converted {len(hf_clip.state_dict())} tensors" in printed and "left at init (7 subtrees)" in printed
    want = hf_converted[0]["params"]
    target = jax.tree.map(jnp.zeros_like, want)  # restore_subtrees reads each leaf's sharding
    restored = restore_subtrees(target, {"checkpoint": str(out), "mapping": {"": "params"}})
    assert same(jax.tree.map(np.asarray, restored), want)


def test_cli_needs_a_config_for_clip_formats():
    args = cli.parse_args(["--format=uniformerv2", "--model=B/16", "--input=x", "--output=y"])
    with pytest.raises(ValueError, match="needs a config file"):
        cli.build_model(args)

"""VideoMAE converters: parity with Hugging Face's PyTorch VideoMAE, round trips, error messages, the CLI; LayerScale
(`gamma_1` / `gamma_2`, which Hugging Face's VideoMAE lacks) against a float64 numpy forward of the official modules.

Parity tolerance: max abs error <= 1e-4 in float32 on tiny random models with every weight randomised (against the
float64 forward: 1e-5).
"""
import math
import re

import jax
import numpy as np
import pytest
import torch
from transformers import VideoMAEConfig, VideoMAEForPreTraining, VideoMAEForVideoClassification

from configs import common as sizes
from invideo_jax import losses, masking
from invideo_jax.convert import cli, common, videomae
from invideo_jax.models.videomae import VideoMAE
from invideo_jax.models.vit import VisionTransformer
from tests.random_trees import draw_like
from tests.test_internvideo2 import gelu, layer_norm, multi_head

TOL = 1e-4
BATCH, FRAMES, IMAGE, PATCH, TUBELET, CLASSES, RATIO = 2, 4, 32, 8, 2, 5, 0.75
GRID = (FRAMES // TUBELET, IMAGE // PATCH, IMAGE // PATCH)
DECODER = dict(decoder_width=32, decoder_depth=2, decoder_heads=2, decoder_mlp_dim=64)


def encoder_kwargs(width=64, scan=False, layer_scale=0.0):
    return sizes.vit_encoder("B/16", width=width, depth=2, num_heads=4, mlp_dim=2 * width, patch_size=PATCH,
                             num_frames=FRAMES, image_size=IMAGE, scan=scan, return_layers=(0, 1),
                             layer_scale=layer_scale)


def classifier(mean_pool=True, scan=False, width=64, layer_scale=0.0):
    pool = dict(pool="mean", final_norm=False) if mean_pool else dict(pool="cls", final_norm=True)
    return VisionTransformer(**encoder_kwargs(width, scan, layer_scale), num_classes=CLASSES, **pool)


def pretrainer(scan=False, width=64, layer_scale=0.0):
    return VideoMAE(encoder=encoder_kwargs(width, scan, layer_scale), **DECODER)


def hf_model(cls, mean_pool):
    """A Hugging Face reference with the original's LayerNorm eps everywhere and every weight randomised."""
    config = VideoMAEConfig(
        image_size=IMAGE, patch_size=PATCH, num_frames=FRAMES, tubelet_size=TUBELET, hidden_size=64,
        num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, layer_norm_eps=1e-6, qkv_bias=True,
        use_mean_pooling=mean_pool, decoder_hidden_size=32, decoder_num_hidden_layers=2,
        decoder_num_attention_heads=2, decoder_intermediate_size=64, norm_pix_loss=True,
        attn_implementation="eager", num_labels=CLASSES)
    torch.manual_seed(0)
    model = cls(config).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = 1e-6
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * 0.1)
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.add_(1.0)
    return model


def inputs():
    video = torch.randn(BATCH, FRAMES, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    mask = masking.tube_mask(jax.random.PRNGKey(2), BATCH, GRID, RATIO)
    visible_idx, target_idx = masking.split_indices(mask, masking.tube_num_masked(GRID, RATIO))
    ours = video.permute(0, 1, 3, 4, 2).numpy()  # (B, T, C, H, W) -> (B, T, H, W, C)
    return video, torch.from_numpy(np.array(mask)), ours, visible_idx, target_idx


def assert_close(name, ours, theirs):
    err = float(np.max(np.abs(np.asarray(ours) - theirs.detach().numpy())))
    print(f"{name}: max abs error {err:.2e}")
    assert err <= TOL, (name, err)


def random_params(model, seed=0):
    return draw_like(videomae.expected_params(model), seed)


def same_tree(a, b):
    fa, fb = common.flatten(a), common.flatten(b)
    return fa.keys() == fb.keys() and all(
        np.asarray(fa[k]).dtype == np.asarray(fb[k]).dtype and np.array_equal(fa[k], fb[k]) for k in fa)


def official_from_hf(state, pretrain):
    """The official key layout built from a Hugging Face state dict by the documented renames (independent of ours)."""
    renames = [
        ("videomae.embeddings.patch_embeddings.projection", "patch_embed.proj"),
        ("videomae.encoder.layer.", "blocks."), ("decoder.decoder_layers.", "decoder.blocks."),
        ("videomae.layernorm", "norm"), ("attention.attention.query.bias", "attn.q_bias"),
        ("attention.attention.value.bias", "attn.v_bias"), ("attention.attention.", "attn."),
        ("attention.output.dense", "attn.proj"), ("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
        ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2"), ("classifier", "head"),
    ]
    out = {}
    for key, value in state.items():
        for old, new in renames:
            key = key.replace(old, new)
        if pretrain and key.startswith(("patch_embed.", "blocks.", "norm.")):
            key = "encoder." + key
        out[key] = value.numpy()
    for key in [k for k in out if k.endswith("attn.query.weight")]:
        prefix = key.removesuffix("query.weight")
        out[prefix + "qkv.weight"] = np.concatenate([out.pop(f"{prefix}{n}.weight") for n in ("query", "key", "value")])
    return out


# ----------------------------------------------------------------------------------------------------------
# Parity with Hugging Face
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scan", [False, True])
def test_pretraining_parity(scan):
    ref = hf_model(VideoMAEForPreTraining, mean_pool=False)
    video, mask, ours_video, visible_idx, target_idx = inputs()
    with torch.no_grad():
        out = ref(video, bool_masked_pos=mask)
        enc = ref.videomae(video, bool_masked_pos=mask, output_hidden_states=True)
    model = pretrainer(scan)
    params, report = videomae.load_params(ref.state_dict(), model, "videomae_hf")
    assert report.num_tensors == len(ref.state_dict()) and not report.dropped

    encoder = VisionTransformer(**model.encoder, final_norm=True)
    tokens = jax.jit(encoder.apply)({"params": params["encoder"]}, ours_video, visible_idx)
    for i in range(2):
        assert_close(f"pretrain encoder layer {i} (scan={scan})", tokens["layers"][i], enc.hidden_states[i + 1])
    assert_close(f"pretrain encoder output (scan={scan})", tokens["tokens"], enc.last_hidden_state)
    pred = jax.jit(model.apply)({"params": params}, ours_video, visible_idx, target_idx)
    assert_close(f"pretrain decoder logits (scan={scan})", pred, out.logits)
    loss = losses.reconstruction_loss(pred, losses.pixel_targets(
        ours_video, tubelet=TUBELET, patch=PATCH, normalization="imagenet"), target_idx)
    assert_close(f"pretrain loss (scan={scan})", loss, out.loss)

    official, _ = videomae.load_params(official_from_hf(ref.state_dict(), pretrain=True), model, "videomae")
    assert same_tree(official, params)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("mean_pool", [True, False])
def test_classification_parity(mean_pool, scan):
    ref = hf_model(VideoMAEForVideoClassification, mean_pool)
    video = inputs()[0]
    with torch.no_grad():
        out = ref(video, output_hidden_states=True)
    model = classifier(mean_pool, scan)
    params, _ = videomae.load_params(ref.state_dict(), model, "videomae_hf")
    got = jax.jit(model.apply)({"params": params}, video.permute(0, 1, 3, 4, 2).numpy())
    name = f"(mean_pool={mean_pool}, scan={scan})"
    for i in range(2):
        assert_close(f"classifier layer {i} {name}", got["layers"][i], out.hidden_states[i + 1])
    assert_close(f"classifier logits {name}", got["logits"], out.logits)

    official, _ = videomae.load_params(official_from_hf(ref.state_dict(), pretrain=False), model, "videomae")
    assert same_tree(official, params)


# ----------------------------------------------------------------------------------------------------------
# LayerScale (official init_values > 0): official-layout state dicts against a float64 forward of the official code
# ----------------------------------------------------------------------------------------------------------

WIDTH, HEADS, MLP, DEPTH = 64, 4, 128, 2
D_DEC, DEC_HEADS, DEC_MLP, DEC_DEPTH = DECODER["decoder_width"], 2, 64, 2
TOKENS = math.prod(GRID)
PIXELS = 3 * TUBELET * PATCH * PATCH  # decoder_num_classes


def official_block_shapes(prefix, d, mlp):
    """modeling_finetune.Block with qkv_bias=True and init_values > 0: {key: torch shape}."""
    shapes = {"norm1.weight": (d,), "norm1.bias": (d,), "attn.qkv.weight": (3 * d, d), "attn.q_bias": (d,),
              "attn.v_bias": (d,), "attn.proj.weight": (d, d), "attn.proj.bias": (d,), "norm2.weight": (d,),
              "norm2.bias": (d,), "mlp.fc1.weight": (mlp, d), "mlp.fc1.bias": (mlp,), "mlp.fc2.weight": (d, mlp),
              "mlp.fc2.bias": (d,), "gamma_1": (d,), "gamma_2": (d,)}
    return {f"{prefix}{k}": v for k, v in shapes.items()}


def official_layer_scale_state(pretrain, seed=0):
    """Random tensors under the official names and shapes: VisionTransformer (mean pooling: fc_norm, no norm) or
    PretrainVisionTransformer (encoder.*, decoder.*, encoder_to_decoder, mask_token; the sin-cos tables are not
    stored). N(0, 0.2), norm weights and LayerScale gammas around 1 and 0.5, so that every term matters."""
    enc = "encoder." if pretrain else ""
    shapes = {f"{enc}patch_embed.proj.weight": (WIDTH, 3, TUBELET, PATCH, PATCH),
              f"{enc}patch_embed.proj.bias": (WIDTH,)}
    for i in range(DEPTH):
        shapes.update(official_block_shapes(f"{enc}blocks.{i}.", WIDTH, MLP))
    if pretrain:
        shapes.update({"encoder.norm.weight": (WIDTH,), "encoder.norm.bias": (WIDTH,),
                       "encoder_to_decoder.weight": (D_DEC, WIDTH), "mask_token": (1, 1, D_DEC),
                       "decoder.norm.weight": (D_DEC,), "decoder.norm.bias": (D_DEC,),
                       "decoder.head.weight": (PIXELS, D_DEC), "decoder.head.bias": (PIXELS,)})
        for i in range(DEC_DEPTH):
            shapes.update(official_block_shapes(f"decoder.blocks.{i}.", D_DEC, DEC_MLP))
    else:
        shapes.update({"fc_norm.weight": (WIDTH,), "fc_norm.bias": (WIDTH,), "head.weight": (CLASSES, WIDTH),
                       "head.bias": (CLASSES,)})
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in shapes.items():
        value = 0.2 * rng.standard_normal(shape)
        value += 1.0 if re.search(r"norm\d?\.weight$", key) else 0.5 if re.search(r"gamma_\d$", key) else 0.0
        state[key] = value.astype(np.float32)
    return state


def sinusoid_table(n, d):
    """modeling_finetune.get_sinusoid_encoding_table: pos / 10000^(2 (j // 2) / d), sin on even j, cos on odd j."""
    angle = np.arange(n)[:, None] / np.power(10000, 2 * (np.arange(d)[None] // 2) / d)
    return np.where(np.arange(d) % 2 == 0, np.sin(angle), np.cos(angle))


def official_blocks(w, prefix, x, depth, heads):
    """Block.forward with gamma: x + gamma_1 * attn(norm1(x)), x + gamma_2 * mlp(norm2(x)); q/v bias, zero k bias."""
    for i in range(depth):
        p = lambda k: w(f"{prefix}blocks.{i}.{k}")
        y = layer_norm(x, p("norm1.weight"), p("norm1.bias"), eps=1e-6)
        bias = np.concatenate([p("attn.q_bias"), np.zeros_like(p("attn.v_bias")), p("attn.v_bias")])
        q, k, v = np.split(y @ p("attn.qkv.weight").T + bias, 3, axis=-1)
        x = x + p("gamma_1") * (multi_head(q, k, v, heads) @ p("attn.proj.weight").T + p("attn.proj.bias"))
        y = layer_norm(x, p("norm2.weight"), p("norm2.bias"), eps=1e-6)
        hidden = gelu(y @ p("mlp.fc1.weight").T + p("mlp.fc1.bias"), exact=True)
        x = x + p("gamma_2") * (hidden @ p("mlp.fc2.weight").T + p("mlp.fc2.bias"))
    return x


def official_layer_scale_forward(state, video, visible=None, target=None):
    """float64: the classifier's logits, or (visible, target given) the pre-training model's predictions."""
    w = lambda k: np.asarray(state[k], np.float64)
    enc = "encoder." if visible is not None else ""
    b, t, h, wd, c = video.shape
    x = np.asarray(video, np.float64).reshape(b, t // TUBELET, TUBELET, h // PATCH, PATCH, wd // PATCH, PATCH, c)
    x = np.einsum("btihjwkc,dcijk->bthwd", x, w(f"{enc}patch_embed.proj.weight")) + w(f"{enc}patch_embed.proj.bias")
    x = x.reshape(b, TOKENS, WIDTH) + sinusoid_table(TOKENS, WIDTH)
    if visible is None:
        x = official_blocks(w, "", x, DEPTH, HEADS)
        pooled = layer_norm(x.mean(axis=1), w("fc_norm.weight"), w("fc_norm.bias"), eps=1e-6)
        return pooled @ w("head.weight").T + w("head.bias")
    x = np.take_along_axis(x, np.asarray(visible)[..., None], axis=1)
    x = official_blocks(w, "encoder.", x, DEPTH, HEADS)
    x = layer_norm(x, w("encoder.norm.weight"), w("encoder.norm.bias"), eps=1e-6) @ w("encoder_to_decoder.weight").T
    table = sinusoid_table(TOKENS, D_DEC)
    x = np.concatenate([x + table[np.asarray(visible)], w("mask_token") + table[np.asarray(target)]], axis=1)
    x = official_blocks(w, "decoder.", x, DEC_DEPTH, DEC_HEADS)[:, -target.shape[1]:]
    x = layer_norm(x, w("decoder.norm.weight"), w("decoder.norm.bias"), eps=1e-6)
    return x @ w("decoder.head.weight").T + w("decoder.head.bias")


def max_abs_error(name, ours, want):
    err = float(np.max(np.abs(np.asarray(ours, np.float64) - want)))
    print(f"{name}: max abs error {err:.2e}")
    return err


@pytest.mark.parametrize("scan", [False, True])
def test_layer_scale_classifier_matches_the_official_forward(scan):
    state = official_layer_scale_state(pretrain=False)
    model = classifier(scan=scan, layer_scale=0.1)
    params, report = videomae.load_params({"module": state}, model)
    assert report.num_tensors == len(state) and not report.dropped
    video = inputs()[2]
    with jax.default_matmul_precision("highest"):
        logits = jax.jit(model.apply)({"params": params}, video)["logits"]
    assert max_abs_error(f"LayerScale classifier logits (scan={scan})", logits,
                         official_layer_scale_forward(state, video)) <= 1e-5
    back = videomae.to_state_dict(params)
    assert back.keys() == state.keys() and all(np.array_equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize("scan", [False, True])
def test_layer_scale_pretraining_model_matches_the_official_forward(scan):
    state = official_layer_scale_state(pretrain=True, seed=1)
    model = pretrainer(scan=scan, layer_scale=0.1)
    params, report = videomae.load_params({"model": state}, model)
    assert report.num_tensors == len(state) and not report.dropped
    _, _, video, visible, target = inputs()
    with jax.default_matmul_precision("highest"):
        pred = jax.jit(model.apply)({"params": params}, video, visible, target)
    assert max_abs_error(f"LayerScale pre-training predictions (scan={scan})", pred,
                         official_layer_scale_forward(state, video, visible, target)) <= 1e-5
    back = videomae.to_state_dict(params)
    assert back.keys() == state.keys() and all(np.array_equal(back[k], state[k]) for k in state)
    # without LayerScale in the model, the gammas are named as unexpected
    message = conversion_error(state, pretrainer(scan=scan))
    assert f"{2 * (DEPTH + DEC_DEPTH)} unexpected keys" in message and "decoder.blocks.1.gamma_2 (32,)" in message


# ----------------------------------------------------------------------------------------------------------
# Round trips and wrappers
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(videomae.FORMATS))
@pytest.mark.parametrize("make", [pretrainer, classifier])
@pytest.mark.parametrize("scan", [False, True])
def test_round_trip_is_exact(fmt, make, scan):
    model = make(scan=scan)
    params = random_params(model)
    back, report = videomae.load_params(videomae.to_state_dict(params, fmt), model, fmt)
    assert same_tree(back, params)
    assert report.num_params == sum(x.size for x in jax.tree.leaves(params))


def test_scan_and_loop_layouts_are_inverse():
    loop = random_params(pretrainer())
    scanned = common.loop_to_scan(loop)
    assert common.flatten(scanned)["decoder/transformer/blocks/attn/qkv/kernel"].shape == (2, 32, 3, 2, 16)
    assert same_tree(common.scan_to_loop(scanned), loop)
    shapes = {k: v.shape for k, v in common.flatten(videomae.expected_params(pretrainer(scan=True))).items()}
    assert {k: v.shape for k, v in common.flatten(scanned).items()} == shapes


@pytest.mark.parametrize("wrap", [
    lambda sd: {"model": sd, "epoch": 3},
    lambda sd: {"module": sd},
    lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}},
    lambda sd: {"backbone." + k: v for k, v in sd.items()},
])
def test_wrapped_official_checkpoints_load(wrap):
    model = classifier()
    params = random_params(model)
    state = {k: torch.from_numpy(v) for k, v in videomae.to_state_dict(params).items()}
    assert "head.weight" in state and "fc_norm.weight" in state and "blocks.1.attn.qkv.weight" in state
    assert same_tree(videomae.load_params(wrap(state), model)[0], params)


def test_legacy_hf_bias_names_load():
    model = pretrainer()
    params = random_params(model)
    state = {k.replace("query.bias", "q_bias").replace("value.bias", "v_bias"): v
             for k, v in videomae.to_state_dict(params, "videomae_hf").items()}
    assert "videomae.encoder.layer.0.attention.attention.q_bias" in state
    assert same_tree(videomae.load_params(state, model, "videomae_hf")[0], params)


# ----------------------------------------------------------------------------------------------------------
# Errors name the offending keys and shapes
# ----------------------------------------------------------------------------------------------------------


def conversion_error(state, model, fmt="videomae"):
    with pytest.raises(common.ConversionError) as info:
        videomae.load_params(state, model, fmt)
    return str(info.value)


def test_truncated_checkpoint_names_missing_key():
    model = pretrainer()
    state = videomae.to_state_dict(random_params(model))
    del state["decoder.blocks.1.mlp.fc2.bias"]
    message = conversion_error(state, model)
    assert "1 missing keys" in message and "decoder.blocks.1.mlp.fc2.bias (32,)" in message
    assert "unexpected" not in message and "mis-shaped" not in message


def test_wrong_width_names_both_shapes():
    state = videomae.to_state_dict(random_params(classifier(width=32)))
    message = conversion_error(state, classifier(width=64))
    assert "blocks.0.attn.qkv.weight: checkpoint (96, 32), model expects (192, 64)" in message
    assert "patch_embed.proj.weight: checkpoint (32, 3, 2, 8, 8), model expects (64, 3, 2, 8, 8)" in message


def test_unexpected_key_is_named():
    model = classifier()
    state = videomae.to_state_dict(random_params(model), "videomae_hf")
    state["videomae.encoder.layer.0.attention.attention.key.bias"] = np.zeros(64, np.float32)
    message = conversion_error(state, model, "videomae_hf")
    assert "1 unexpected keys" in message and "videomae.encoder.layer.0.attention.attention.key.bias (64,)" in message
    assert "missing" not in message


def test_drop_ignores_keys_and_reports_them():
    extras = {k: v for k, v in videomae.to_state_dict(random_params(pretrainer())).items()
              if not k.startswith("encoder.")}
    state = videomae.to_state_dict(random_params(classifier())) | extras
    _, report = videomae.load_params(state, classifier(), drop=[r"^decoder\.", "^encoder_to_decoder", "^mask_token$"])
    assert sorted(report.dropped) == sorted(extras) and "mask_token" in report.summary()
    message = conversion_error(state, classifier())
    assert f"{len(extras)} unexpected keys" in message and "mask_token (1, 1, 32)" in message


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------

CONFIG = """
import ml_collections


def get_config(arg=None):
    encoder = dict(width=64, depth=2, num_heads=4, mlp_dim=128, patch_size=8, tubelet_size=2, num_frames=4,
                   image_size=32, scan=arg == "scan")
    return ml_collections.ConfigDict(dict(
        task="videomae_pretrain",
        model=dict(kwargs=dict(encoder=encoder, decoder_width=32, decoder_depth=2, decoder_heads=2,
                               decoder_mlp_dim=64)),
        mask=dict(kind="tube", ratio=0.75, decoder_kind="none", decoder_ratio=0.5)))
"""


def restore(directory):
    import orbax.checkpoint as ocp
    manager = ocp.CheckpointManager(str(directory), item_names=("state",))
    restored = manager.restore(0, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return restored["state"]["params"]


@pytest.mark.parametrize("fmt,suffix,arg", [("videomae", ".pth", ""), ("videomae_hf", ".safetensors", ":scan")])
def test_cli_writes_orbax_checkpoint(tmp_path, capsys, fmt, suffix, arg):
    import safetensors.torch
    config = tmp_path / "tiny.py"
    config.write_text(CONFIG)
    model = pretrainer(scan=bool(arg))
    params = random_params(model)
    state = {k: torch.from_numpy(v) for k, v in videomae.to_state_dict(params, fmt).items()}
    path = str(tmp_path / f"ckpt{suffix}")
    if suffix == ".pth":
        torch.save({"model": state, "epoch": 799}, path)
    else:
        safetensors.torch.save_file(state, path)
    out = tmp_path / "converted"
    assert cli.main([f"--format={fmt}", f"--model={config}{arg}", f"--input={path}", f"--output={out}"]) == 0
    printed = capsys.readouterr().out
    assert f"converted {len(state)} tensors" in printed and str(out / "0") in printed
    restored = restore(out)
    key = "encoder/transformer/blocks/attn/q_bias" if arg else "encoder/transformer/blocks_1/attn/q_bias"
    np.testing.assert_array_equal(common.flatten(restored)[key], common.flatten(params)[key])
    assert same_tree(restored, params)


def test_cli_presets_build_the_official_sizes():
    args = cli.parse_args(["--format=videomae", "--model=L/16", "--kind=pretrain", "--input=x", "--output=y", "--scan"])
    model = cli.build_model(args)
    assert isinstance(model, VideoMAE) and model.decoder_depth == 12 and model.encoder["width"] == 1024
    assert model.encoder["scan"]
    args = cli.parse_args(["--format=videomae", "--model=B/16", "--num_classes=400", "--input=x", "--output=y"])
    model = cli.build_model(args)
    assert isinstance(model, VisionTransformer) and model.num_classes == 400 and model.pool == "mean"
    assert not model.final_norm


def test_cli_reports_a_mismatch_without_traceback(tmp_path, capsys):
    path = str(tmp_path / "small.pth")
    torch.save({k: torch.from_numpy(v) for k, v in videomae.to_state_dict(random_params(classifier())).items()}, path)
    argv = ["--format=videomae", "--model=S/16", "--num_frames=4", "--image_size=32", "--num_classes=5",
            f"--input={path}", f"--output={tmp_path / 'out'}"]
    assert cli.main(argv) == 1
    assert "patch_embed.proj.weight: checkpoint (64, 3, 2, 8, 8), model expects (384, 3, 2, 16, 16)" in (
        capsys.readouterr().err)

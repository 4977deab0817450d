"""InternVideo2 stage 1 (unmasked-token distillation): attention-guided masking keeps exactly k tokens per frame (the
top-attention ones, or a draw in proportion to the attention) plus CLS; the 2 - 2 cos loss; frozen teachers restored
from two checkpoints by named init_from sources stay bitwise unchanged through trainer.train while the student
learns; the 1B recipe builds abstractly with consistent parameter counts."""
import functools
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from configs import common, internvideo2_distill
from invideo_jax.data import synthetic
from invideo_jax.models import distill
from invideo_jax.models.distill import Distiller
from invideo_jax.train import optim, trainer
from invideo_jax.train.tasks import get_task
from invideo_jax.train.tasks.distill import cosine_distance, distill_objective

# 4-frame clips of 32x32: the video teacher (tubelet 2) and the student / image teacher (every 2nd frame, tubelet 1)
# all have a 2 x 4 x 4 token grid; mask 0.75 keeps 4 of 16 tokens per frame.
# Scanned layers: a small program to compile.
STUDENT = dict(width=32, depth=3, num_heads=2, mlp_dim=64, patch_size=8, tubelet_size=1, num_frames=2, image_size=32,
               attn_pool_heads=2, clip_embed_dim=16, scan=True)
TEACHER_IMAGE = dict(width=16, depth=2, num_heads=2, mlp_dim=32, patch_size=8, tubelet_size=1, num_frames=1,
                     image_size=32, attn_pool_heads=2, clip_embed_dim=12, layer_scale=0.1, scan=True)
TEACHER_VIDEO = dict(width=24, depth=2, num_heads=2, mlp_dim=48, patch_size=8, tubelet_size=2, num_frames=4,
                     image_size=32, final_norm=True, scan=True)
MODEL = dict(student=STUDENT, teacher_image=TEACHER_IMAGE, teacher_video=TEACHER_VIDEO, image_layers=2,
             video_layers=2, mask_ratio=0.75)
KEEP = 4  # 16 - int(16 * 0.75)


def clips(seed=0, batch=2):
    return np.random.default_rng(seed).standard_normal((batch, 4, 32, 32, 3)).astype(np.float32)


# One compiled forward (train=False) for the tests that share it; it also returns the image teacher's outputs.
APPLY = jax.jit(functools.partial(Distiller(**MODEL).apply, capture_intermediates=lambda module, method: (
    module.name == "teacher_image" and method == "__call__")))


def random_params(model=Distiller(**MODEL)):
    """Random values (norm scales around 1) in the model's shapes: nothing to compile."""
    shapes = nn.unbox(jax.eval_shape(model.init, {"params": jax.random.PRNGKey(0)}, clips()))["params"]
    rng = np.random.default_rng(7)
    flat = traverse_util.flatten_dict(shapes, sep="/")
    values = {k: (1.0 + 0.1 * rng.standard_normal(v.shape) if k.endswith("scale") else
                  0.3 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in flat.items()}
    return jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(values, sep="/"))


@pytest.fixture(scope="module")
def params():
    return random_params()


# ----------------------------------------------------------------------------------------------------------
# masking
# ----------------------------------------------------------------------------------------------------------


def test_attention_masking_keeps_k_tokens_per_frame_top_k_or_in_proportion():
    attention = np.random.default_rng(0).dirichlet(np.ones(16), size=(2, 3)).astype(np.float32)  # (B, T, h*w)
    idx = np.asarray(distill.attention_visible_idx(jnp.asarray(attention), KEEP))
    assert idx.shape == (2, 3 * KEEP)
    for b in range(2):
        for t in range(3):
            frame = idx[b, t * KEEP:(t + 1) * KEEP]
            np.testing.assert_array_equal(frame, t * 16 + np.sort(np.argsort(-attention[b, t])[:KEEP]))

    sampled = np.asarray(distill.attention_visible_idx(jnp.asarray(attention), KEEP, jax.random.PRNGKey(0)))
    per_frame = sampled.reshape(2, 3, KEEP) - 16 * np.arange(3)[None, :, None]
    assert per_frame.min() >= 0 and per_frame.max() < 16
    assert all(len(set(row)) == KEEP for row in per_frame.reshape(-1, KEEP))  # without replacement

    # One token per frame: drawn with probability proportional to its attention (the official multinomial).
    keys = jax.random.split(jax.random.PRNGKey(1), 4000)
    draws = np.asarray(jax.vmap(lambda k: distill.attention_visible_idx(jnp.asarray(attention[:1, :1]), 1, k))(keys))
    frequency = np.bincount(draws.ravel(), minlength=16) / len(keys)
    np.testing.assert_allclose(frequency, attention[0, 0], atol=0.03)


def test_the_mask_is_the_image_teachers_pool_attention_top_k_and_the_student_sees_k_tokens_plus_cls(params):
    """train=False: per frame, the KEEP patches with the highest head-averaged attention of the image teacher's
    attention pool (checked: those weights reproduce the teacher's pooled feature); CLS always kept."""
    video = clips(1)
    out, captured = APPLY({"params": params}, video)
    alone = captured["intermediates"]["teacher_image"]["__call__"][0]  # on each of the 2 x 2 student frames
    pool = params["teacher_image"]["clip_projector"]
    weights = distill.pool_attention(pool, alone["tokens"], num_heads=2)  # (B*T, heads, 1 + 16)
    x = np.asarray(alone["tokens"], np.float64)
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    v = ((x - mu) / np.sqrt(var + 1e-5) * pool["norm1_v"]["scale"] + pool["norm1_v"]["bias"])
    v = np.einsum("nd,dhk->nhk", v.reshape(-1, 16), pool["cross_attn"]["v"]["kernel"]).reshape(4, 17, 2, 8)
    v = v + pool["cross_attn"]["v"]["bias"]
    pooled = np.einsum("bhn,bnhk,hko->bo", weights, v, pool["cross_attn"]["proj"]["kernel"])
    np.testing.assert_allclose(pooled + pool["cross_attn"]["proj"]["bias"], alone["pooled"], atol=1e-5)

    attention = np.asarray(weights).mean(axis=1)[:, 1:].reshape(2, 2, 16)
    expect = np.sort(np.argsort(-attention, axis=-1)[..., :KEEP], axis=-1) + 16 * np.arange(2)[None, :, None]
    np.testing.assert_array_equal(out["visible_idx"], expect.reshape(2, 2 * KEEP))
    assert out["pred"]["image_layers"].shape == out["target"]["image_layers"].shape == (2, 2, 1 + 2 * KEEP, 16)
    assert out["pred"]["video_layers"].shape == out["target"]["video_layers"].shape == (2, 2, 2 * KEEP, 24)
    assert out["pred"]["image_pooled"].shape == out["target"]["image_pooled"].shape == (2, 12)
    for name, target in out["target"].items():  # unit vectors
        np.testing.assert_allclose(np.linalg.norm(target, axis=-1), 1.0, atol=1e-5, err_msg=name)
    # The image targets: CLS = the frames' CLS tokens averaged, then each frame's kept patch tokens.
    last = np.asarray(alone["tokens"]).reshape(2, 2, 17, 16)
    cls = last[:, :, 0].mean(1)
    patches = np.take_along_axis(last[:, :, 1:].reshape(2, 32, 16), np.asarray(out["visible_idx"])[..., None], 1)
    expect_last = np.concatenate([cls[:, None], patches], 1)
    expect_last /= np.linalg.norm(expect_last, axis=-1, keepdims=True)
    np.testing.assert_allclose(out["target"]["image_layers"][-1], expect_last, atol=1e-5)


def layer_norm(x, p, eps):
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    return x * p["scale"] + p["bias"]


def test_the_mask_uses_the_image_teachers_own_pool_settings():
    """An image teacher with 4 pool heads and pool LayerNorm eps 50 (not InternVideo2's defaults, nowhere restated
    by the Distiller): the mask is the top-k of that pool's attention, computed here in numpy from its tokens."""
    model = Distiller(**dict(MODEL, teacher_image=dict(TEACHER_IMAGE, attn_pool_heads=4, pool_norm_eps=50.0),
                             parts="teachers"))
    params = random_params(model)
    out, captured = model.apply({"params": params}, clips(1), capture_intermediates=lambda module, method: (
        module.name == "teacher_image" and method == "__call__"))
    tokens = np.asarray(captured["intermediates"]["teacher_image"]["__call__"][0]["tokens"], np.float64)
    pool = jax.tree.map(lambda a: np.asarray(a, np.float64), params["teacher_image"]["clip_projector"])

    def project(x, p):
        return np.einsum("bnd,dhk->bnhk", x, p["kernel"]) + p["bias"]

    q = project(layer_norm(tokens.mean(axis=1, keepdims=True), pool["norm1_q"], 50.0), pool["cross_attn"]["q"])
    k = project(layer_norm(tokens, pool["norm1_k"], 50.0), pool["cross_attn"]["k"])  # (B*T, 17, 4 heads, 4)
    logits = np.einsum("bqhd,bkhd->bhk", q, k) / 2.0
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    attention = (weights / weights.sum(-1, keepdims=True)).mean(axis=1)[:, 1:].reshape(2, 2, 16)
    expect = np.sort(np.argsort(-attention, axis=-1)[..., :KEEP], axis=-1) + 16 * np.arange(2)[None, :, None]
    np.testing.assert_array_equal(out["visible_idx"], expect.reshape(2, 2 * KEEP))


# ----------------------------------------------------------------------------------------------------------
# loss
# ----------------------------------------------------------------------------------------------------------


def test_loss_is_zero_for_equal_directions_two_for_orthogonal_and_the_formula_otherwise(params):
    target = APPLY({"params": params}, clips(2))[0]["target"]
    objective = jax.jit(distill_objective)
    rng = np.random.default_rng(0)
    weights = dict(image_layers=1.0, image_pooled=0.5, video_layers=2.0)
    # Student features equal to the targets up to a positive scale (the heads' L2 norm removes it): loss 0.
    same = {k: np.asarray(t) * rng.uniform(0.5, 2.0, t.shape[:-1] + (1,)) for k, t in target.items()}
    loss, metrics = objective(same, target, weights)
    assert abs(float(loss)) < 1e-5
    assert all(abs(float(metrics[f"{k}_cos"]) - 1) < 1e-6 for k in target)
    # Orthogonal to every target vector: 2 per target, total = 2 * sum of the weights.
    orth = {}
    for k, t in target.items():
        r = rng.standard_normal(t.shape)
        orth[k] = r - np.sum(r * t, -1, keepdims=True) * np.asarray(t)
    loss, metrics = objective(orth, target, weights)
    assert all(abs(float(metrics[f"{k}_loss"]) - 2) < 1e-5 for k in target)
    np.testing.assert_allclose(float(loss), 2 * sum(weights.values()), rtol=1e-5)
    # Any other: mean over tokens and layers of 2 - 2 s.t / (|s| |t|), weighted sum over targets.
    rand = {k: rng.standard_normal(t.shape) for k, t in target.items()}
    loss, metrics = objective(rand, target, weights)
    expect = 0.0
    for k, t in target.items():
        s, t = rand[k], np.asarray(t, np.float64)
        per = 2 - 2 * np.sum(s * t, -1) / (np.linalg.norm(s, axis=-1) * np.linalg.norm(t, axis=-1))
        np.testing.assert_allclose(float(metrics[f"{k}_loss"]), per.mean(), rtol=1e-5)
        expect += weights[k] * per.mean()
    np.testing.assert_allclose(float(loss), expect, rtol=1e-5)
    distance, cos = cosine_distance(jnp.array([[3.0, 0.0]]), jnp.array([[0.0, -1.0]]))
    assert float(distance[0]) == 2.0 and float(cos[0]) == 0.0


# ----------------------------------------------------------------------------------------------------------
# training: frozen teachers from two checkpoints
# ----------------------------------------------------------------------------------------------------------


def tiny_config(data_dir, image_ckpt="", video_ckpt=""):
    c = common.train_config("distill", MODEL, model_name="distiller")
    c.loss = ml_collections.ConfigDict(dict(image_layers=1.0, image_pooled=1.0, video_layers=1.0))
    c.data.update(dict(train_annotations=f"{data_dir}/train.csv", root=data_dir, num_frames=4, sampling_rate=2,
                       crop_size=32, short_side=32, train_crop="resize_crop", flip=False, workers=0))
    c.batch_size = 2
    c.total_steps, c.log_every, c.checkpoint_every = 2, 1, 1
    c.mesh.data = 1
    c.optim.update(dict(base_lr=1e-2, lr_batch_denom=0, warmup_steps=0, min_lr=1e-2,
                        frozen=internvideo2_distill.TEACHER_PARAMS))
    c.init_from = internvideo2_distill.init_from(image_ckpt, video_ckpt)
    return c


@pytest.mark.slow  # ~50 s on 2 cores; the demo test runs this task in CI; the frozen-teacher split is also checked by test_sharding
def test_two_train_steps_restore_both_teachers_give_them_zero_gradient_and_leave_them_bitwise_unchanged(
        params, tmp_path):
    """Named init_from sources: the image teacher from a bare {'params': ...} pytree, the video teacher from the
    `encoder` of a VideoMAE-style {'params': {'encoder': ...}} one; after each of two steps through trainer.train
    both are exactly as saved, while the student and each head change.

    Without the recipe's `optim.frozen` and without weight decay, so that this also shows the teachers' gradients
    are exactly zero: AdamW moves a parameter by about the learning rate (1e-2) for any non-zero gradient, however
    small. (The recipe's frozen regexes select exactly the teachers: test_the_1b_recipe_builds_abstractly...)"""
    data_dir = str(tmp_path / "data")
    synthetic.write_dataset(data_dir, num_train=4, num_val=2, num_frames=8, size=32, seed=0)
    saved_image = {"params": params["teacher_image"]}
    saved_video = {"params": {"encoder": params["teacher_video"]}}
    ocp.PyTreeCheckpointer().save(tmp_path / "image_teacher", saved_image)
    ocp.PyTreeCheckpointer().save(tmp_path / "video_teacher", saved_video)
    config = tiny_config(data_dir, str(tmp_path / "image_teacher"), str(tmp_path / "video_teacher"))
    config.optim.update(dict(frozen=(), weight_decay=0.0))
    workdir = str(tmp_path / "run")
    result = trainer.train(config, workdir)
    assert np.isfinite(result["train"]["loss"])

    def saved_params(step):
        return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))["params"]

    step1, step2 = saved_params(1), saved_params(2)
    for state in (step1, step2):
        jax.tree.map(np.testing.assert_array_equal, state["teacher_image"], saved_image["params"])
        jax.tree.map(np.testing.assert_array_equal, state["teacher_video"], saved_video["params"]["encoder"])
    for name in step2:
        if not name.startswith("teacher_"):
            assert not jax.tree.all(jax.tree.map(np.array_equal, step1[name], step2[name])), name


# ----------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------


def test_the_1b_recipe_builds_abstractly_with_consistent_parameter_counts():
    config = internvideo2_distill.get_config("1B")
    task = get_task(config)
    boxed = jax.eval_shape(task.init_variables, jax.random.PRNGKey(0), trainer.example_batch(config, 1))
    params = nn.unbox(boxed["params"])
    count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
    parts = {k: count(v) for k, v in params.items()}
    d, d_img, d_vid, pooled, tokens = 1408, 3200, 1408, 768, 8 * 256
    heads = (6 * (d * d_img + 3 * d_img)  # clip_decoder: Linear + LayerNorm
             + pooled * pooled + 3 * pooled  # final_clip_decoder
             + 4 * (d * d + d + d * d_vid + 3 * d_vid)  # mae_decoder: MLP + LayerNorm
             + (1 + tokens) * d + tokens * d)  # clip_pos_embed, mae_pos_embed
    expect = {"student": 1_020_708_608,  # configs/internvideo2.py: InternVideo2-1B at 8 x 224
              "teacher_image": 5_941_735_168 - 7 * 256 * 3200,  # InternVideo2-6B trunk at 1 frame (InternViT-6B)
              "teacher_video": 1_011_610_752}  # ViT-g/14 (tests/test_sizes.py; final norm in place of fc_norm)
    assert {k: parts[k] for k in expect} == expect
    assert sum(v for k, v in parts.items() if k not in expect) == heads
    total = count(params)
    print(f"1B distillation: {total:,} params, {total - parts['teacher_image'] - parts['teacher_video']:,} "
          f"trainable; heads {heads:,}")
    assert total == 8_017_654_272 == sum(expect.values()) + heads
    rows = optim.describe(params, config.optim)
    assert {r.path.split("/")[0] for r in rows if r.frozen} == {"teacher_image", "teacher_video"}
    assert all(r.frozen for r in rows if r.path.startswith("teacher_"))
    # Frozen teachers carry no optimiser state: AdamW's two moments cover the trainable parameters only.
    tx, _ = optim.make_optimizer(config.optim, params, total_steps=config.total_steps, global_batch=4096)
    moments = [x for x in jax.tree.leaves(jax.eval_shape(tx.init, params)) if x.ndim]
    assert sum(math.prod(x.shape) for x in moments) == 2 * (total - parts["teacher_image"] - parts["teacher_video"])
    assert task.model.num_visible == 52  # 256 - int(256 * 0.8)
    assert config.data.num_frames == 16 and config.model.kwargs.student.num_frames == 8


def test_vit_image_teacher_and_video_mean_masking_build():
    vit_teacher = dict(width=16, depth=2, num_heads=2, mlp_dim=32, patch_size=8, tubelet_size=1, num_frames=1,
                       image_size=32, pos_embed="learned_sincos_3d", cls_token=True, pool="cls")
    model = Distiller(**dict(MODEL, teacher_image=vit_teacher, teacher_image_kind="vit", mask_source="video_mean"))
    out = jax.eval_shape(lambda: model.init_with_output({"params": jax.random.PRNGKey(0)}, clips())[0])
    assert out["pred"]["image_pooled"].shape == out["target"]["image_pooled"].shape == (2, 16)
    assert out["visible_idx"].shape == (2, 2 * KEEP)


@pytest.mark.parametrize("change, match", [
    (dict(teacher_image_kind="vit"), "mask_source"),  # the image pool needs an InternVideo2-kind teacher
    (dict(student=dict(STUDENT, num_frames=4)), "student.num_frames"),
    (dict(teacher_video=dict(TEACHER_VIDEO, patch_size=16)), "teacher_video"),
    (dict(video_layers=4), "video_layers"),
    (dict(mask_sampling="gumbel"), "mask_sampling"),
    # a vit teacher without tubelet_size has VisionTransformer's (2), not the per-frame 1
    (dict(teacher_image_kind="vit", mask_source="video_mean", teacher_image=dict(
        width=16, depth=2, num_heads=2, mlp_dim=32, patch_size=8, num_frames=1, image_size=32, pool="cls")),
     "tubelet_size"),
    (dict(student=dict(STUDENT, pool_heads=2)), "model.kwargs.student"),  # not an InternVideo2 field
])
def test_bad_fields_are_named(change, match):
    model = Distiller(**dict(MODEL, **change))
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(model.init, {"params": jax.random.PRNGKey(0)}, clips())


def test_task_rejects_a_missing_loss_weight(tmp_path):
    config = tiny_config(str(tmp_path))
    del config.loss["image_pooled"]
    with pytest.raises(ValueError, match="config.loss.image_pooled"):
        get_task(config)


def test_predict_gives_each_targets_loss_per_clip(params, tmp_path):
    task = get_task(tiny_config(str(tmp_path)))
    out = jax.eval_shape(task.predict, params, {}, {"video": clips(batch=3)})
    assert {k: v.shape for k, v in out.items()} == {f"{k}_loss": (3,) for k in
                                                    ("image_layers", "image_pooled", "video_layers")}

"""UniFormerV2 against independent constructions: shapes, zero-initialised UniBlocks, the stem against torch convs,
BatchNorm statistics, the fusion and head, analytic parameter counts, scan = loop, and a training step.

One tiny model (local + global blocks, temporal downsampling) is initialised once and shared; applies are jitted and
cached per (model, options), as compilation dominates the run time on CPU.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import common, uniformerv2_finetune
from invideo_jax import sharding
from invideo_jax.models.uniformerv2 import UniFormerV2
from invideo_jax.train import optim, trainer
from invideo_jax.train.state import TrainState
from invideo_jax.train.tasks import get_task
from tests.compiling import FAST_COMPILE
from tests.random_trees import draw_like

TINY = dict(width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8, image_size=16, num_frames=4, num_classes=8)
LOCAL = dict(TINY, temporal_downsample=True, local_blocks=True, global_layers=(0, 1))
MODEL = UniFormerV2(**LOCAL)
PLAIN = UniFormerV2(**dict(LOCAL, local_blocks=False))


def clip(batch=2, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 4, 16, 16, 3)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _jitted(model, options):
    return jax.jit(lambda variables, video, rngs: model.apply(variables, video, rngs=rngs, **dict(options)))


def apply(model, variables, video, **options):
    """model.apply, jitted once per (model, options)."""
    return _jitted(model, tuple(sorted(options.items())))(variables, video, {"dropout": jax.random.PRNGKey(0)})


def stem_and_ln_pre(module, _):
    return module.name in ("conv1", "ln_pre")


def captured(state, name):
    return np.asarray(state["intermediates"]["backbone"][name]["__call__"][0])


@pytest.fixture(scope="module")
def variables():
    # An RBG key: the initialisers compile in half the time that threefry's take (the tests need the initial zeros,
    # not particular random values)
    return nn.unbox(jax.jit(MODEL.init)(jax.random.key(0, impl="rbg"), clip()))


def randomize(tree, seed=1):
    return draw_like(tree, seed, std=0.3)


def without_local(tree):
    return {k: without_local(v) if isinstance(v, dict) else v for k, v in tree.items() if not k.startswith("lmhra")}


def test_output_shapes(variables):
    out = apply(MODEL, variables, clip())
    assert {k: v.shape for k, v in out.items()} == {
        "tokens": (2, 2, 5, 32), "frame_cls": (2, 2, 32), "features": (2, 32), "logits": (2, 8)}
    np.testing.assert_array_equal(out["frame_cls"], out["tokens"][:, :, 0])
    plain, video = UniFormerV2(**TINY), clip()  # no temporal downsampling, no global blocks
    out = jax.eval_shape(plain.apply, jax.eval_shape(plain.init, jax.random.PRNGKey(0), video), video)
    assert {k: v.shape for k, v in out.items()} == {
        "tokens": (2, 4, 5, 32), "frame_cls": (2, 4, 32), "features": (2, 32), "logits": (2, 8)}


def test_invalid_inputs_and_fields_are_named():
    with pytest.raises(ValueError, match=r"T, H, W = \(4, 16, 16\)"):
        jax.eval_shape(MODEL.init, jax.random.PRNGKey(0), clip()[:, :2])
    for fields, message in [(dict(global_layers=(1, 2)), r"global_layers .* \[0, 2\)"),
                            (dict(global_layers=(1, 0)), "increasing"), (dict(frozen=True), "frozen"),
                            (dict(num_frames=3, temporal_downsample=True), "even")]:
        bad = UniFormerV2(**dict(TINY, **fields))
        with pytest.raises(ValueError, match=message):
            jax.eval_shape(bad.init, jax.random.PRNGKey(0), np.zeros((1, bad.num_frames, 16, 16, 3)))


def test_zero_initialised_local_blocks_are_the_identity(variables):
    a = apply(MODEL, variables, clip())
    b = apply(PLAIN, {"params": without_local(variables["params"])}, clip())
    for key in ("tokens", "frame_cls", "features"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5)
    # Not vacuous: with non-zero `up` projections the local blocks change the tokens.
    params = jax.tree_util.tree_map_with_path(lambda p, x: randomize(x) if "'up'" in str(p) else x,
                                              variables["params"])
    c = apply(MODEL, dict(variables, params=params), clip())
    assert np.abs(c["tokens"] - b["tokens"]).max() > 1e-2


def test_stem_is_a_strided_3d_conv_and_centre_inflation_a_2d_conv(variables):
    kernel = np.asarray(variables["params"]["backbone"]["conv1"]["kernel"])  # (3, 8, 8, 3, 32) DHWIO
    video = clip(seed=3)
    _, state = apply(MODEL, variables, video, capture_intermediates=stem_and_ln_pre, mutable=("intermediates",))
    weight = torch.tensor(kernel).permute(4, 3, 0, 1, 2)  # (C, 3, k_t, p, p)
    expected = torch.nn.functional.conv3d(torch.tensor(video).permute(0, 4, 1, 2, 3), weight, stride=(2, 8, 8),
                                          padding=(1, 0, 0))
    np.testing.assert_allclose(captured(state, "conv1"), expected.permute(0, 2, 3, 4, 1).numpy(), atol=1e-4)

    centre = np.zeros_like(kernel)
    centre[1] = kernel[1]
    params = dict(variables["params"], backbone=dict(variables["params"]["backbone"], conv1={"kernel": centre}))
    frame = video[:, :1]
    _, state = apply(MODEL, dict(variables, params=params), np.repeat(frame, 4, axis=1),
                     capture_intermediates=stem_and_ln_pre, mutable=("intermediates",))
    frame_conv = torch.nn.functional.conv2d(torch.tensor(frame[:, 0]).permute(0, 3, 1, 2), weight[:, :, 1], stride=8)
    for t in range(2):
        np.testing.assert_allclose(captured(state, "conv1")[:, t], frame_conv.permute(0, 2, 3, 1).numpy(), atol=1e-4)


def test_batchnorm_running_stats_update_in_training_and_are_used_in_evaluation(variables):
    randomized = dict(variables, params=randomize(variables["params"]))  # non-zero `up`: the local blocks matter
    video, other = clip(seed=4), clip(seed=5)
    out, state = apply(MODEL, randomized, video, train=True, capture_intermediates=stem_and_ln_pre,
                       mutable=("batch_stats", "intermediates"))
    stats = state["batch_stats"]["backbone"]["transformer"]["blocks_0"]["lmhra1"]["bn"]
    patches = captured(state, "ln_pre")[:, 1:].reshape(-1, 32)  # the first local block's input: all patch tokens
    np.testing.assert_allclose(stats["mean"], 0.1 * patches.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * patches.var(0), atol=1e-4)

    trained = dict(randomized, batch_stats=state["batch_stats"])
    mixed = np.concatenate([video[:1], other[1:]])
    a, b = apply(MODEL, trained, video)["tokens"][0], apply(MODEL, trained, mixed)["tokens"][0]
    np.testing.assert_allclose(a, b, atol=1e-5)  # evaluation: example 0 does not depend on the batch
    assert np.abs(apply(MODEL, randomized, video)["tokens"][0] - a).max() > 1e-3  # ... but on the running stats
    mixed_train = apply(MODEL, randomized, mixed, train=True, capture_intermediates=stem_and_ln_pre,
                        mutable=("batch_stats", "intermediates"))[0]
    assert np.abs(mixed_train["tokens"][0] - out["tokens"][0]).max() > 1e-3  # training: batch statistics


def test_fusion_weights_query_and_frame_cls_and_frozen_uses_the_query(variables):
    frozen = UniFormerV2(**LOCAL, frozen=True)
    params = randomize(variables["params"])
    shapes = jax.eval_shape(frozen.init, jax.random.PRNGKey(0), clip())["params"]
    assert "balance" not in shapes["backbone"] and "balance" in params["backbone"]
    frozen_params = dict(params, backbone={k: v for k, v in params["backbone"].items() if k != "balance"})
    query = apply(frozen, dict(variables, params=frozen_params), clip())

    def fused(balance):
        p = dict(params, backbone=dict(params["backbone"], balance=jnp.full((32,), balance)))
        return apply(MODEL, dict(variables, params=p), clip())

    np.testing.assert_allclose(fused(-40.0)["features"], query["features"], atol=1e-5)
    mean_cls = fused(40.0)
    np.testing.assert_allclose(mean_cls["features"], mean_cls["frame_cls"].mean(1), atol=1e-5)
    assert np.abs(query["features"] - mean_cls["features"]).max() > 1e-2
    np.testing.assert_allclose(fused(0.0)["features"], 0.5 * query["features"] + 0.5 * mean_cls["features"],
                               atol=1e-5)

    head = params["head"]  # LayerNorm (eps 1e-5) then dense, on the query alone
    x = np.asarray(query["features"])
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    logits = (x * head["norm"]["scale"] + head["norm"]["bias"]) @ head["dense"]["kernel"] + head["dense"]["bias"]
    np.testing.assert_allclose(query["logits"], logits, atol=1e-4)


def analytic_count(width, depth, patch_size, image_size, classes, num_global, local, downsample):
    """From the architecture: CLIP stem and blocks, two LMHRA per block, DPE + decoder per global block, head."""
    c, grid, k_t, hidden = width, (image_size // patch_size) ** 2, 3 if downsample else 1, int(width // 1.5)
    stem = k_t * patch_size ** 2 * 3 * c + c + (grid + 1) * c + 2 * c  # conv1, class emb, pos emb, ln_pre
    attention = 4 * c * c + 4 * c  # in_proj (3C x C) + bias, out_proj
    mlp = 8 * c * c + 5 * c
    block = attention + mlp + 4 * c
    if local:  # BN (2C), 1x1x1 down, depthwise (3 + bias), 1x1x1 up
        block += 2 * (2 * c + c * hidden + hidden + 4 * hidden + hidden * c + c)
    decoder = 27 * c + c + attention + mlp + 6 * c
    return stem + depth * block + c + num_global * decoder + c + 2 * c + c * classes + classes


@pytest.mark.parametrize("arg, millions", [("B/16", 115), ("L/14", 354), ("B/16,dataset=ssv2", 163),
                                           ("L/14@336,dataset=ssv2", 574)])
def test_parameter_counts_match_the_architecture(arg, millions):
    config = uniformerv2_finetune.get_config(arg)
    kw = config.model.kwargs
    boxed = jax.eval_shape(get_task(config).init_variables, jax.random.PRNGKey(0), trainer.example_batch(config, 1))
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(sharding.strip_boxes(boxed["params"])))
    assert count == analytic_count(kw.width, kw.depth, kw.patch_size, kw.image_size, kw.num_classes,
                                   len(kw.global_layers), kw.local_blocks, kw.temporal_downsample)
    assert round(count / 1e6) == millions, count


def stacked(tree):
    """Loop variables (transformer/blocks_{i}) -> scan variables (transformer/blocks, leading layer axis)."""
    if not tree:
        return tree
    transformer = tree["backbone"]["transformer"]
    blocks = [transformer[f"blocks_{i}"] for i in range(len(transformer))]
    return dict(tree, backbone=dict(tree["backbone"], transformer={
        "blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)}))


@pytest.mark.parametrize("local", [False, True])
def test_scan_equals_loop(variables, local):
    loop = MODEL if local else PLAIN
    scan = loop.clone(scan=True)
    loop_variables = dict(variables, params=randomize(variables["params"]))
    if not local:
        loop_variables = {"params": without_local(loop_variables["params"])}
    scan_variables = {k: stacked(v) for k, v in loop_variables.items()}
    assert jax.tree.map(np.shape, scan_variables) == jax.tree.map(
        np.shape, nn.unbox(jax.eval_shape(scan.init, jax.random.PRNGKey(0), clip())))
    a, b = apply(loop, loop_variables, clip()), apply(scan, scan_variables, clip())
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5), a, b)
    if local:
        _, a = apply(loop, loop_variables, clip(seed=4), train=True, capture_intermediates=stem_and_ln_pre,
                     mutable=("batch_stats", "intermediates"))
        _, b = apply(scan, scan_variables, clip(seed=4), train=True, mutable=("batch_stats",))
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
                     stacked({"backbone": a["batch_stats"]["backbone"]}), b["batch_stats"])


def test_classification_task_train_step_updates_batch_stats():
    # One UniBlock and its global block (a quarter less compile time than MODEL's two), random values of its shapes.
    config = common.train_config("classification", dict(LOCAL, depth=1, global_layers=(0,)), model_name="uniformerv2")
    config.data.update(dict(num_frames=4, crop_size=16, short_side=16, num_classes=8))
    config.batch_size, config.total_steps = 4, 2
    mesh, rules = sharding.make_mesh(dict(data=2, fsdp=2)), sharding.rules("fsdp")
    task = get_task(config)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        batch = trainer.example_batch(config, 4)
        boxed = jax.eval_shape(task.init_variables, jax.random.PRNGKey(0), batch)
        shapes = sharding.strip_boxes(boxed)
        params = randomize(shapes["params"])
        batch_stats = jax.tree.map(lambda x: np.ones(x.shape, x.dtype), shapes["batch_stats"])
        tx, schedule = optim.make_optimizer(config.optim, params, total_steps=2, global_batch=4)
        _, shardings = trainer.state_shardings(boxed, tx, mesh, rules)
        state = jax.device_put(TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                                          batch_stats=batch_stats, rng=jax.random.PRNGKey(0)), shardings)
        batch = dict(jax.tree.map(np.asarray, batch), video=clip(4, seed=6),
                     targets=np.eye(8, dtype=np.float32)[[0, 3, 5, 7]])
        step = jax.jit(trainer.make_train_step(task, tx, schedule),
                       in_shardings=(shardings, sharding.batch_sharding(mesh)), compiler_options=FAST_COMPILE)
        new, metrics = step(state, batch)
        logits = jax.jit(task.predict, compiler_options=FAST_COMPILE)(new.params, new.batch_stats, batch)["logits"]
    assert np.isfinite(metrics["loss"]) and metrics["skipped"] == 0 and logits.shape == (4, 8)
    for name in ("lmhra1", "lmhra2"):
        before = batch_stats["backbone"]["transformer"]["blocks_0"][name]["bn"]
        after = new.batch_stats["backbone"]["transformer"]["blocks_0"][name]["bn"]
        assert np.abs(after["mean"] - before["mean"]).min() > 0 and np.abs(after["var"] - before["var"]).min() > 0
    assert np.abs(new.params["backbone"]["balance"] - params["backbone"]["balance"]).max() > 0


@pytest.mark.parametrize("kernel_size", [(3, 3, 3), (3, 1, 1)])
def test_depthwise_conv_matches_torch_grouped_conv3d(kernel_size):
    import torch
    from invideo_jax.models.uniformerv2 import DepthwiseConv
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 5, 6)).astype(np.float32)
    module = DepthwiseConv(kernel_size, "embed")
    params = module.init(jax.random.PRNGKey(0), x)["params"]
    params = jax.tree.map(lambda p: p + 0.1, nn.unbox(params))
    weight = torch.from_numpy(np.asarray(params["kernel"])).permute(4, 3, 0, 1, 2)  # (C, 1, kt, kh, kw)
    want = torch.nn.functional.conv3d(torch.from_numpy(x).permute(0, 4, 1, 2, 3), weight,
                                      torch.from_numpy(np.asarray(params["bias"])),
                                      padding=tuple(k // 2 for k in kernel_size), groups=6)
    np.testing.assert_allclose(module.apply({"params": params}, x), want.permute(0, 2, 3, 4, 1).numpy(), atol=1e-5)

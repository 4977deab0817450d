"""Cross-model fusion: zero gates are the identity, gradients reach the fusion blocks, heads and the multimodal query
token but not the encoders' trunks, widths may differ."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from invideo_jax.models.fusion import FusedVideoModel
from invideo_jax.models.uniformerv2 import UniFormerV2
from invideo_jax.models.vit import VisionTransformer
from tests.compiling import FAST_COMPILE
from tests.random_trees import draw_like

# Compilation dominates the run time: a one-block multimodal encoder (with its global block and query token), random
# values instead of compiled initialisations, and one jitted apply of MODEL shared by the tests.
MASKED = dict(width=24, depth=2, num_heads=2, mlp_dim=48, patch_size=8, tubelet_size=2, num_frames=4,
              image_size=16, pool="mean")
MULTIMODAL = dict(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8, image_size=16, num_frames=4,
                  global_layers=(0,))
MODEL = FusedVideoModel(MASKED, MULTIMODAL, fusion_layers=(0, 1), direction="symmetric", num_heads=2,
                        num_classes=5)
APPLY = jax.jit(MODEL.apply)


def clip(seed=0):
    return np.random.default_rng(seed).standard_normal((2, 4, 16, 16, 3)).astype(np.float32)


def random_variables(module, seed=0):
    """Random values of `module`'s variables (from their shapes, nothing compiled): N(0, 0.2), norm scales and
    BatchNorm variances 1 + |N(0, 0.2)|."""
    shapes = nn.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), clip()))
    return draw_like(shapes, seed, std=0.2, unit_norms=True)


@pytest.fixture(scope="module")
def params():
    """Random parameters with the gates at zero, where the model initialises them."""
    return set_gates(random_variables(MODEL)["params"], 0.0)


def set_gates(params, value):
    flat = traverse_util.flatten_dict(params, sep="/")
    return traverse_util.unflatten_dict(
        {k: jnp.full_like(v, value) if k.endswith("_gate") else v for k, v in flat.items()}, sep="/")


def test_zero_gates_give_the_standalone_encoders_features_exactly(params):
    assert set(params) == {"masked", "multimodal", "fusion_0", "fusion_1", "fusion_masked_0", "fusion_masked_1",
                           "head_multimodal", "head_masked"}
    # MODEL.init sets the gates to zero (jitted, it compiles no more than the gates: XLA drops the rest)
    gates = jax.jit(lambda key: {k: v for k, v in traverse_util.flatten_dict(
        nn.unbox(MODEL.init(key, clip()))["params"], sep="/").items() if k.endswith("_gate")})(jax.random.PRNGKey(0))
    assert len(gates) == 8 and not any(np.any(v) for v in gates.values()), gates
    out = APPLY({"params": params}, clip())
    masked = jax.jit(VisionTransformer(**MASKED).apply)({"params": params["masked"]}, clip())
    multimodal = jax.jit(UniFormerV2(**MULTIMODAL).apply)({"params": params["multimodal"]}, clip())
    np.testing.assert_array_equal(out["multimodal_features"], multimodal["features"])
    np.testing.assert_array_equal(out["masked_features"], masked["pooled"])
    np.testing.assert_array_equal(out["multimodal_features_unfused"], multimodal["features"])
    assert out["logits"].shape == (2, 5)


def test_gates_change_features_and_only_fusion_params_get_gradients(params):
    out = APPLY({"params": set_gates(params, 0.5)}, clip())
    for k in ("multimodal_features", "masked_features"):
        assert np.abs(out[k] - out[f"{k}_unfused"]).max() > 1e-3, k

    for freeze in (True, False):
        model = MODEL.clone(freeze_encoders=freeze)
        grads = jax.jit(jax.grad(lambda p: model.apply({"params": p}, clip())["logits"].sum()),
                        compiler_options=FAST_COMPILE)(params)
        flat = traverse_util.flatten_dict(grads, sep="/")
        gates = {k: v for k, v in flat.items() if k.endswith("_gate")}
        assert len(gates) == 8 and all(v != 0 for v in gates.values()), gates
        query_path = ("temporal_cls_token", "dpe_", "dec_", "balance")
        trunks = [v for k, v in flat.items() if k.startswith("masked/")
                  or (k.startswith("multimodal/") and not any(q in k for q in query_path))]
        assert all(not np.any(v) for v in trunks) if freeze else any(np.any(v) for v in trunks)
        assert np.any(flat["multimodal/backbone/temporal_cls_token"])  # the query token trains, as in the paper


def test_ctx_proj_maps_the_context_width_only_when_widths_differ(params):
    assert params["fusion_0"]["ctx_proj"]["kernel"].shape == (24, 32)
    assert params["fusion_masked_0"]["ctx_proj"]["kernel"].shape == (32, 24)
    same = FusedVideoModel(dict(MASKED, width=32), MULTIMODAL, fusion_layers=(1,), num_heads=2)
    shapes = jax.eval_shape(same.init, jax.random.PRNGKey(0), clip())["params"]
    assert "ctx_proj" not in shapes["fusion_0"] and "fusion_masked_0" not in shapes
    assert "head_multimodal" not in shapes  # num_classes 0: features only


def test_every_param_has_logical_names():
    boxed = jax.eval_shape(MODEL.init, jax.random.PRNGKey(0), clip())["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert all(isinstance(x, nn.LogicallyPartitioned) and len(x.names) == x.value.ndim for x in leaves)
    assert boxed["fusion_0"]["attn_gate"].names == ()


@pytest.mark.parametrize("change, match", [
    (dict(direction="both"), "direction"),
    (dict(fusion_layers=(0, 2)), "fusion_layers"),
    (dict(fusion_layers=()), "fusion_layers"),
])
def test_bad_fields_are_named(change, match):
    model = MODEL.clone(**change)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), clip())


def test_training_steps_leave_the_frozen_encoders_bitwise_unchanged(params):
    """The paper-scale recipe's optimiser regexes on the tiny model: three jitted train steps change the gates, the
    heads and the multimodal query token, and not one bit of the two encoders' trunks."""
    from configs import common, internvideo_fusion
    from invideo_jax.train import optim, trainer
    from invideo_jax.train.state import TrainState
    from invideo_jax.train.tasks import get_task

    config = common.train_config("classification", dict(masked=MASKED, multimodal=MULTIMODAL, fusion_layers=(0, 1),
                                                        direction="symmetric", num_heads=2, num_classes=5),
                                 model_name="fusion")
    config.data.update(dict(num_frames=4, crop_size=16, short_side=16, num_classes=5))
    config.optim.update(dict(base_lr=1e-2, lr_batch_denom=0, warmup_steps=0,
                             frozen=internvideo_fusion.get_config().optim.frozen))
    task = get_task(config)
    tx, schedule = optim.make_optimizer(config.optim, params, total_steps=3, global_batch=2)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), batch_stats={},
                       rng=jax.random.PRNGKey(0))
    batch = {"video": clip(1), "targets": np.eye(5, dtype=np.float32)[[1, 3]]}
    step = jax.jit(trainer.make_train_step(task, tx, schedule), compiler_options=FAST_COMPILE)
    new = state
    for _ in range(3):
        new, metrics = step(new, batch)
    assert metrics["skipped"] == 0
    before, after = (traverse_util.flatten_dict(p, sep="/") for p in (params, new.params))
    trainable = [k for k in before if not (k.startswith("masked/") or k.startswith("multimodal/"))]
    frozen = [k for k in before if k not in trainable and k != "multimodal/backbone/temporal_cls_token"]
    for k in frozen:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert all(np.any(after[k] != before[k]) for k in trainable if k.endswith("_gate"))
    assert np.any(after["multimodal/backbone/temporal_cls_token"] != before["multimodal/backbone/temporal_cls_token"])


def test_init_from_the_two_supervised_checkpoints_starts_as_the_multimodal_classifier(tmp_path):
    """The pipeline's fusion stage restores both encoders from two classifier checkpoints (named init_from sources)
    and, with the multimodal classifier's head, predicts exactly what that classifier predicts."""
    import ml_collections
    import orbax.checkpoint as ocp

    from configs import internvideo_fusion
    from invideo_jax.train import trainer
    from invideo_jax.train.init_from import restore_batch_stats, restore_subtrees

    multimodal = dict(MULTIMODAL, local_blocks=True)  # BatchNorm statistics to restore as well
    vit = VisionTransformer(**MASKED, num_classes=5)
    uniformer = UniFormerV2(**multimodal, num_classes=5)
    saved = {"masked": random_variables(vit, seed=1), "multimodal": random_variables(uniformer, seed=2)}
    for name, tree in saved.items():
        ocp.PyTreeCheckpointer().save(tmp_path / name, tree)

    fused = FusedVideoModel(MASKED, multimodal, fusion_layers=(0, 1), num_heads=2, num_classes=5)
    # Zeros for a start: whatever is not restored (the fusion blocks) is the identity with its gates at zero.
    variables = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                             nn.unbox(jax.eval_shape(fused.init, jax.random.PRNGKey(0), clip())))
    params, stats = variables["params"], variables["batch_stats"]
    config = ml_collections.ConfigDict(dict(init_from=internvideo_fusion.init_from(
        str(tmp_path / "masked"), str(tmp_path / "multimodal"))))
    for source in trainer.init_sources(config, task=None):
        params = restore_subtrees(params, source)
        stats = restore_batch_stats(stats, source)

    expect = {"masked": {k: v for k, v in saved["masked"]["params"].items() if k != "head"},
              "multimodal": {"backbone": saved["multimodal"]["params"]["backbone"]},
              "head_multimodal": saved["multimodal"]["params"]["head"]}
    for key, tree in expect.items():
        jax.tree.map(np.testing.assert_array_equal, params[key], tree)
    jax.tree.map(np.testing.assert_array_equal, stats["multimodal"], saved["multimodal"]["batch_stats"])
    logits = jax.jit(fused.apply)({"params": params, "batch_stats": stats}, clip(1))["logits"]
    alone = jax.jit(uniformer.apply)(saved["multimodal"], clip(1))["logits"]
    np.testing.assert_allclose(logits, alone, rtol=0, atol=1e-6)  # same ops; only XLA's fusion order may differ
    assert np.abs(alone).max() > 0.1

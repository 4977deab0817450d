"""Optimiser recipes: layer decay, weight-decay mask, freezing, schedule, clipping, scanned == unscanned."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from invideo_jax.train import optim

DEPTH, WIDTH = 2, 4


def _arrays(shapes: dict, rng) -> dict:
    """Nested dict of shapes -> nested dict of distinct random float32 arrays."""
    return {k: _arrays(v, rng) if isinstance(v, dict) else jnp.asarray(rng.normal(size=v), jnp.float32)
            for k, v in shapes.items()}


def _block_shapes() -> dict:
    d = WIDTH
    linear = lambda i, o: {"kernel": (i, o), "bias": (o,)}
    return {"norm1": {"scale": (d,), "bias": (d,)},
            "attn": {"qkv": {"kernel": (d, 3 * d)}, "q_bias": (d,), "v_bias": (d,), "proj": linear(d, d)},
            "norm2": {"scale": (d,), "bias": (d,)}, "ls1": {"gamma": (d,)},
            "mlp": {"fc1": linear(d, 2 * d), "fc2": linear(2 * d, d)}}


def vit_params(scanned: bool, seed: int = 0) -> dict:
    """A tiny ViT param tree following the model conventions, blocks unscanned or scanned."""
    rng = np.random.default_rng(seed)
    params = _arrays({"patch_embed": {"proj": {"kernel": (2, 2, 2, 3, WIDTH), "bias": (WIDTH,)}},
                      "cls_token": (1, 1, WIDTH), "pos_embed": (1, 9, WIDTH),
                      "fc_norm": {"scale": (WIDTH,), "bias": (WIDTH,)},
                      "head": {"kernel": (WIDTH, 5), "bias": (5,)}}, rng)
    blocks = [_arrays(_block_shapes(), rng) for _ in range(DEPTH)]
    if scanned:
        params["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
    else:
        params.update({f"blocks_{i}": b for i, b in enumerate(blocks)})
    return params


def unstack_blocks(scanned_tree: dict) -> dict:
    """Scanned `blocks` subtree -> blocks_0 .. blocks_{L-1}."""
    out = {k: v for k, v in scanned_tree.items() if k != "blocks"}
    for i in range(DEPTH):
        out[f"blocks_{i}"] = jax.tree.map(lambda x: np.asarray(x)[i], scanned_tree["blocks"])
    return out


def config(**overrides):
    cfg = optim.default_optim_config()
    cfg.update(overrides)
    return cfg


def expected_scale(path: str, decay: float):
    """The recipe's formula, written independently of the module."""
    if path.split("/")[0] in ("patch_embed", "cls_token", "pos_embed"):
        return decay ** (DEPTH + 1)
    if path.startswith("blocks/"):
        return [decay ** (DEPTH - i) for i in range(DEPTH)]
    if path.startswith("blocks_"):
        return decay ** (DEPTH - int(path.split("/")[0].split("_")[1]))
    return 1.0


@pytest.mark.parametrize("scanned", [False, True])
def test_lr_scale_and_weight_decay_follow_the_recipe(scanned):
    rows = optim.describe(vit_params(scanned), config(layer_decay=0.5, num_layers=DEPTH, no_decay=("head/",)))
    assert len(rows) == 8 + 14 * (1 if scanned else DEPTH)
    for row in rows:
        np.testing.assert_allclose(row.lr_scale, expected_scale(row.path, 0.5), rtol=1e-7, err_msg=row.path)
        assert row.weight_decay == (row.path.endswith("kernel") and not row.path.startswith("head/")), row.path
        assert not row.frozen


def test_layer_decay_prefix_selects_the_encoder_of_a_composite_model():
    params = {"encoder": vit_params(scanned=False), "mask_token": jnp.zeros((1, 1, WIDTH)),
              "decoder": {"blocks_0": _arrays(_block_shapes(), np.random.default_rng(1))}}
    rows = {r.path: r for r in optim.describe(params, config(layer_decay=0.5, num_layers=DEPTH,
                                                             layer_decay_prefix="encoder/"))}
    assert rows["encoder/pos_embed"].lr_scale == 0.5 ** (DEPTH + 1)
    assert rows["encoder/blocks_1/mlp/fc1/kernel"].lr_scale == 0.5 ** (DEPTH - 1)
    assert rows["decoder/blocks_0/mlp/fc1/kernel"].lr_scale == 1.0
    assert not rows["mask_token"].weight_decay and rows["decoder/blocks_0/mlp/fc1/kernel"].weight_decay


def _run(tx, params, grads_seq):
    """Applies `tx` to each gradient tree in turn (one compiled step); returns all updates and the last state."""
    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, updates

    state, updates = tx.init(params), []
    for grads in grads_seq:
        params, state, u = step(params, state, grads)
        updates.append(u)
    return updates, state


def test_scanned_and_unscanned_blocks_get_identical_layer_scaled_updates():
    cfg = config(layer_decay=0.7, num_layers=DEPTH, clip_grad=1.0, warmup_steps=1, weight_decay=0.1)
    scanned = vit_params(scanned=True)
    grads = [vit_params(scanned=True, seed=s) for s in (1, 2)]
    tx_scan, _ = optim.make_optimizer(cfg, scanned, total_steps=10, global_batch=256)
    tx_flat, _ = optim.make_optimizer(cfg, unstack_blocks(scanned), total_steps=10, global_batch=256)
    got, _ = _run(tx_scan, scanned, grads)
    want, _ = _run(tx_flat, unstack_blocks(scanned), [unstack_blocks(g) for g in grads])
    for g, w in zip(got, want):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9), unstack_blocks(g), w)

    tx_plain, _ = optim.make_optimizer(config(clip_grad=1.0, warmup_steps=1, weight_decay=0.1), scanned,
                                       total_steps=10, global_batch=256)
    plain, _ = _run(tx_plain, scanned, grads[:1])
    ratio = jax.tree.map(lambda a, b: np.median(np.asarray(a) / np.asarray(b), axis=tuple(range(1, a.ndim))),
                         got[0], plain[0])
    np.testing.assert_allclose(ratio["blocks"]["mlp"]["fc1"]["kernel"], expected_scale("blocks/", 0.7), rtol=1e-5)
    np.testing.assert_allclose(ratio["patch_embed"]["proj"]["kernel"], 0.7 ** (DEPTH + 1), rtol=1e-5)
    np.testing.assert_allclose(ratio["head"]["kernel"], 1.0, rtol=1e-5)


def test_frozen_params_get_bitwise_zero_updates_and_no_state():
    params = vit_params(scanned=False)
    cfg = config(frozen=("patch_embed/", "blocks_0/"), clip_grad=1.0)
    tx, _ = optim.make_optimizer(cfg, params, total_steps=10, global_batch=256)
    updates, state = _run(tx, params, [vit_params(scanned=False, seed=1)] * 2)
    is_frozen = lambda path: path.startswith(("patch_embed/", "blocks_0/"))
    for key_path, u in jax.tree_util.tree_leaves_with_path(updates[-1]):
        path = jax.tree_util.keystr(key_path, simple=True, separator="/")
        assert np.all(np.asarray(u).view(np.uint32) == 0) == is_frozen(path), path
    state_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
    assert not [p for p in state_paths if "patch_embed" in p or "blocks_0" in p]
    trainable = sum(x.size for p, x in jax.tree_util.tree_leaves_with_path(params)
                    if not is_frozen(jax.tree_util.keystr(p, simple=True, separator="/")))
    assert sum(x.size for x in jax.tree.leaves(state) if x.ndim) == 2 * trainable  # mu and nu only


def test_schedule_warmup_cosine_and_batch_scaling():
    cfg = config(base_lr=1e-3, warmup_steps=10, warmup_lr=1e-6, min_lr=1e-5)
    _, schedule = optim.make_optimizer(cfg, vit_params(False), total_steps=110, global_batch=512)
    peak = 1e-3 * 512 / 256
    np.testing.assert_allclose([schedule(0), schedule(5), schedule(10), schedule(60), schedule(110)],
                               [1e-6, (1e-6 + peak) / 2, peak, (peak + 1e-5) / 2, 1e-5], rtol=1e-5)
    for denom in (0, None):
        cfg.lr_batch_denom = denom
        _, schedule = optim.make_optimizer(cfg, vit_params(False), total_steps=110, global_batch=512)
        np.testing.assert_allclose(schedule(10), 1e-3, rtol=1e-6)


def test_clip_grad_bounds_the_update_norm():
    rng = np.random.default_rng(0)
    params = _arrays({"kernel": (4, 4), "bias": (4,)}, rng)
    grads = jax.tree.map(lambda x: 100.0 * x, _arrays({"kernel": (4, 4), "bias": (4,)}, rng))
    lr, eps = 1e-3, 1e4  # with a huge eps Adam's update is ~ lr * g / eps, so it shows the gradient norm
    norms = {}
    for clip in (0.0, 1.0):
        cfg = config(base_lr=lr, lr_batch_denom=0, eps=eps, weight_decay=0.0, clip_grad=clip)
        tx, _ = optim.make_optimizer(cfg, params, total_steps=10, global_batch=1)
        (update,), _ = _run(tx, params, [grads])
        norms[clip] = float(optax.global_norm(update))
    assert norms[1.0] <= lr * 1.0 / eps
    assert norms[1.0] > 0.9 * lr / eps
    assert norms[0.0] > 10 * lr / eps


@pytest.mark.parametrize("overrides, message", [
    (dict(layer_decay=1.5), "optim.layer_decay"),
    (dict(layer_decay=0.9), "optim.num_layers"),
    (dict(layer_decay=0.9, num_layers=DEPTH + 1), "scanned parameter blocks/"),
    (dict(frozen=("decoder/",)), "optim.frozen: pattern 'decoder/'"),
    (dict(warmup_steps=10), "optim.warmup_steps"),
])
def test_bad_config_names_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        optim.make_optimizer(config(**overrides), vit_params(scanned=True), total_steps=10, global_batch=8)

"""Gradient accumulation (`config.grad_accum_steps`): k microbatches scanned inside one step against references
computed directly from `task.loss` with `jax.value_and_grad` (the whole batch; each microbatch for BatchNorm).

The optimiser is plain SGD with learning rate 1, so the updated parameters are `params - grads` and the step's
gradient can be read off them. Steps run sharded over a (data=2, fsdp=2) mesh of simulated CPU devices.
Tolerances: float32, rtol 1e-4 / atol 1e-6 on gradients and parameters (sums in another order), 1e-5 on losses.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from invideo_jax import aot, sharding
from invideo_jax.train import trainer
from invideo_jax.train.state import TrainState
from invideo_jax.train.tasks import get_task

pytestmark = pytest.mark.usefixtures("quick_compiling")  # conftest.py

VIT = dict(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8, tubelet_size=2, num_frames=4, image_size=16,
           final_norm=False, pool="mean", num_classes=8)
# UniFormerV2 with local UniBlocks (two BatchNorm layers) and no dropout, so that no step depends on its random key;
# no global blocks (they hold no BatchNorm and would triple the compile time).
UNIFORMER = dict(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8, image_size=16, num_frames=4, num_classes=8,
                 temporal_downsample=True, local_blocks=True, global_layers=(), head_dropout=0.0)
MODELS = {"vit": VIT, "uniformerv2": UNIFORMER}
BATCH = 16
TOL = dict(rtol=1e-4, atol=1e-6)


def config_for(model, model_name="vit"):
    c = common.train_config("classification", model, model_name=model_name)
    c.data.update(dict(num_frames=4, crop_size=16, short_side=16, num_classes=8))
    c.batch_size = BATCH
    c.mesh.update(dict(data=2, fsdp=2))
    return c


def batch_of(size=BATCH, seed=0):
    rng = np.random.default_rng(seed)
    return {"video": rng.standard_normal((size, 4, 16, 16, 3)).astype(np.float32),
            "targets": np.eye(8, dtype=np.float32)[rng.integers(0, 8, size)],
            "label": np.zeros(size, np.int32), "bad": np.zeros(size, np.int32)}


@functools.cache
def initial_state(model_name):
    """(config, task, SGD(1), sharded TrainState, shardings, mesh) of `model_name`, built once (no compiled or
    op-by-op initialisation): random values of the abstract state's shapes, N(0, 0.2) (about the initialisers'
    1 / sqrt(width)) with norm scales 1 + |N(0, 0.2)|, and non-trivial BatchNorm statistics (means N(0, 0.2),
    variances 1 + |N(0, 0.2)|). All of the local UniBlocks are active (non-zero `up`)."""
    config = config_for(MODELS[model_name], model_name)
    s = aot.setup(config, jax.devices()[:4])
    tx = optax.sgd(1.0)
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        value = rng.normal(0, 0.2, leaf.shape)
        positive = jax.tree_util.keystr(path[-1:]) in ("['scale']", "['var']")
        return (1 + np.abs(value) if positive else value).astype(leaf.dtype)

    params, stats = (jax.tree_util.tree_map_with_path(draw, tree) for tree in (s.abstract.params,
                                                                               s.abstract.batch_stats))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), batch_stats=stats,
                       rng=jax.random.PRNGKey(1))
    shardings = s.shardings.replace(opt_state=jax.tree.map(lambda _: sharding.replicated(s.mesh), state.opt_state))
    return config, s.task, tx, jax.device_put(state, shardings), shardings, s.mesh


def run_step(model_name, k, batch):
    config, task, tx, state, shardings, mesh = initial_state(model_name)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config.sharding_rules)):
        step = jax.jit(trainer.make_train_step(task, tx, lambda _: 1.0, k),
                       in_shardings=(shardings, sharding.batch_sharding(mesh)))
        new, metrics = step(state, batch)
    return jax.device_get((state, new, metrics))


@functools.cache
def loss_and_grad(model_name):
    return jax.jit(jax.value_and_grad(get_task(config_for(MODELS[model_name], model_name)).loss, has_aux=True))


def reference(model_name, state, batch):
    """(loss, grads, batch_stats) of `task.loss` on `batch` from `state`, computed directly (no train step)."""
    grad_fn = loss_and_grad(model_name)
    (loss, (_, stats)), grads = grad_fn(state.params, state.batch_stats, batch, jax.random.PRNGKey(2))
    return jax.device_get((loss, grads, stats))


def assert_trees_close(a, b, **tol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


def test_k_microbatches_equal_one_step_on_the_whole_batch():
    k, batch = 4, batch_of()
    state, new, metrics = run_step("vit", k, batch)
    loss, grads, _ = reference("vit", state, batch)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    assert_trees_close(jax.tree.map(lambda p, n: p - n, state.params, new.params), grads, **TOL)
    _, whole, whole_metrics = run_step("vit", 1, batch)
    assert_trees_close(new.params, whole.params, **TOL)
    np.testing.assert_allclose(metrics["grad_norm"], whole_metrics["grad_norm"], rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], whole_metrics["accuracy"], atol=1e-6)


def test_batchnorm_microbatches_normalise_by_their_own_statistics_and_average_the_running_update():
    """UniFormerV2's BatchNorm with k = 2: each microbatch (examples j, j + k, ...) is normalised with its own
    statistics, from the same running statistics; the step keeps the mean of the microbatches' losses, gradients and
    running-statistic updates. So the running mean equals the whole batch's update, and the running variance takes
    the mean of the microbatches' (biased) variances, which leaves out the spread between their means: it is at most
    the whole batch's."""
    k, batch = 2, batch_of()
    state, new, metrics = run_step("uniformerv2", k, batch)
    parts = [reference("uniformerv2", state, {key: x[j::k] for key, x in batch.items()}) for j in range(k)]
    loss, grads, stats = jax.tree.map(lambda *xs: np.mean(xs, axis=0), *parts)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    assert_trees_close(jax.tree.map(lambda p, n: p - n, state.params, new.params), grads, **TOL)
    assert_trees_close(new.batch_stats, stats, **TOL)

    _, whole_grads, whole_stats = reference("uniformerv2", state, batch)
    # the first BatchNorm: its input (the embedded patches) is the same whether the batch is split or not
    bn = lambda tree: tree["backbone"]["transformer"]["blocks_0"]["lmhra1"]["bn"]
    np.testing.assert_allclose(bn(new.batch_stats)["mean"], bn(whole_stats)["mean"], rtol=1e-5, atol=1e-6)
    assert np.all(bn(new.batch_stats)["var"] <= bn(whole_stats)["var"] + 1e-6)
    assert np.abs(bn(new.batch_stats)["var"] - bn(whole_stats)["var"]).max() > 1e-4
    differences = jax.tree.map(lambda p, n, g: np.abs(p - n - g).max(), state.params, new.params, whole_grads)
    assert max(jax.tree.leaves(differences)) > 1e-4  # the microbatch normalisation changes the gradient


def test_a_batch_that_does_not_split_into_microbatches_over_the_shards_is_refused():
    with pytest.raises(ValueError, match=r"grad_accum_steps=8.*batch_size must divide by 32"):
        run_step("vit", 8, batch_of())
    with pytest.raises(ValueError, match="grad_accum_steps must be a positive integer"):
        trainer.make_train_step(None, None, None, 0)

"""EMA of the weights (timm ModelEmaV2 / official `--model_ema`): ema = decay * ema + (1 - decay) * params after
every applied step, kept in the optimiser state: checkpointed, restored on resume and evaluated beside the weights."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from invideo_jax.train import ema, trainer
from invideo_jax.train.state import TrainState
from test_train import classifier_config


def test_three_updates_by_hand():
    # decay 0.9 from 1: 0.9 * 1 + 0.1 * 2 = 1.1; 0.9 * 1.1 + 0.1 * 4 = 1.39; 0.9 * 1.39 + 0.1 * 8 = 2.051
    tx = ema.track(0.9)
    params = {"w": jnp.array([1.0, -1.0])}
    state = tx.init(params)
    for weight in (2.0, 4.0, 8.0):
        target = {"w": jnp.array([weight, -weight])}
        updates, state = tx.update(jax.tree.map(jnp.subtract, target, params), state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params["w"], [8.0, -8.0])  # the updates pass through unchanged
    np.testing.assert_allclose(ema.averaged(state)["w"], [2.051, -2.051], rtol=1e-6)
    assert ema.averaged(state)["w"].dtype == jnp.float32


@pytest.mark.parametrize("decay", [-0.1, 1.0, True, "0.9"])
def test_bad_decay_is_named(decay):
    with pytest.raises(ValueError, match="optim.ema_decay"):
        ema.track(decay)


class Quadratic:
    """loss = sum((w - batch['target'])^2) / 2: plain SGD moves w a fraction lr of the way to the target."""

    def loss(self, params, batch_stats, batch, rng):
        loss = 0.5 * jnp.sum((params["w"] - batch["target"]) ** 2)
        return loss, ({"loss": loss}, batch_stats)


def test_train_step_averages_every_applied_step_only():
    decay, lr = 0.75, 0.5
    tx = optax.chain(optax.sgd(lr), ema.track(decay))
    params = {"w": jnp.array([0.0, 4.0])}
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), batch_stats={},
                       rng=jax.random.PRNGKey(0))
    step = jax.jit(trainer.make_train_step(Quadratic(), tx, lambda _: lr))
    weights, expected = np.array([0.0, 4.0]), np.array([0.0, 4.0])
    for target in ([8.0, 0.0], [0.0, 0.0], [2.0, 2.0]):
        state, _ = step(state, {"target": jnp.array(target)})
        weights = weights + lr * (np.array(target) - weights)
        expected = decay * expected + (1 - decay) * weights
        np.testing.assert_allclose(state.params["w"], weights, rtol=1e-6)
        np.testing.assert_allclose(ema.averaged(state.opt_state)["w"], expected, rtol=1e-6)
    state, metrics = step(state, {"target": jnp.array([np.nan, 0.0])})  # skipped: neither moves
    assert int(metrics["skipped"]) == 1
    np.testing.assert_allclose(ema.averaged(state.opt_state)["w"], expected, rtol=1e-6)


def test_restart_copies_the_weights():
    tx = optax.chain(optax.adam(1e-3), ema.track(0.9))
    state = tx.init({"w": jnp.zeros(3)})
    assert ema.averaged(optax.adam(1e-3).init({"w": jnp.zeros(3)})) is None
    restarted = ema.restart(state, {"w": jnp.arange(3.0)})
    np.testing.assert_array_equal(ema.averaged(restarted)["w"], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(restarted[0][0].mu["w"], state[0][0].mu["w"])  # Adam's state untouched


def _ema_leaves(opt_state) -> np.ndarray:
    """The average in a raw (target-less) restore of the optimiser state: the last element of the chain."""
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(opt_state[-1])])


@pytest.mark.slow  # ~66 s on 2 cores at load average 10: a trainer run stopped after step 3 and resumed
def test_trainer_checkpoints_resumes_and_evaluates_the_average(tmp_path, synthetic_videos):
    config = classifier_config(synthetic_videos)
    config.optim.ema_decay, config.checkpoint_every, config.keep_checkpoints, config.eval_every = 0.5, 1, 10, 2
    workdir = str(tmp_path / "run")
    assert trainer.train(config, workdir, stop_after=3) is None
    summary = trainer.train(config, workdir)  # resumes at step 3: the average must come back from the checkpoint
    saved = {step: ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
             for step in range(1, 7)}
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
    for step in range(2, 7):
        np.testing.assert_allclose(_ema_leaves(saved[step]["opt_state"]),
                                   0.5 * _ema_leaves(saved[step - 1]["opt_state"]) + 0.5 * flat(saved[step]["params"]),
                                   rtol=1e-6, atol=1e-7, err_msg=f"step {step}")
    assert not np.array_equal(_ema_leaves(saved[6]["opt_state"]), flat(saved[6]["params"]))
    assert set(summary["eval_ema"]) >= {"top1", "top5"} and "predictions" not in summary["eval_ema"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [row["step"] for row in rows if "eval_ema/top1" in row] == [2, 4, 6]

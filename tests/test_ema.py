"""EMA of the weights (timm ModelEmaV2 / official `--model_ema`): ema = decay * ema + (1 - decay) * params after
every applied step, checkpointed with the state, restored on resume and evaluated beside the weights."""
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
from test_train import classifier_config, data_dir  # noqa: F401 (data_dir: a fixture)


def test_three_updates_by_hand():
    # decay 0.9 from 1: 0.9 * 1 + 0.1 * 2 = 1.1; 0.9 * 1.1 + 0.1 * 4 = 1.39; 0.9 * 1.39 + 0.1 * 8 = 2.051
    average = ema.start({"w": jnp.array([1.0, -1.0])})
    for weight in (2.0, 4.0, 8.0):
        average = ema.update(average, {"w": jnp.array([weight, -weight])}, 0.9)
    np.testing.assert_allclose(average["w"], [2.051, -2.051], rtol=1e-6)
    assert average["w"].dtype == jnp.float32


@pytest.mark.parametrize("decay", [-0.1, 1.0, True, "0.9"])
def test_bad_decay_is_named(decay):
    with pytest.raises(ValueError, match="config.ema_decay"):
        ema.check_decay(decay)


class Quadratic:
    """loss = sum((w - batch['target'])^2) / 2: plain SGD moves w a fraction lr of the way to the target."""

    def loss(self, params, batch_stats, batch, rng):
        loss = 0.5 * jnp.sum((params["w"] - batch["target"]) ** 2)
        return loss, ({"loss": loss}, batch_stats)


def test_train_step_averages_every_applied_step_only():
    decay, lr = 0.75, 0.5
    tx = optax.sgd(lr)
    params = {"w": jnp.array([0.0, 4.0])}
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), batch_stats={},
                       rng=jax.random.PRNGKey(0), ema_params=ema.start(params))
    step = jax.jit(trainer.make_train_step(Quadratic(), tx, lambda _: lr, ema_decay=decay))
    weights, expected = np.array([0.0, 4.0]), np.array([0.0, 4.0])
    for target in ([8.0, 0.0], [0.0, 0.0], [2.0, 2.0]):
        state, _ = step(state, {"target": jnp.array(target)})
        weights = weights + lr * (np.array(target) - weights)
        expected = decay * expected + (1 - decay) * weights
        np.testing.assert_allclose(state.params["w"], weights, rtol=1e-6)
        np.testing.assert_allclose(state.ema_params["w"], expected, rtol=1e-6)
    state, metrics = step(state, {"target": jnp.array([np.nan, 0.0])})  # skipped: neither moves
    assert int(metrics["skipped"]) == 1
    np.testing.assert_allclose(state.ema_params["w"], expected, rtol=1e-6)


@pytest.mark.slow  # ~66 s on 2 cores at load average 10: a trainer run stopped after step 3 and resumed
def test_trainer_checkpoints_resumes_and_evaluates_the_average(tmp_path, data_dir):
    config = classifier_config(data_dir)
    config.ema_decay, config.checkpoint_every, config.keep_checkpoints, config.eval_every = 0.5, 1, 10, 2
    workdir = str(tmp_path / "run")
    assert trainer.train(config, workdir, stop_after=3) is None
    summary = trainer.train(config, workdir)  # resumes at step 3: the average must come back from the checkpoint
    saved = {step: ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
             for step in range(1, 7)}
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
    for step in range(2, 7):
        np.testing.assert_allclose(flat(saved[step]["ema_params"]),
                                   0.5 * flat(saved[step - 1]["ema_params"]) + 0.5 * flat(saved[step]["params"]),
                                   rtol=1e-6, atol=1e-7, err_msg=f"step {step}")
    assert not np.array_equal(flat(saved[6]["ema_params"]), flat(saved[6]["params"]))
    assert set(summary["eval_ema"]) >= {"top1", "top5"} and "predictions" not in summary["eval_ema"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [row["step"] for row in rows if "eval_ema/top1" in row] == [2, 4, 6]

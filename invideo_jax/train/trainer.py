"""The train loop: one readable function in sections (set-up, data, state, step, loop, evaluation).

State is created abstractly (`jax.eval_shape`), its shardings derived from logical axis names, then initialised
by a jitted function with those output shardings, so no device ever holds an unsharded large model. A run
restarted in the same workdir resumes from its latest checkpoint, data position included.
"""
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from invideo_jax import distributed, sharding
from invideo_jax.data import pipeline
from invideo_jax.train import checkpoint, metrics as metrics_lib, optim
from invideo_jax.train.state import TrainState
from invideo_jax.train.tasks import get_task

SUMMARY = "summary.json"


def batch_shapes(config, batch_size) -> dict:
    """ShapeDtypeStructs of a training batch as the data pipeline yields it."""
    d = config.data
    shapes = {"video": ((batch_size, d.num_frames, d.crop_size, d.crop_size, 3), jnp.float32),
              "label": ((batch_size,), jnp.int32), "bad": ((batch_size,), jnp.int32)}
    if d.num_classes:
        shapes["targets"] = ((batch_size, d.num_classes), jnp.float32)
    if d.tokenizer:
        shapes["text"] = ((batch_size, d.text_length), jnp.int32)
    return {key: jax.ShapeDtypeStruct(*spec) for key, spec in shapes.items()}


def example_batch(config, batch_size):
    """Zeros shaped like a training batch (for shapes only)."""
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), batch_shapes(config, batch_size))


def state_shardings(boxed, tx, mesh, rule_table):
    """(abstract TrainState with shardings, TrainState of shardings) from the abstract variables' logical names.

    `boxed`: `jax.eval_shape(task.init_variables, ...)`, whose leaves still carry their logical axis names.
    """
    param_sh = sharding.logical_shardings(boxed["params"], mesh, rule_table)
    stats_sh = sharding.logical_shardings(boxed.get("batch_stats", {}), mesh, rule_table)
    abstract_params = sharding.strip_boxes(boxed["params"])
    opt_sh = sharding.opt_state_shardings(tx, abstract_params, param_sh)
    repl = sharding.replicated(mesh)
    shardings = TrainState(step=repl, params=param_sh, opt_state=opt_sh, batch_stats=stats_sh, rng=repl)
    abstract = jax.eval_shape(lambda: TrainState(
        step=jnp.zeros((), jnp.int32), params=abstract_params, opt_state=tx.init(abstract_params),
        batch_stats=sharding.strip_boxes(boxed.get("batch_stats", {})), rng=jax.random.PRNGKey(0)))
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return abstract, shardings


def make_train_step(task, tx, schedule):
    """A pure step: new state and metrics. A non-finite loss or gradient leaves params and optimiser untouched."""

    def train_step(state: TrainState, batch):
        rng, step_rng = jax.random.split(state.rng)
        grad_fn = jax.value_and_grad(task.loss, has_aux=True)
        (loss, (metrics, batch_stats)), grads = grad_fn(state.params, state.batch_stats, batch, step_rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = state.replace(
            step=state.step + 1, rng=rng, params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state), batch_stats=keep(batch_stats, state.batch_stats))
        metrics = dict(metrics, grad_norm=grad_norm, lr=schedule(state.step), skipped=1 - finite.astype(jnp.int32))
        if "bad" in batch:
            metrics["bad_videos"] = batch["bad"].sum()
        return new_state, metrics

    return train_step


def train(config, workdir: str, stop_after: int = 0):
    """Trains one stage in `workdir`; returns (and writes) its summary. Resumes if checkpoints exist.

    `stop_after` > 0 stops after that step with a checkpoint and returns None, as a preempted run would.
    """
    # ---------------------------------------------------------------- set-up
    os.makedirs(workdir, exist_ok=True)
    start_time = time.perf_counter()
    mesh = sharding.make_mesh(config.mesh)
    rule_table = sharding.rules(config.sharding_rules)
    task = get_task(config)
    local_batch = sharding.local_batch_size(config.batch_size, mesh)
    batch_sh = sharding.batch_sharding(mesh)
    logging.info("mesh %s, global batch %d (%d on this host)", dict(mesh.shape), config.batch_size, local_batch)

    with jax.set_mesh(mesh), nn.logical_axis_rules(rule_table):
        # ------------------------------------------------------------ state
        batch = example_batch(config, int(np.prod([mesh.shape[a] for a in sharding.BATCH_AXES])))
        boxed = jax.eval_shape(task.init_variables, jax.random.PRNGKey(0), batch)
        tx, schedule = optim.make_optimizer(config.optim, sharding.strip_boxes(boxed["params"]),
                                            total_steps=config.total_steps, global_batch=config.batch_size)
        abstract, shardings = state_shardings(boxed, tx, mesh, rule_table)

        def init_state(rng):
            init_rng, state_rng = jax.random.split(rng)
            variables = nn.unbox(task.init_variables(init_rng, batch))
            return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                              opt_state=tx.init(variables["params"]),
                              batch_stats=variables.get("batch_stats", {}), rng=state_rng)

        # ------------------------------------------------------------ data
        train_iter = pipeline.train_iterator(config.data, seed=config.seed, batch_size=local_batch)

        ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints,
                                       save_interval_steps=config.checkpoint_every)
        start_step = ckpt.latest_step()
        if start_step is not None:
            state = ckpt.restore(abstract, data_iterator=train_iter)
            logging.info("resumed from step %d", start_step)
        else:
            state = jax.jit(init_state, out_shardings=shardings)(jax.random.PRNGKey(config.seed))
            if config.init_from.checkpoint:
                init_from = _init_from(config, task)
                state = state.replace(params=checkpoint.restore_subtrees(state.params, init_from),
                                      batch_stats=checkpoint.restore_batch_stats(state.batch_stats, init_from))
            start_step = 0

        # ------------------------------------------------------------ steps
        train_step = jax.jit(make_train_step(task, tx, schedule), in_shardings=(shardings, batch_sh),
                             out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
        predict = jax.jit(task.predict, in_shardings=(shardings.params, shardings.batch_stats, batch_sh))
        evaluate = getattr(task, "evaluate", None)  # a task without one is evaluated by its training loss only

        # ------------------------------------------------------------ loop
        writer = metrics_lib.MetricWriter(workdir, resume_step=start_step)
        progress = metrics_lib.Progress(config.total_steps, start_step, config.batch_size)
        pending = []
        for step in range(start_step + 1, config.total_steps + 1):
            batch = pipeline.make_global(next(train_iter), batch_sh)
            state, step_metrics = train_step(state, batch)
            pending.append(step_metrics)
            if step % config.log_every == 0 or step == config.total_steps:
                summary = metrics_lib.reduce(jax.device_get(pending))
                pending = []
                writer.write(step, dict(summary, clips_per_s=progress.throughput(step)))
                progress.update(step, summary)
            if evaluate and config.eval_every and step % config.eval_every == 0 and step != config.total_steps:
                _log_eval(writer, step, evaluate(state, predict, mesh))
            stopping = step == stop_after
            ckpt.save(step, state, data_iterator=train_iter, force=stopping or step == config.total_steps)
            if stopping:
                break
        progress.close()
        ckpt.wait()
        if stop_after and stop_after < config.total_steps:
            writer.close()
            ckpt.close()
            return None

        # ------------------------------------------------------------ final evaluation
        result = {"steps": config.total_steps, "train": writer.last("loss", "accuracy")}
        if evaluate:
            result["eval"] = evaluate(state, predict, mesh)
            _log_eval(writer, config.total_steps, result["eval"])
        writer.close()
        ckpt.close()
    result["wall_s"] = round(time.perf_counter() - start_time, 1)
    if distributed.is_main():  # one writer: the workdir is shared
        with open(os.path.join(workdir, SUMMARY), "w") as f:
            json.dump(result, f, indent=1)
    return result


def _log_eval(writer, step, result):
    writer.write(step, {f"eval/{k}": v for k, v in result.items()})


def _init_from(config, task):
    """`config.init_from` with the task's default subtree mapping when none is given."""
    init_from = dict(config.init_from)
    if not init_from.get("mapping"):
        init_from["mapping"] = task.init_from_mapping
    return init_from

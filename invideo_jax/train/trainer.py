"""The train loop: one readable function in sections (set-up, data, state, step, loop, evaluation).

State is created abstractly (`jax.eval_shape`), its shardings derived from logical axis names, then initialised
by a jitted function with those output shardings, so no device ever holds an unsharded large model. A run
restarted in the same workdir resumes from its latest checkpoint, data position included. SIGTERM (preemption)
checkpoints the current step and exits with PREEMPTED_EXIT_CODE; a non-finite loss or gradient skips the step or
stops the run (`config.nonfinite`). See docs/fault_tolerance.md.
"""
import contextlib
import functools
import json
import os
import signal
import threading
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from invideo_jax import distributed, sharding
from invideo_jax.data import pipeline
from invideo_jax.files import atomic_write
from invideo_jax.train import checkpoint, diagnostics, ema, init_from, metrics as metrics_lib, optim
from invideo_jax.train.state import TrainState
from invideo_jax.train.tasks import get_task

SUMMARY = "summary.json"
PREDICTIONS = "predictions.npz"  # per-video outputs of the final evaluation, when the task gives them
NONFINITE = ("skip", "stop")  # config.nonfinite: what a step with a non-finite loss or gradient does
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: what a process ended by SIGTERM reports, so schedulers requeue as usual
TRANSFER_GUARDS = ("", "allow", "log", "disallow", "log_explicit", "disallow_explicit")  # config.transfer_guard


class Preempted(SystemExit):
    """Raised by `train` after a SIGTERM, once the current step is checkpointed: the process exits with
    PREEMPTED_EXIT_CODE and no traceback, and the same command resumes. A SystemExit, so that nothing (a pipeline
    about to start its next stage) takes the stopped stage for a finished one."""

    def __init__(self, step: int, directory):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step, self.directory = step, directory

    def __str__(self):
        return f"preempted (SIGTERM): step {self.step} checkpointed in {self.directory}; rerun to resume"


def example_batch(config, batch_size):
    """Zeros shaped like a training batch (`pipeline.batch_spec`; for shapes only)."""
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), pipeline.batch_spec(config.data, batch_size))


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


def make_train_step(task, tx, schedule, grad_accum_steps: int = 1):
    """A pure step: new state and metrics. A non-finite loss or gradient leaves params and optimiser untouched.

    `grad_accum_steps` = k > 1 splits the global batch into k microbatches (example i goes to microbatch i mod k, so
    each stays spread over the batch shards) and scans over them inside the step: the gradient, loss and metrics are
    the microbatches' means, which for a loss that is a mean over examples equal the whole batch's; one optimiser
    update follows. Each microbatch gets its own dropout / masking key. What does not decompose over examples sees
    the microbatch only: in-batch negatives of contrastive losses, and BatchNorm, which normalises with the
    microbatch's statistics; every microbatch starts from the same running statistics and the step keeps their mean
    update, so the running mean moves as after the whole batch and the running variance by the mean of the
    microbatches' variances (docs/scale.md).
    """
    if not isinstance(grad_accum_steps, int) or grad_accum_steps < 1:
        raise ValueError(f"config.grad_accum_steps must be a positive integer, got {grad_accum_steps!r}")
    grad_fn = jax.value_and_grad(task.loss, has_aux=True)

    def accumulated_grads(state: TrainState, batch, step_rng):
        micro = microbatches(batch, grad_accum_steps)

        def body(carry, inputs):
            micro_batch, rng = inputs
            (loss, (metrics, batch_stats)), grads = grad_fn(state.params, state.batch_stats, micro_batch, rng)
            carry = jax.tree.map(jnp.add, carry, (grads, batch_stats))
            return carry, (loss, metrics)

        zeros = jax.tree.map(jnp.zeros_like, (state.params, state.batch_stats))
        rngs = jax.random.split(step_rng, grad_accum_steps)
        (grads, batch_stats), (loss, metrics) = jax.lax.scan(body, zeros, (micro, rngs))
        mean_of_sums = lambda tree: jax.tree.map(lambda x: x / grad_accum_steps, tree)
        metrics = jax.tree.map(lambda x: x.mean(0), metrics)
        return (loss.mean(), (metrics, mean_of_sums(batch_stats))), mean_of_sums(grads)

    def train_step(state: TrainState, batch):
        rng, step_rng = jax.random.split(state.rng)
        if grad_accum_steps == 1:
            (loss, (metrics, batch_stats)), grads = grad_fn(state.params, state.batch_stats, batch, step_rng)
        else:
            (loss, (metrics, batch_stats)), grads = accumulated_grads(state, batch, step_rng)
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


def microbatches(batch: dict, k: int) -> dict:
    """(B, ...) arrays -> (k, B/k, ...): microbatch j holds examples j, j + k, ..., so that a batch sharded over the
    mesh's batch axes gives every microbatch an equal share of each device's examples (no data moves)."""
    mesh = jax.sharding.get_abstract_mesh()
    shards = int(np.prod([mesh.shape[a] for a in sharding.BATCH_AXES if a in mesh.shape]))
    size = len(next(iter(batch.values())))
    if size % (k * shards):
        raise ValueError(f"config.grad_accum_steps={k}: the batch of {size} does not split into {k} microbatches "
                         f"spread over the {shards} batch shards (batch_size must divide by {k * shards})")

    def split(x):
        x = x.reshape((size // k, k) + x.shape[1:]).swapaxes(0, 1)
        if mesh.empty:
            return x
        return jax.lax.with_sharding_constraint(x, P(None, sharding.BATCH_AXES))

    return jax.tree.map(split, batch)


class StopOnSigterm:
    """While active (a `with` block), SIGTERM asks the loop to checkpoint and stop after the current step; a second
    SIGTERM ends the process at once. Restores the previous handler on exit. Outside the main thread (where Python
    cannot install handlers) it does nothing and says so."""

    def __init__(self):
        self.requested, self._previous, self._installed = False, None, False

    def _handle(self, signum, frame):
        del frame
        if self.requested:  # asked twice: do not wait for the step
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous, self._installed = signal.signal(signal.SIGTERM, self._handle), True
        else:
            logging.warning("train() outside the main thread: SIGTERM will not checkpoint before exiting")
        return self

    def __exit__(self, *exc_info):
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def agreed(self) -> bool:
        """Whether any process got SIGTERM; every process gets the same answer at the same step."""
        if jax.process_count() == 1:
            return self.requested
        return bool(np.max(multihost_utils.process_allgather(np.int32(self.requested))))


def train(config, workdir: str, stop_after: int = 0):
    """Trains one stage in `workdir`; returns (and writes) its summary. Resumes if checkpoints exist.

    `stop_after` > 0 stops after that step with a checkpoint and returns None. SIGTERM (preemption) checkpoints the
    current step and raises `Preempted` (exit code PREEMPTED_EXIT_CODE); rerunning resumes either way.
    """
    # ---------------------------------------------------------------- set-up
    nonfinite = config.get("nonfinite", "skip")
    if nonfinite not in NONFINITE:
        raise ValueError(f"config.nonfinite={nonfinite!r}: expected one of {NONFINITE}")
    guard = config.get("transfer_guard", "")
    if guard not in TRANSFER_GUARDS:
        raise ValueError(f"config.transfer_guard={guard!r}: expected one of {TRANSFER_GUARDS}")
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
        # A task may read its batches from elsewhere (distill: stored teacher targets).
        make_train_iterator = getattr(task, "train_iterator", functools.partial(pipeline.train_iterator, config.data))
        train_iter = make_train_iterator(seed=config.seed, batch_size=local_batch)

        ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints,
                                       save_interval_steps=config.checkpoint_every)
        start_step = ckpt.latest_step()
        if start_step is not None:
            state = ckpt.restore(abstract, data_iterator=train_iter)
            logging.info("resumed from step %d", start_step)
            diagnostics.log_param_overview(state.params, f"restored parameters (step {start_step})")
        else:
            state = jax.jit(init_state, out_shardings=shardings)(jax.random.PRNGKey(config.seed))
            diagnostics.log_param_overview(state.params, "initialised parameters")
            for source in init_sources(config, task):
                state = state.replace(params=init_from.restore_subtrees(state.params, source),
                                      batch_stats=init_from.restore_batch_stats(state.batch_stats, source))
            if config.optim.ema_decay:  # the average starts from the restored weights
                state = state.replace(opt_state=ema.restart(state.opt_state, state.params))
            start_step = 0

        # ------------------------------------------------------------ steps
        train_step = jax.jit(make_train_step(task, tx, schedule, config.get("grad_accum_steps", 1)),
                             in_shardings=(shardings, batch_sh), out_shardings=(shardings, sharding.replicated(mesh)),
                             donate_argnums=(0,))
        predict = jax.jit(task.predict, in_shardings=(shardings.params, shardings.batch_stats, batch_sh))
        evaluate = getattr(task, "evaluate", None)  # a task without one is evaluated by its training loss only

        # ------------------------------------------------------------ loop
        writer = metrics_lib.MetricWriter(workdir, resume_step=start_step)
        progress = metrics_lib.Progress(config.total_steps, start_step, config.batch_size)
        pending, preempted = [], False
        profiler = diagnostics.Profiler(workdir, start_step + 2, config.get("profile_steps", 0))
        with StopOnSigterm() as sigterm, profiler:
            for step in range(start_step + 1, config.total_steps + 1):
                batch = pipeline.make_global(next(train_iter), batch_sh)
                profiler.before(step)
                with jax.transfer_guard(guard) if guard else contextlib.nullcontext():  # config.transfer_guard
                    state, step_metrics = train_step(state, batch)
                profiler.after(step, state)
                pending.append(step_metrics)
                if nonfinite == "stop" and int(step_metrics["skipped"]):
                    _stop_on_nonfinite(step, pending, writer, progress, ckpt)
                if step % config.log_every == 0 or step == config.total_steps:
                    summary = metrics_lib.reduce(jax.device_get(pending))
                    pending = []
                    writer.write(step, dict(summary, clips_per_s=progress.throughput(step)))
                    progress.update(step, summary)
                    if summary["skipped"]:
                        logging.warning("%d step(s) up to step %d skipped: non-finite loss or gradient (params "
                                        "unchanged; see 'skipped' in metrics.jsonl)", summary["skipped"], step)
                if evaluate and config.eval_every and step % config.eval_every == 0 and step != config.total_steps:
                    _log_eval(writer, step, evaluate(state, predict, mesh))
                    if config.optim.ema_decay:
                        _log_eval(writer, step, evaluate(_with_ema_weights(state), predict, mesh), "eval_ema")
                preempted = sigterm.agreed()
                stopping = step == stop_after or preempted
                ckpt.save(step, state, data_iterator=train_iter, force=stopping or step == config.total_steps)
                if stopping:
                    break
            progress.close()
            ckpt.wait()
        if preempted or (stop_after and stop_after < config.total_steps):
            writer.close()
            ckpt.close()
            if preempted:
                logging.warning("SIGTERM: step %d checkpointed in %s; exiting with code %d", step, ckpt.directory,
                                PREEMPTED_EXIT_CODE)
                raise Preempted(step, ckpt.directory)
            return None

        # ------------------------------------------------------------ final evaluation
        result = {"steps": config.total_steps, "train": writer.last("loss", "accuracy"),
                  "skipped_steps": int(sum(row.get("skipped", 0) for row in writer.rows))}
        predictions = None
        if evaluate:
            result["eval"] = evaluate(state, predict, mesh)
            _log_eval(writer, config.total_steps, result["eval"])
            predictions = result["eval"].pop("predictions", None)
            if config.optim.ema_decay:
                result["eval_ema"] = evaluate(_with_ema_weights(state), predict, mesh)
                result["eval_ema"].pop("predictions", None)
                _log_eval(writer, config.total_steps, result["eval_ema"], "eval_ema")
        writer.close()
        ckpt.close()
    result["wall_s"] = round(time.perf_counter() - start_time, 1)
    if distributed.is_main():  # one writer: the workdir is shared; the summary last, as it marks the stage done
        if predictions is not None:
            atomic_write(os.path.join(workdir, PREDICTIONS), lambda f: np.savez(f, **predictions))
        with open(os.path.join(workdir, SUMMARY), "w") as f:
            json.dump(result, f, indent=1)
    return result


def _stop_on_nonfinite(step, pending, writer, progress, ckpt):
    """config.nonfinite='stop': logs the step's metrics, lets a checkpoint being written finish, and raises."""
    summary, bad = metrics_lib.reduce(jax.device_get(pending)), jax.device_get(pending[-1])
    writer.write(step, summary)
    progress.close()
    writer.close()
    ckpt.close()  # waits: an asynchronous save of an earlier (finite) step is committed, not cut short
    last = ckpt.latest_step()
    raise FloatingPointError(
        f"step {step}: non-finite loss or gradient (loss {bad['loss']}, grad_norm {bad['grad_norm']}); the "
        f"step was not applied and config.nonfinite='stop' ends the run. Last good checkpoint: "
        + (f"step {last} in {ckpt.directory}" if last is not None else f"none in {ckpt.directory}")
        + " (a restart resumes there; config.nonfinite='skip' steps over such batches)")


def _log_eval(writer, step, result, prefix: str = "eval"):
    writer.write(step, {f"{prefix}/{k}": v for k, v in result.items() if k != "predictions"})


def _with_ema_weights(state):
    """The state with the moving average of the weights (train/ema.py) in place of the weights."""
    return state.replace(params=ema.averaged(state.opt_state))


def init_sources(config, task) -> list:
    """The `init_from` sources to restore; a single source without a mapping takes the task's default mapping."""
    out = []
    for name, source in init_from.init_sources(config.init_from).items():
        source = dict(source)
        if not source["checkpoint"]:
            if name:
                logging.warning("init_from.%s.checkpoint is empty: its subtrees keep their initialisation", name)
            continue
        if not source.get("mapping"):
            if name:
                raise ValueError(f"config.init_from.{name}.mapping is empty: name the subtrees to restore "
                                 "({our path: saved path})")
            source["mapping"] = task.init_from_mapping
        out.append(source)
    return out

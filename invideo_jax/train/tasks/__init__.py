"""Training objectives. A task owns its model and exposes:

  init_variables(rng, batch) -> Flax variables (boxed with logical names)
  loss(params, model_state, batch, rng) -> (loss, (metrics, new_model_state))
  predict(params, model_state, batch) -> dict of per-example outputs (evaluation)
  init_from_mapping -> default `init_from.mapping` when restoring an earlier stage (may be empty)
"""
import importlib

TASKS = {
    "videomae_pretrain": "invideo_jax.train.tasks.videomae_pretrain",
    "classification": "invideo_jax.train.tasks.classification",
}


def get_task(config):
    if config.task not in TASKS:
        raise ValueError(f"config.task={config.task!r} is unknown; expected one of {sorted(TASKS)}")
    return importlib.import_module(TASKS[config.task]).Task(config)

"""Training objectives. A task owns its model and exposes:

  init_variables(rng, batch) -> Flax variables (boxed with logical names)
  loss(params, model_state, batch, rng) -> (loss, (metrics, new_model_state))
  predict(params, model_state, batch) -> dict of per-example outputs (evaluation)
  init_from_mapping -> default `init_from.mapping` when restoring an earlier stage (may be empty)
  evaluate(state, predict, mesh) -> dict of metrics over the eval split (optional); it may hold `predictions`,
    a dict of per-video arrays, which the trainer writes to the stage's predictions.npz
  train_iterator(*, seed, batch_size, process_index=None, process_count=None) -> this host's training batches,
    resumable (optional; default: the data pipeline's `train_iterator` over `config.data`)

and, for inference (invideo_jax/inference.py; optional, a task without it cannot be loaded for inference):
  encode_video(params, model_state, video) -> {'features': (B, D), 'tokens': (B, t, n, D)} per normalised clip
  video-text tasks: tokenizer(), encode_text(params, model_state, ids) -> (N, E), logit_scale(params) -> float

`model_state` is the BatchNorm statistics collection ({} for models without BatchNorm).
"""
import importlib

TASKS = {
    "videomae_pretrain": "invideo_jax.train.tasks.videomae_pretrain",
    "classification": "invideo_jax.train.tasks.classification",
    "videotext": "invideo_jax.train.tasks.videotext",
    "align": "invideo_jax.train.tasks.align",
    "distill": "invideo_jax.train.tasks.distill",
    "videochat2_qformer": "invideo_jax.train.tasks.videochat_qformer",
    "videochat2": "invideo_jax.train.tasks.videochat",
    "language_model": "invideo_jax.train.tasks.language_model",
}


def model_variables(params, batch_stats) -> dict:
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def apply_model(model, params, batch_stats, *args, rng, **kwargs):
    """Training-mode apply with dropout from `rng`; returns (outputs, batch_stats updated if the model has any)."""
    variables = model_variables(params, batch_stats)
    if not batch_stats:
        return model.apply(variables, *args, train=True, rngs={"dropout": rng}, **kwargs), batch_stats
    out, updated = model.apply(variables, *args, train=True, rngs={"dropout": rng}, mutable=["batch_stats"],
                               **kwargs)
    return out, updated["batch_stats"]


def get_task(config):
    if config.task not in TASKS:
        raise ValueError(f"config.task={config.task!r} is unknown; expected one of {sorted(TASKS)}")
    return importlib.import_module(TASKS[config.task]).Task(config)

"""Exponential moving average of the weights (`config.ema_decay`, the official `--model_ema`, timm's ModelEmaV2).

After every applied optimiser step, ema = decay * ema + (1 - decay) * params; the average starts from the weights
training starts from (after `init_from`). It lives in the train state (`TrainState.ema_params`), so it is sharded
like the parameters, checkpointed with them and restored on resume; the trainer evaluates it beside the weights
(`eval_ema/...` metrics, `summary.json` 'eval_ema'). BatchNorm statistics are not averaged.
"""
import jax
import jax.numpy as jnp


def check_decay(decay) -> float:
    """`decay` as a float in [0, 1); raises naming config.ema_decay otherwise (0 turns the average off)."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
        raise ValueError(f"config.ema_decay={decay!r} must be a number in [0, 1) (0: no weight average)")
    return float(decay)


def update(ema, params, decay: float):
    """One step of the average, in the average's dtype."""
    return jax.tree.map(lambda e, p: (decay * e + (1 - decay) * p.astype(e.dtype)).astype(e.dtype), ema, params)


def start(params):
    """The average before any step: a copy of `params` (own buffers, same shardings)."""
    return jax.tree.map(jnp.copy, params)

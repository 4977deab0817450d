"""Exponential moving average of the weights (`optim.ema_decay`, the official `--model_ema`, timm's ModelEmaV2).

After every applied optimiser step, ema = decay * ema + (1 - decay) * params. The average is the state of the last
transformation of the optimiser (`track`), so it is sharded like the parameters, checkpointed with the optimiser
state, restored on resume and left unchanged by a skipped (non-finite) step; a run without it keeps the optimiser
state it always had. It starts from the weights training starts from (`restart` after `init_from`). The trainer
evaluates it beside the weights (`eval_ema/...` metrics, `summary.json` 'eval_ema'). BatchNorm statistics are not
averaged.
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class EmaState(NamedTuple):
    params: Any  # the average, in the parameters' dtypes


def update(average, params, decay: float):
    """One step of the average, in the average's dtype."""
    return jax.tree.map(lambda e, p: (decay * e + (1 - decay) * p.astype(e.dtype)).astype(e.dtype), average, params)


def track(decay: float) -> optax.GradientTransformation:
    """Passes the updates through and moves its state towards the parameters they lead to (params + updates)."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay < 1:
        raise ValueError(f"optim.ema_decay={decay!r} must be in (0, 1) (0 turns the average off)")

    def init(params):  # abstract parameters (shapes only, for shardings) have no values to copy
        return EmaState(jax.tree.map(lambda p: jnp.zeros(p.shape, p.dtype) if isinstance(p, jax.ShapeDtypeStruct)
                                     else jnp.copy(p), params))

    def update_fn(updates, state, params):
        return updates, EmaState(update(state.params, optax.apply_updates(params, updates), decay))

    return optax.GradientTransformation(init, update_fn)


def _is_state(node) -> bool:
    return isinstance(node, EmaState)


def averaged(opt_state):
    """The average held in `opt_state`, or None when the optimiser keeps none."""
    found = [node.params for node in jax.tree.leaves(opt_state, is_leaf=_is_state) if _is_state(node)]
    return found[0] if found else None


def restart(opt_state, params):
    """`opt_state` with the average set to (a copy of) `params`."""
    return jax.tree.map(lambda node: EmaState(jax.tree.map(jnp.copy, params)) if _is_state(node) else node,
                        opt_state, is_leaf=_is_state)

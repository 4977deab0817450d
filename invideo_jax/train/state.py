"""The train state: one pytree holding everything a step reads and writes."""
from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    """step, parameters, optimiser state, BatchNorm statistics ({} if none), RNG key (raw uint32), moving average
    of the parameters ({} without `config.ema_decay`; train/ema.py)."""

    step: jax.Array
    params: Any
    opt_state: Any
    batch_stats: Any
    rng: jax.Array
    ema_params: Any = flax.struct.field(default_factory=dict)

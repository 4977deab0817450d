"""The train state: one pytree holding everything a step reads and writes."""
from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    """step, parameters, optimiser state, BatchNorm statistics ({} if none), RNG key (raw uint32)."""

    step: jax.Array
    params: Any
    opt_state: Any
    batch_stats: Any
    rng: jax.Array

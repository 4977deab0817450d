"""Token masks with fixed counts, reproducible from a PRNG key. Convention: True = masked (dropped)."""
import jax
import jax.numpy as jnp
import numpy as np


def tube_num_masked(grid, ratio: float) -> int:
    t, h, w = grid
    return t * int(ratio * h * w)


def tube_mask(key, batch: int, grid, ratio: float) -> jax.Array:
    """One random spatial mask of exactly int(ratio*h*w) patches per example, repeated over every temporal slot."""
    t, h, w = grid
    spatial = _exact_random_mask(key, batch, h * w, int(ratio * h * w))
    return jnp.tile(spatial, (1, t))


def random_mask(key, batch: int, num_tokens: int, ratio: float) -> jax.Array:
    """Exactly int(ratio*num_tokens) masked tokens per example, chosen uniformly."""
    return _exact_random_mask(key, batch, num_tokens, int(ratio * num_tokens))


def _exact_random_mask(key, batch, num_tokens, num_masked):
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key, (batch, num_tokens)), axis=1), axis=1)
    return ranks < num_masked


def running_cell_patterns(grid, ratio: float = 0.5) -> np.ndarray:
    """VideoMAE V2 decoder masks: (phases, t*h*w) for every phase of a 2x2 cell whose mask runs one step per frame."""
    t, h, w = grid
    if h % 2 or w % 2:
        raise ValueError(f"running-cell masking needs an even spatial grid, got {h}x{w}")
    num_masked = int(4 * ratio)
    if not 0 < num_masked < 4:
        raise ValueError(f"running-cell ratio must mask 1 to 3 of 4 cell entries, got ratio {ratio}")
    queue = np.array([1] * num_masked + [0] * (4 - num_masked), bool)
    patterns = []
    for phase in range(4):
        frames = []
        for frame in range(t):
            cell = queue[(np.arange(4) + phase + frame + 1) % 4].reshape(2, 2)
            frames.append(np.tile(cell, (h // 2, w // 2)))
        patterns.append(np.stack(frames).reshape(-1))
    return np.stack(patterns)


def running_cell_num_masked(grid, ratio: float = 0.5) -> int:
    t, h, w = grid
    return int(4 * ratio) * (t * h * w // 4)


def running_cell_mask(key, batch: int, grid, ratio: float = 0.5) -> jax.Array:
    """One of the four running-cell phases per example (exactly ratio of each frame masked)."""
    patterns = jnp.asarray(running_cell_patterns(grid, ratio))
    return patterns[jax.random.randint(key, (batch,), 0, patterns.shape[0])]


def split_indices(mask: jax.Array, num_masked: int):
    """(kept, masked) token indices, each ascending, with static counts: the order `x[~mask]` / `x[mask]` gives."""
    order = jnp.argsort(mask, axis=1, stable=True)
    keep = mask.shape[1] - num_masked
    return order[:, :keep], order[:, keep:]

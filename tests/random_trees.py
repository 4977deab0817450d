"""Random values shaped as a model's variables, drawn in numpy from their shapes: no initialiser is compiled."""
import jax
import numpy as np


def draw_like(tree, seed: int = 0, std: float = 1.0, unit_norms: bool = False):
    """Numpy arrays of the shapes and dtypes of `tree`'s leaves (arrays or ShapeDtypeStructs): N(0, std), drawn in
    leaf order; with `unit_norms`, the leaves named 'scale' or 'var' (norm scales, BatchNorm variances)
    1 + |N(0, std)|."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        value = rng.normal(0, std, leaf.shape)
        if unit_norms and jax.tree_util.keystr(path[-1:]).strip("[]'") in ("scale", "var"):
            value = 1 + np.abs(value)
        return value.astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, tree)

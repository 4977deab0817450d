"""Position-embedding tables: PyTorch-style resampling to another token grid (numpy, for converters and restores)."""
import math

import numpy as np

POS_EMBED_NAMES = ("pos_embed", "positional_embedding")
_CUBIC_A = -0.75  # PyTorch's bicubic kernel, as used by the original pos_embed interpolation


def resample_pos_embed(pe, src_grid, dst_grid) -> np.ndarray:
    """(..., prefix + t*h*w, D) -> (..., prefix + t'*h'*w', D): temporal linear, then spatial bicubic.

    Matches PyTorch's `interpolate(align_corners=False)` ('linear' over time, 'bicubic' over space), as the
    original code uses; leading tokens (cls) beyond the grid are kept.
    """
    pe = np.asarray(pe)
    (t, h, w), (t2, h2, w2) = src_grid, dst_grid
    prefix = pe.shape[-2] - t * h * w
    if prefix < 0:
        raise ValueError(f"pos_embed with {pe.shape[-2]} tokens cannot hold a {src_grid} grid")
    grid = pe[..., prefix:, :].astype(np.float64).reshape(*pe.shape[:-2], t, h, w, pe.shape[-1])
    grid = np.einsum("Tt,...thwd->...Thwd", _interp_matrix(t, t2, cubic=False), grid)
    grid = np.einsum("Hh,...thwd->...tHwd", _interp_matrix(h, h2, cubic=True), grid)
    grid = np.einsum("Ww,...thwd->...thWd", _interp_matrix(w, w2, cubic=True), grid)
    grid = grid.reshape(*pe.shape[:-2], t2 * h2 * w2, pe.shape[-1]).astype(pe.dtype)
    return np.concatenate([pe[..., :prefix, :], grid], axis=-2)


def _interp_matrix(n_in: int, n_out: int, cubic: bool) -> np.ndarray:
    """(n_out, n_in) weights of PyTorch's 1-D linear or cubic (a=-0.75) interpolation, border clamped."""
    x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(x).astype(int)
    f = x - base
    if cubic:
        a = _CUBIC_A
        near = lambda d: ((a + 2) * d - (a + 3)) * d * d + 1
        far = lambda d: ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        weights = np.stack([far(f + 1), near(f), near(1 - f), far(2 - f)], axis=-1)
        taps = base[:, None] + np.arange(-1, 3)
    else:
        weights = np.stack([1 - f, f], axis=-1)
        taps = base[:, None] + np.arange(2)
    matrix = np.zeros((n_out, n_in))
    np.add.at(matrix, (np.arange(n_out)[:, None], np.clip(taps, 0, n_in - 1)), weights)
    return matrix


def resamplable(rel: str, src_shape: tuple, dst_shape: tuple, src_grid, dst_grid) -> bool:
    """Whether a pos_embed leaf (path ending `rel`) of `src_shape` resamples from `src_grid` to `dst_grid` into
    `dst_shape`."""
    if rel.rsplit("/", 1)[-1] not in POS_EMBED_NAMES or not src_grid or not dst_grid:
        return False
    prefix = src_shape[-2] - math.prod(src_grid)
    return (prefix >= 0 and src_shape[:-2] == dst_shape[:-2] and src_shape[-1] == dst_shape[-1]
            and dst_shape[-2] == prefix + math.prod(dst_grid))

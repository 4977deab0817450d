"""Masks: exact counts, tube structure, reproducibility, running-cell phases, index order."""
import jax
import numpy as np
import pytest

from invideo_jax import masking


def test_tube_mask_counts_and_structure():
    grid = (8, 14, 14)
    mask = np.asarray(masking.tube_mask(jax.random.PRNGKey(0), 4, grid, 0.9))
    per_slot = mask.reshape(4, 8, 196)
    assert (per_slot.sum(-1) == int(0.9 * 196)).all()  # 176 masked, 20 visible per slot (the original's count)
    assert (per_slot == per_slot[:, :1]).all()  # the same spatial mask in every temporal slot
    assert not (per_slot[0, 0] == per_slot[1, 0]).all()  # examples differ
    assert masking.tube_num_masked(grid, 0.9) == mask[0].sum() == 8 * 176


def test_masks_reproducible_from_key():
    a = masking.tube_mask(jax.random.PRNGKey(3), 2, (2, 4, 4), 0.5)
    b = masking.tube_mask(jax.random.PRNGKey(3), 2, (2, 4, 4), 0.5)
    c = masking.tube_mask(jax.random.PRNGKey(4), 2, (2, 4, 4), 0.5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_random_mask_counts():
    mask = np.asarray(masking.random_mask(jax.random.PRNGKey(1), 16, 100, 0.75))
    assert (mask.sum(1) == 75).all()
    assert mask.mean(0).min() > 0 and mask.mean(0).max() < 1  # every position can be masked and kept


def test_running_cell_matches_the_cell_formula():
    """Phase p, frame f: cell entry i (row-major 2x2) is masked iff queue[(i + p + f + 1) % 4] with queue 1100."""
    t, h, w = 3, 4, 6
    patterns = masking.running_cell_patterns((t, h, w), 0.5).reshape(4, t, h, w)
    queue = [1, 1, 0, 0]
    for p in range(4):
        for f in range(t):
            for y in range(h):
                for x in range(w):
                    assert patterns[p, f, y, x] == queue[((y % 2) * 2 + x % 2 + p + f + 1) % 4]
    assert (patterns.reshape(4, t, -1).sum(-1) == h * w // 2).all()
    assert masking.running_cell_num_masked((t, h, w), 0.5) == t * h * w // 2
    drawn = np.asarray(masking.running_cell_mask(jax.random.PRNGKey(0), 32, (t, h, w), 0.5))
    assert all(any((d == q).all() for q in patterns.reshape(4, -1)) for d in drawn)


def test_running_cell_rejects_odd_grid():
    with pytest.raises(ValueError, match="even spatial grid"):
        masking.running_cell_patterns((2, 3, 4))


def test_split_indices_gives_boolean_index_order():
    mask = masking.tube_mask(jax.random.PRNGKey(2), 3, (2, 4, 4), 0.75)
    kept, masked = masking.split_indices(mask, masking.tube_num_masked((2, 4, 4), 0.75))
    for b in range(3):
        m = np.asarray(mask[b])
        np.testing.assert_array_equal(kept[b], np.flatnonzero(~m))  # what torch x[~mask] selects, in order
        np.testing.assert_array_equal(masked[b], np.flatnonzero(m))

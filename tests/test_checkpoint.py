"""Orbax checkpoints: round trip, resharding, retention, data position, refusal, atomicity, subtree restore."""
import os

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from invideo_jax.models.posembed import resample_pos_embed
from invideo_jax.train import checkpoint
from invideo_jax.train.init_from import restore_batch_stats, restore_subtrees
from invideo_jax.train.state import TrainState


def make_state(step=0, seed=0, params=None) -> TrainState:
    rng = np.random.default_rng(seed)
    params = params or {"encoder": {"pos_embed": jnp.asarray(rng.normal(size=(1, 17, 8)), jnp.float32),
                                    "blocks_0": {"kernel": jnp.asarray(rng.normal(size=(8, 16)), jnp.bfloat16)}},
                        "head": {"kernel": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)}}
    return TrainState(step=jnp.asarray(step), params=params, opt_state=optax.adam(1e-3).init(params),
                      batch_stats={}, rng=jax.random.key_data(jax.random.key(seed)))


def abstract(tree, sharding_of=lambda x: x.sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_of(x)), tree)


def assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def step_dirs(directory) -> list:
    return sorted(os.listdir(directory))


def test_round_trip_is_bitwise_and_keeps_the_last_k(tmp_path):
    ckpt = checkpoint.Checkpointer(tmp_path, max_to_keep=2, save_interval_steps=2)
    states = {step: make_state(step, seed=step) for step in (2, 4, 6)}
    for step, state in states.items():
        assert ckpt.save(step, state)
    assert not ckpt.save(7, states[6])  # not on the interval
    assert not ckpt.save(6, states[6], force=True)  # already saved
    ckpt.wait()
    assert ckpt.latest_step() == 6 and step_dirs(tmp_path) == ["4", "6"]
    restored = ckpt.restore(abstract(states[4]), step=4)
    assert isinstance(restored, TrainState)
    assert_bitwise_equal(restored, states[4])
    assert_bitwise_equal(ckpt.restore(abstract(states[6])), states[6])
    ckpt.close()


@pytest.mark.parametrize("mesh_shape, spec", [((8,), P(None, "x")), ((2, 4), P("x", "y"))])
def test_restore_into_a_different_sharding(tmp_path, mesh_shape, spec):
    state = make_state()
    ckpt = checkpoint.Checkpointer(tmp_path)
    ckpt.save(0, state)
    ckpt.wait()
    mesh = jax.make_mesh(mesh_shape, ("x", "y")[:len(mesh_shape)],
                         axis_types=(jax.sharding.AxisType.Auto,) * len(mesh_shape))
    sharded = lambda x: NamedSharding(mesh, spec if x.shape[-1:] == (16,) else P())
    restored = ckpt.restore(abstract(state, sharded))
    kernel = restored.params["encoder"]["blocks_0"]["kernel"]
    assert kernel.sharding == NamedSharding(mesh, spec) and len(kernel.addressable_shards) == 8
    assert kernel.addressable_shards[0].data.size == kernel.size // 8
    assert_bitwise_equal(restored, state)
    ckpt.close()


def test_data_iterator_continues_exactly(tmp_path):
    dataset = grain.MapDataset.range(100).shuffle(seed=3).map(lambda i: 2 * i).to_iter_dataset()
    expected = list(dataset)
    iterator = iter(dataset)
    seen = [next(iterator) for _ in range(7)]
    ckpt = checkpoint.Checkpointer(tmp_path)
    ckpt.save(7, make_state(7), data_iterator=iterator)
    seen += [next(iterator) for _ in range(5)]  # moves on while the save may still be running
    ckpt.wait()
    resumed = iter(dataset)
    ckpt.restore(abstract(make_state()), data_iterator=resumed)
    assert seen[:7] + [next(resumed) for _ in range(10)] == expected[:17]
    ckpt.close()


def test_non_finite_params_are_refused_and_nothing_is_written(tmp_path):
    state = make_state()
    params = {**state.params, "head": {"kernel": state.params["head"]["kernel"].at[1, 2].set(jnp.nan)}}
    ckpt = checkpoint.Checkpointer(tmp_path)
    with pytest.raises(ValueError, match="non-finite values in params head/kernel"):
        ckpt.save(0, state.replace(params=params))
    ckpt.close()
    assert [d for d in step_dirs(tmp_path) if not d.startswith("_")] == []


def test_half_written_checkpoint_is_never_latest(tmp_path, monkeypatch):
    ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
    ckpt.save(1, make_state(1, seed=1))

    async def killed_before_commit(self):  # the process dies before Orbax renames the temporary directory
        del self

    monkeypatch.setattr(ocp.path.atomicity.AtomicRenameTemporaryPath, "finalize", killed_before_commit)
    ckpt.save(2, make_state(2, seed=2))
    monkeypatch.undo()
    assert "2.orbax-checkpoint-tmp" in step_dirs(tmp_path) and "2" not in step_dirs(tmp_path)

    restarted = checkpoint.Checkpointer(tmp_path)
    assert restarted.latest_step() == 1
    assert_bitwise_equal(restarted.restore(abstract(make_state())), make_state(1, seed=1))
    restarted.save(3, make_state(3))
    restarted.close()
    assert "2.orbax-checkpoint-tmp" not in step_dirs(tmp_path)  # cleaned up on restart


def test_unwritable_directory_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match=f"{blocker}/ckpt"):
        checkpoint.Checkpointer(blocker / "ckpt")

    directory = tmp_path / "gone"
    ckpt = checkpoint.Checkpointer(directory, async_save=False)
    directory.rmdir()
    directory.write_text("")  # the directory vanished under us: saving must say where
    with pytest.raises(OSError, match=f"cannot write checkpoint step 0.*{directory}"):
        ckpt.save(0, make_state())


def test_restore_subtrees_maps_and_reshards(tmp_path):
    saved = make_state(seed=1)
    ckpt = checkpoint.Checkpointer(tmp_path / "stage1")
    ckpt.save(3, saved)
    ckpt.close()

    mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    fresh = make_state(seed=2).params
    sharding = lambda x: NamedSharding(mesh, P(None, "fsdp") if x.ndim == 2 else P())
    target = {"video": jax.tree.map(lambda x: jax.device_put(x, sharding(x)), fresh["encoder"]), "head": fresh["head"]}
    for source in (tmp_path / "stage1", tmp_path / "stage1" / "3"):
        params = restore_subtrees(target, {"checkpoint": str(source),
                                                      "mapping": {"video": "params/encoder"}})
        assert_bitwise_equal(params["video"], saved.params["encoder"])
        kernel = params["video"]["blocks_0"]["kernel"]
        assert kernel.sharding == target["video"]["blocks_0"]["kernel"].sharding and kernel.dtype == jnp.bfloat16
        assert params["head"] is target["head"]


def test_batch_stats_follow_the_restored_params(tmp_path):
    stats = {"encoder": {"blocks_0": {"bn": {"mean": jnp.arange(8.0), "var": jnp.arange(8.0) + 1}}}}
    ckpt = checkpoint.Checkpointer(tmp_path / "with_stats")
    ckpt.save(0, make_state().replace(batch_stats=stats))
    ckpt.close()
    fresh = jax.tree.map(jnp.zeros_like, stats)
    target = {"video": fresh["encoder"], "other": {"bn": {"mean": jnp.ones(3)}}}
    init_from = {"checkpoint": str(tmp_path / "with_stats"), "mapping": {"video": "params/encoder", "head": "params/head"}}
    restored = restore_batch_stats(target, init_from)
    assert_bitwise_equal(restored["video"], stats["encoder"])
    assert restored["other"] is target["other"]  # not mapped: as given
    # A checkpoint without statistics (or a model without them) leaves them as they are.
    plain = checkpoint.Checkpointer(tmp_path / "plain")
    plain.save(0, make_state())
    plain.close()
    assert restore_batch_stats(target, dict(init_from, checkpoint=str(tmp_path / "plain"))) is target
    assert restore_batch_stats({}, init_from) == {}


def test_restore_subtrees_lists_every_mismatch(tmp_path):
    ckpt = checkpoint.Checkpointer(tmp_path)
    ckpt.save(0, make_state())
    ckpt.close()
    target = {"encoder": {"pos_embed": jnp.zeros((1, 9, 8)), "blocks_0": {"kernel": jnp.zeros((8, 32))},
                          "norm": {"scale": jnp.zeros(8)}}}
    with pytest.raises(ValueError) as error:
        restore_subtrees(target, {"checkpoint": str(tmp_path), "mapping": {"encoder": "params/encoder"}})
    message = str(error.value)
    assert "encoder/pos_embed: target (1, 9, 8) vs checkpoint params/encoder/pos_embed (1, 17, 8)" in message
    assert "encoder/blocks_0/kernel: target (8, 32) vs checkpoint params/encoder/blocks_0/kernel (8, 16)" in message
    assert "encoder/norm/scale: missing in checkpoint as params/encoder/norm/scale" in message


def test_restore_subtrees_resamples_pos_embed(tmp_path):
    saved = make_state()
    ckpt = checkpoint.Checkpointer(tmp_path)
    ckpt.save(0, saved)
    ckpt.close()
    target = {"pos_embed": jnp.zeros((1, 1 + 4 * 3 * 3, 8))}
    init_from = ml_collections.ConfigDict({"checkpoint": str(tmp_path), "mapping": {"": "params/encoder"},
                                           "pos_embed_grid_src": (4, 2, 2), "pos_embed_grid_dst": (4, 3, 3)})
    params = restore_subtrees(target, init_from)
    source = np.asarray(saved.params["encoder"]["pos_embed"])
    np.testing.assert_array_equal(params["pos_embed"], resample_pos_embed(source, (4, 2, 2), (4, 3, 3)))
    np.testing.assert_array_equal(params["pos_embed"][:, 0], source[:, 0])


def test_resample_pos_embed_identity_and_linear_ramp_in_time():
    rng = np.random.default_rng(0)
    pe = rng.normal(size=(1, 1 + 4 * 3 * 5, 6)).astype(np.float32)
    np.testing.assert_allclose(resample_pos_embed(pe, (4, 3, 5), (4, 3, 5)), pe, rtol=0, atol=1e-6)

    slope, offset = rng.normal(size=6), rng.normal(size=6)
    ramp = lambda t, grid: np.broadcast_to((slope * t[:, None] + offset)[:, None, None], (len(t), *grid[1:], 6))
    for src, dst in (((8, 2, 2), (4, 3, 3)), ((4, 2, 2), (8, 3, 3))):
        coords = (np.arange(dst[0]) + 0.5) * src[0] / dst[0] - 0.5  # half-pixel centres, clamped at the ends
        expected = ramp(np.clip(coords, 0, src[0] - 1), dst).reshape(1, -1, 6)
        grid = ramp(np.arange(src[0], dtype=float), src).reshape(1, -1, 6)
        np.testing.assert_allclose(resample_pos_embed(grid, src, dst), expected, rtol=1e-12, atol=1e-12)


def test_resample_pos_embed_matches_pytorch_interpolate():
    torch = pytest.importorskip("torch")
    (t, h, w), (t2, h2, w2), dim = (4, 5, 5), (8, 7, 3), 3
    pe = np.random.default_rng(0).normal(size=(1, t * h * w, dim))
    x = torch.from_numpy(pe).reshape(1, t, h * w, dim).permute(0, 3, 2, 1).reshape(1, dim * h * w, t)
    x = torch.nn.functional.interpolate(x, size=t2, mode="linear", align_corners=False)
    x = x.reshape(1, dim, h, w, t2).permute(0, 4, 1, 2, 3).reshape(t2, dim, h, w)
    x = torch.nn.functional.interpolate(x, size=(h2, w2), mode="bicubic", align_corners=False)
    expected = x.permute(0, 2, 3, 1).reshape(1, t2 * h2 * w2, dim).numpy()
    np.testing.assert_allclose(resample_pos_embed(pe, (t, h, w), (t2, h2, w2)), expected, atol=1e-12)


def test_restore_subtrees_starts_a_head_from_chosen_classes(tmp_path):
    # a saved 5-class head by hand: kernel[d, c] = 10 d + c, bias[c] = 100 + c
    head = {"kernel": jnp.asarray([[0.0, 1, 2, 3, 4], [10, 11, 12, 13, 14]]), "bias": jnp.arange(100.0, 105)}
    ckpt = checkpoint.Checkpointer(tmp_path / "k5")
    ckpt.save(0, make_state(params={"encoder": {"norm": jnp.ones(2)}, "head": head}))
    ckpt.close()
    target = {"encoder": {"norm": jnp.zeros(2)}, "head": {"kernel": jnp.zeros((2, 3)), "bias": jnp.zeros(3)}}
    mapping = {"encoder": "params/encoder", "head": "params/head"}
    index_file = tmp_path / "mix.json"
    index_file.write_text("[4, 0, 2]")  # class j of the new head is saved class [4, 0, 2][j]
    for rows, kernel, bias in (("first", [[0, 1, 2], [10, 11, 12]], [100, 101, 102]),
                               (str(index_file), [[4, 0, 2], [14, 10, 12]], [104, 100, 102])):
        params = restore_subtrees(target, {"checkpoint": str(tmp_path / "k5"), "mapping": mapping, "head_rows": rows})
        np.testing.assert_array_equal(params["head"]["kernel"], kernel)
        np.testing.assert_array_equal(params["head"]["bias"], bias)
        np.testing.assert_array_equal(params["encoder"]["norm"], np.ones(2))
    index_file.write_text("[4, 0, 5]")  # class 5 is not in the saved head
    with pytest.raises(ValueError, match=r"head/kernel: target \(2, 3\) vs checkpoint params/head/kernel \(2, 5\)"):
        restore_subtrees(target, {"checkpoint": str(tmp_path / "k5"), "mapping": mapping, "head_rows": str(index_file)})
    index_file.write_text("[4, 0]")
    with pytest.raises(ValueError, match="selects 2 classes but the head has 3"):
        restore_subtrees(target, {"checkpoint": str(tmp_path / "k5"), "mapping": mapping, "head_rows": str(index_file)})
    with pytest.raises(ValueError, match="the mapping has no target 'head'"):
        restore_subtrees(target, {"checkpoint": str(tmp_path / "k5"), "mapping": {"encoder": "params/encoder"},
                                  "head_rows": "first"})
    with pytest.raises(ValueError, match=r"head/bias: target \(3,\) vs checkpoint params/head/bias \(5,\)"):
        restore_subtrees(target, {"checkpoint": str(tmp_path / "k5"), "mapping": mapping})  # no selection

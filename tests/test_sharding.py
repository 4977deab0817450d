"""Sharding on 8 simulated devices: FSDP memory per device (AOT), equal training on every mesh, cross-mesh restore."""
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from configs import common, internvideo2_distill, videomae_pretrain
from invideo_jax import aot, sharding
from invideo_jax.train import checkpoint, optim
from tests.compiling import FAST_COMPILE

BATCH, STEPS = 8, 3
# Width, heads and MLP split over fsdp=8 and tensor=2; scanned blocks put a `layers` axis on the block params.
ENCODER = dict(width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8, tubelet_size=2, num_frames=4,
               image_size=16, scan=True)
MESHES = {"single": ((1, 1, 1), "fsdp"), "data": ((8, 1, 1), "dp"), "fsdp": ((1, 8, 1), "fsdp"),
          "fsdp_tp": ((2, 2, 2), "fsdp_tp")}
# float32 tolerance: sharded reductions sum in another order than one device does.
RTOL, ATOL = 1e-5, 1e-6


def _mesh(config, shape, rules):
    config.mesh = dict(zip(sharding.MESH_AXES, shape))
    config.sharding_rules = rules
    return config


def vit_g_config(shape, rules):
    """VideoMAE V2 ViT-g/14 pre-training at full width (1408) but depth 2, on 4x28x28 clips: fast to compile."""
    config = videomae_pretrain.get_config(f"vit_g,v2=True,scan=True,frames=4,batch={BATCH}")
    config.model.kwargs.encoder.update(dict(depth=2, image_size=28))
    config.data.crop_size = 28
    return _mesh(config, shape, rules)


def classifier_config(shape, rules):
    config = common.train_config("classification", dict(ENCODER, pool="mean", num_classes=8, drop_path=0.1))
    config.data.update(dict(num_frames=4, crop_size=16, num_classes=8))
    config.batch_size, config.total_steps = BATCH, 10
    config.optim.update(dict(base_lr=1e-3, lr_batch_denom=0, warmup_steps=0))
    return _mesh(config, shape, rules)


def argument_bounds(config, abstract):
    """A step's argument bytes per device lie between its state shards and those plus its batch shard."""
    state = aot.state_bytes(abstract)[1]
    batch = aot.abstract_batch(config, sharding.batch_sharding(abstract.step.sharding.mesh))
    return state, state + aot.state_bytes(batch)[1]


def test_fsdp_puts_an_eighth_of_the_train_state_on_each_device():
    config = vit_g_config((1, 8, 1), "fsdp")
    compiled, abstract = aot.compile_train_step(config, FAST_COMPILE)
    total, per_device = aot.state_bytes((abstract.params, abstract.opt_state))
    assert total > 700e6  # ~62M parameters, each with Adam's mu and nu
    # Replicated: norms, the MLP hidden and head biases (0.6% of the total here).
    assert total / 8 <= per_device <= total / 8 * 1.02
    low, high = argument_bounds(config, abstract)
    assert low <= compiled.memory_analysis().argument_size_in_bytes <= high


def distill_config(shape, rules):
    """InternVideo2 stage 1 (the 1B student, the 6B image teacher and the g/14 video teacher) at full width but depth
    2, on 4-frame 28x28 clips (2x2 patches; the student and the image teacher see every 2nd frame): fast to compile."""
    config = internvideo2_distill.get_config(f"1B,frames=2,batch={BATCH},image_layers=1,video_layers=1")
    for part in ("student", "teacher_image", "teacher_video"):
        config.model.kwargs[part].update(dict(depth=2, image_size=28))
    config.data.crop_size = 28
    return _mesh(config, shape, rules)


def leaves_under(tree, prefix):
    return [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
            if f"/{prefix}/" in "/" + jax.tree_util.keystr(path, simple=True, separator="/")]


def test_fsdp_shards_the_internvideo2_student_and_frozen_teachers_have_no_optimiser_state():
    config = distill_config((1, 8, 1), "fsdp")
    _, abstract = aot.lower_train_step(config)  # lowered, not compiled (compiling takes ~30 s here)
    # The student (bf16 compute, float32 parameters) with its AdamW mu and nu: 1/8 on each device.
    total, per_device = aot.state_bytes(leaves_under((abstract.params, abstract.opt_state), "student"))
    assert total > 500e6  # ~50M parameters, each with mu and nu
    assert total / 8 <= per_device <= total / 8 * 1.02
    for teacher in ("teacher_image", "teacher_video"):
        assert not leaves_under(abstract.opt_state, teacher)  # frozen: no optimiser state at all
        total, per_device = aot.state_bytes(leaves_under(abstract.params, teacher))
        assert total / 8 <= per_device <= total / 8 * 1.02
    # AdamW's two float32 moments cover exactly the trainable parameters (the student and its heads).
    trainable = sum(int(np.prod(row.shape)) for row in optim.describe(abstract.params, config.optim)
                    if not row.frozen)
    moments = [leaf for leaf in jax.tree.leaves(abstract.opt_state) if leaf.ndim]
    assert aot.state_bytes(moments)[0] == 2 * 4 * trainable


def test_data_parallel_keeps_the_whole_train_state_on_each_device(runs):
    _, abstract = aot.lower_train_step(vit_g_config((8, 1, 1), "dp"))
    total, per_device = aot.state_bytes((abstract.params, abstract.opt_state))
    assert per_device == total > 700e6
    _, _, abstract, memory = runs["data"]  # the compiled classifier step on data=8
    total, per_device = aot.state_bytes(abstract)
    low, high = argument_bounds(classifier_config(*MESHES["data"]), abstract)
    assert per_device == total == low <= memory["argument_size_in_bytes"] <= high


def initial_state(abstract):
    """A random train state in host memory, the same for every mesh (Adam's moments and counts start at zero)."""
    rng = np.random.default_rng(0)
    return abstract.replace(
        step=np.zeros((), np.int32), rng=np.array([0, 1], np.uint32),
        params=jax.tree.map(lambda a: (0.2 * rng.standard_normal(a.shape)).astype(a.dtype), abstract.params),
        opt_state=jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract.opt_state))


def random_batches():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 8, (STEPS, BATCH)).astype(np.int32)
    return [{"video": rng.normal(size=(BATCH, 4, 16, 16, 3)).astype(np.float32), "label": label,
             "bad": np.zeros(BATCH, np.int32), "targets": np.eye(8, dtype=np.float32)[label]} for label in labels]


@pytest.fixture(scope="module")
def runs():
    """Per mesh: (losses, state after STEPS steps, abstract state, memory stats), same initial state and batches."""
    initial, out = None, {}
    for name, (shape, rules) in MESHES.items():
        compiled, abstract = aot.compile_train_step(classifier_config(shape, rules), FAST_COMPILE)
        initial = initial_state(abstract) if initial is None else initial
        state = jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), initial, abstract)
        batch_sh = sharding.batch_sharding(abstract.step.sharding.mesh)
        losses = []
        for batch in random_batches():
            state, metrics = compiled(state, jax.device_put(batch, batch_sh))
            losses.append(float(metrics["loss"]))
        out[name] = np.array(losses), state, abstract, aot.memory_stats(compiled)
    out["initial"] = initial
    return out


@pytest.mark.parametrize("name", ["data", "fsdp", "fsdp_tp"])
def test_sharded_training_equals_one_device(runs, name):
    losses, state, _, _ = runs[name]
    ref_losses, ref_state, _, _ = runs["single"]
    np.testing.assert_allclose(losses, ref_losses, rtol=RTOL)
    for tree, ref in [(state.params, ref_state.params), (state.opt_state, ref_state.opt_state)]:
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL), tree, ref)
    assert int(state.step) == STEPS
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), ref_state.params,
                         runs["initial"].params)
    assert min(jax.tree.leaves(moved)) > 1e-4  # every parameter trained


def test_checkpoint_restores_into_other_meshes(tmp_path, runs):
    _, state, _, _ = runs["fsdp"]
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
    ckpt.save(STEPS, state, force=True)
    ckpt.wait()
    for name in ("fsdp_tp", "single"):
        abstract = runs[name][2]
        restored = ckpt.restore(abstract)
        jax.tree.map(np.testing.assert_array_equal, restored, state)
        assert jax.tree.all(jax.tree.map(lambda x, a: x.sharding == a.sharding, restored, abstract))
    fc1 = runs["fsdp_tp"][2].params["transformer"]["blocks"]["mlp"]["fc1"]["kernel"]
    assert fc1.sharding.spec == P(None, "fsdp", "tensor")  # (layers, embed, mlp)
    ckpt.close()


def test_fsdp_shards_params_and_adam_moments_alike(runs):
    _, state, abstract, _ = runs["fsdp"]
    specs = {jax.tree_util.keystr(path, simple=True, separator="/"): leaf.sharding.spec
             for path, leaf in jax.tree_util.tree_leaves_with_path(abstract.params)}
    assert specs["transformer/blocks/attn/qkv/kernel"] == P(None, "fsdp", None, None, None)
    assert specs["transformer/blocks/mlp/fc2/kernel"] == P(None, None, "fsdp")
    assert all("fsdp" in spec for path, spec in specs.items() if path.endswith("kernel"))
    assert sum("fsdp" in spec for spec in specs.values()) == 9  # the 6 kernels and 3 biases with an embed axis
    for moment in ("mu", "nu"):
        moments = optax.tree_utils.tree_get(abstract.opt_state, moment)
        assert jax.tree.all(jax.tree.map(lambda m, p: m.sharding == p.sharding, moments, abstract.params))
    # The compiled step keeps the state in these shardings.
    assert jax.tree.all(jax.tree.map(lambda x, a: x.sharding == a.sharding, state, abstract))


class FakeDevice:
    """What mesh construction reads from a device; `slice_index` only where given (TPU), as on real devices."""
    platform = device_kind = "cpu"

    def __init__(self, id, process_index, slice_index=None):
        self.id, self.process_index = id, process_index
        if slice_index is not None:
            self.slice_index = slice_index

    def __repr__(self):
        return f"FakeDevice({self.id})"


def fake_slices(*counts, by="slice_index"):
    """Devices of len(counts) granules, listed interleaved (granule of device i: i % n) so order cannot group them."""
    owners = sorted((i, g) for g, count in enumerate(counts) for i in range(g, len(counts) * count, len(counts)))
    return [FakeDevice(i, process_index=g, slice_index=g if by == "slice_index" else None) for i, g in owners]


def granule_of(mesh, attr="slice_index"):
    return np.vectorize(lambda d: getattr(d, attr))(mesh.devices)


@pytest.mark.parametrize("sizes, shape, dcn_axis", [
    (dict(data=-1, fsdp=2, dcn_data=2), (4, 2, 1), 0),           # data parallel across 2 slices of 2 x 2
    (dict(data=1, fsdp=-1, dcn_fsdp=2), (1, 8, 1), 1),           # FSDP over both slices
    (dict(data=-1, tensor=2, dcn_data=2), (4, 1, 2), 0),
])
def test_dcn_sizes_multiply_mesh_axes_and_slices_form_their_major_part(sizes, shape, dcn_axis):
    devices = fake_slices(4, 4)
    mesh = sharding.make_mesh(sizes, devices)
    assert tuple(mesh.shape.values()) == shape and mesh.axis_names == sharding.MESH_AXES
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 3
    assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
    slices = np.moveaxis(granule_of(mesh), dcn_axis, 0)
    half = shape[dcn_axis] // 2
    assert (slices[:half] == 0).all() and (slices[half:] == 1).all()


def test_processes_are_the_granules_where_devices_have_no_slice_index():
    mesh = sharding.make_mesh(dict(data=1, fsdp=-1, tensor=2, dcn_fsdp=2), fake_slices(4, 4, by="process"))
    assert tuple(mesh.shape.values()) == (1, 4, 2)
    processes = granule_of(mesh, "process_index")
    assert (processes[:, :2] == 0).all() and (processes[:, 2:] == 1).all()


def test_config_mesh_with_dcn_fields_on_one_process():
    config = common.train_config("classification", ENCODER)
    assert set(config.mesh) == set(sharding.MESH_AXES + sharding.DCN_FIELDS)
    mesh = sharding.make_mesh(config.mesh)  # dcn_* = 1: the single-slice mesh over the 8 CPU devices
    assert tuple(mesh.shape.values()) == (8, 1, 1) and list(mesh.devices.flat) == jax.devices()
    config.mesh.dcn_data = 2  # one process, no slice_index: one granule
    with pytest.raises(ValueError, match=r"mesh.dcn_data=2 needs 2 granules; the devices form 1 \(grouped by process"):
        sharding.make_mesh(config.mesh)


@pytest.mark.parametrize("sizes, counts, message", [
    (dict(dcn_data=0), (4, 4), r"mesh.dcn_data must be a positive integer"),
    (dict(dcn_tensor=-1), (4, 4), r"mesh.dcn_tensor must be a positive integer"),
    (dict(dcn_dta=2), (4, 4), r"unknown mesh fields \['dcn_dta'\]"),
    (dict(dcn_data=2, dcn_fsdp=2), (4, 4), r"mesh.dcn_data=2 x mesh.dcn_fsdp=2 needs 4 granules; the devices form 2 "
                                           r"\(grouped by slice\)"),
    (dict(data=-1, fsdp=3, dcn_data=2), (4, 4), r"does not divide 4 devices per slice"),
    (dict(data=2, dcn_data=2), (4, 4), r"uses 2 of the 4 devices per slice; with mesh.dcn_data=2 it must use all"),
    (dict(dcn_data=2), (3, 5), r"unequal numbers of devices \[3, 5\]"),
    (dict(data=-1), (4, 4), r"devices span 2 slices: .*--config.mesh.dcn_data=2"),
])
def test_bad_hybrid_mesh_sizes_raise_clear_errors(sizes, counts, message):
    with pytest.raises(ValueError, match=message):
        sharding.make_mesh(sizes, fake_slices(*counts))

"""Pre-computed teacher targets (InternVideo2 stage 1): what the cache holds for clip (example i, view k) equals what
the teachers give online for the clip replayed from the seed [seed, i, k] with the mask drawn from mask_key(seed, i,
k) (float32 storage to 1e-6; float16 storage is exactly its rounding), and so does the student's loss; reruns skip
complete shards and never use a half-written one; mismatched settings and missing inputs are named; the trainer
trains from the cache with a teacher-free state, resumes, and its student restores as stage 2 restores it."""
import math
import os
import shutil

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import internvideo2_distill
from invideo_jax import precompute_targets
from invideo_jax.data import pipeline, synthetic, target_cache
from invideo_jax.models.distill import Distiller
from invideo_jax.train import trainer
from invideo_jax.train.init_from import restore_subtrees
from invideo_jax.train.tasks import get_task
from invideo_jax.train.tasks.distill import TEACHERS, distill_objective, stored_teacher, swap_layer_axis
from test_distill import MODEL, random_params, tiny_config

SEED, VIEWS, SHARD_SIZE = 3, 2, 2  # 4 examples: 2 shards of 2 examples x 2 views
ONLINE = jax.jit(Distiller(**MODEL).apply, static_argnames="train")


def config_for(paths, cache: str = "", dtype: str = "float32"):
    """The tiny distillation config with random augmentation (so that a wrong replay shows), training from a cache
    or with both teachers restored."""
    c = tiny_config(paths["data"], paths["image_teacher"], paths["video_teacher"])
    c.data.update(dict(train_crop="rrc", flip=True))
    c.seed = SEED
    c.teacher_targets, c.teacher_targets_dtype = "", dtype
    if cache:
        internvideo2_distill.train_from_targets(c, cache)
    return c


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Videos, the teachers' checkpoints and the float32 cache of 4 examples x 2 views."""
    root = tmp_path_factory.mktemp("targets")
    paths = {name: str(root / name) for name in ("data", "image_teacher", "video_teacher", "cache")}
    synthetic.write_dataset(paths["data"], num_train=4, num_val=2, num_frames=16, size=40, seed=0)
    params = random_params()
    ocp.PyTreeCheckpointer().save(paths["image_teacher"], {"params": params["teacher_image"]})
    ocp.PyTreeCheckpointer().save(paths["video_teacher"], {"params": {"encoder": params["teacher_video"]}})
    written = precompute_targets.precompute(config_for(paths), paths["cache"], VIEWS, SHARD_SIZE)
    assert written == [0, 1]
    return paths, params


def cache_of(paths, directory=None):
    task = get_task(config_for(paths, cache=directory or paths["cache"]))
    return target_cache.open_cache(task.targets_dir, task.targets_fingerprint())


def replayed_clip(paths, index, view, seed=SEED):
    config = config_for(paths)
    example = pipeline.TrainExample(pipeline.make_source(config.data, "train"), config.data)
    return example(index, np.random.default_rng([seed, index, view]))["video"][None]


def online(params, video, index, view):
    key = precompute_targets.mask_key(SEED, index, view)[None]
    return ONLINE({"params": params}, video, train=True, mask_keys=key, rngs={"dropout": jax.random.PRNGKey(1)})


# ----------------------------------------------------------------------------------------------------------
# what the cache holds
# ----------------------------------------------------------------------------------------------------------


def test_stored_targets_equal_the_online_teachers_on_the_replayed_clip_and_its_mask(setup):
    paths, params = setup
    cache = cache_of(paths)
    assert len(cache) == 8 and cache.manifest["dtype"] == "float32"
    for index, view in [(0, 0), (1, 1), (3, 0), (3, 1)]:  # both shards, both views
        stored = cache[index * VIEWS + view]
        out = online(params, replayed_clip(paths, index, view), index, view)
        np.testing.assert_array_equal(stored["visible_idx"], out["visible_idx"][0])
        for name, target in swap_layer_axis(out["target"]).items():
            np.testing.assert_allclose(stored[name], target[0], atol=1e-6, rtol=0, err_msg=name)
    assert not np.array_equal(cache[0]["visible_idx"], cache[1]["visible_idx"])  # each view its own mask


def test_float16_storage_is_the_rounding_of_the_float32_targets(setup, tmp_path):
    paths, _ = setup
    config = config_for(paths, dtype="float16")
    precompute_targets.precompute(config, str(tmp_path / "f16"), VIEWS, SHARD_SIZE)
    half, full = cache_of(paths, str(tmp_path / "f16")), cache_of(paths)
    assert half.manifest["dtype"] == "float16"
    for entry in range(len(full)):
        np.testing.assert_array_equal(half[entry]["visible_idx"], full[entry]["visible_idx"])
        for name in ("image_layers", "image_pooled", "video_layers"):
            assert half[entry][name].dtype == np.float16
            np.testing.assert_array_equal(half[entry][name], full[entry][name].astype(np.float16))


def test_the_students_loss_from_the_cache_equals_the_online_loss(setup):
    """Same student params, same clip (replayed), same mask: the loss from stored targets is the online loss; a clip
    replayed from another seed gives another loss (the test sees a wrong replay)."""
    paths, params = setup
    task = get_task(config_for(paths, cache=paths["cache"]))
    cache = cache_of(paths)
    replay = target_cache.ReplayExample(pipeline.make_source(task.config.data, "train"), task.config.data, SEED, VIEWS)
    student = {k: v for k, v in params.items() if k not in TEACHERS}
    index, view = 2, 1
    example = target_cache.CachedExample(replay, cache)(index * VIEWS + view)
    batch = {k: np.asarray(v)[None] for k, v in example.items()}
    cached, _ = jax.jit(task.loss)(student, {}, batch, jax.random.PRNGKey(0))
    weights = task.config.loss

    def online_loss(video):
        out = online(params, video, index, view)
        return distill_objective(out["pred"], out["target"], weights)[0]

    np.testing.assert_allclose(float(cached), float(online_loss(replayed_clip(paths, index, view))), rtol=1e-5)
    assert abs(float(cached) - float(online_loss(replayed_clip(paths, index, view, seed=SEED + 1)))) > 1e-3
    assert set(stored_teacher(batch)["target"]) == {"image_layers", "image_pooled", "video_layers"}


# ----------------------------------------------------------------------------------------------------------
# resuming, half-written shards
# ----------------------------------------------------------------------------------------------------------


def test_a_rerun_skips_complete_shards_and_a_half_written_shard_is_never_read(setup, tmp_path):
    paths, _ = setup
    directory = str(tmp_path / "cache")
    shutil.copytree(paths["cache"], directory)
    config = config_for(paths)
    assert precompute_targets.precompute(config, directory, VIEWS, SHARD_SIZE) == []  # all complete
    before = {name: os.stat(os.path.join(directory, "shard-00000", name)).st_mtime_ns
              for name in os.listdir(os.path.join(directory, "shard-00000"))}
    # A run cut short while writing shard 1: its temporary directory holds part of it.
    os.rename(os.path.join(directory, "shard-00001"), os.path.join(directory, "shard-00001.tmp"))
    os.remove(os.path.join(directory, "shard-00001.tmp", "video_layers.npy"))
    with pytest.raises(ValueError, match=r"incomplete: 1 of 2 shards missing \(shard-00001\)"):
        cache_of(paths, directory)
    assert precompute_targets.precompute(config, directory, VIEWS, SHARD_SIZE) == [1]
    assert sorted(os.listdir(directory)) == ["manifest.json", "shard-00000", "shard-00001"]
    assert before == {name: os.stat(os.path.join(directory, "shard-00000", name)).st_mtime_ns for name in before}
    redone, original = cache_of(paths, directory), cache_of(paths)
    for entry in range(4, 8):  # shard 1
        jax.tree.map(np.testing.assert_array_equal, redone[entry], original[entry])


# ----------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, match", [
    ("seed", SEED + 1, "seed: cache 3, run 4"),
    ("data.crop_size", 24, "data.crop_size: cache 32, run 24"),
    ("model.kwargs.mask_ratio", 0.5, "teachers.mask_ratio: cache 0.75, run 0.5"),
    ("data.num_sample", 2, "data.num_sample=2: stored teacher targets hold one clip per video"),
])
def test_a_cache_of_other_settings_is_refused_naming_the_fields(setup, field, value, match):
    paths, _ = setup
    config = config_for(paths, cache=paths["cache"])
    *parents, last = field.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[last] = value
    with pytest.raises(ValueError, match=match):
        get_task(config).train_iterator(seed=0, batch_size=2)


def test_missing_cache_and_rerun_with_other_flags_are_named(setup, tmp_path):
    paths, _ = setup
    with pytest.raises(FileNotFoundError, match="no such directory"):
        get_task(config_for(paths, cache=str(tmp_path / "none"))).train_iterator(seed=0, batch_size=2)
    with pytest.raises(ValueError, match="views: cache 2, run 3"):
        precompute_targets.precompute(config_for(paths), paths["cache"], 3, SHARD_SIZE)
    with pytest.raises(ValueError, match="dtype: cache 'float32', run 'float16'"):
        precompute_targets.precompute(config_for(paths, dtype="float16"), paths["cache"], VIEWS, SHARD_SIZE)


def test_precompute_names_a_missing_teacher_checkpoint_and_an_unwritable_directory(setup, tmp_path):
    paths, _ = setup
    config = config_for(paths)
    config.init_from.teacher_video.checkpoint = ""
    with pytest.raises(ValueError, match="config.init_from.teacher_video.checkpoint is empty"):
        precompute_targets.precompute(config, str(tmp_path / "a"))
    config.init_from.teacher_video.checkpoint = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.init_from.teacher_video.checkpoint=.*nowhere: no such"):
        precompute_targets.precompute(config, str(tmp_path / "a"))
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match="cannot write the teacher-targets directory .*file/cache"):
        precompute_targets.precompute(config_for(paths), str(tmp_path / "file" / "cache"))


def test_training_from_a_cache_refuses_teacher_checkpoints(setup):
    paths, _ = setup
    config = config_for(paths)
    config.teacher_targets = paths["cache"]
    with pytest.raises(ValueError, match="init_from.teacher_image.checkpoint is set, but with config.teacher_targets"):
        get_task(config)


# ----------------------------------------------------------------------------------------------------------
# training from the cache
# ----------------------------------------------------------------------------------------------------------


def test_the_cache_iterator_yields_stored_fields_and_resumes_from_its_state(setup):
    paths, _ = setup
    task = get_task(config_for(paths, cache=paths["cache"]))
    first = task.train_iterator(seed=0, batch_size=2)
    batch = next(first)
    assert batch["video"].shape == (2, 4, 32, 32, 3)
    assert batch["teacher/visible_idx"].shape == (2, 8) and batch["teacher/image_layers"].shape == (2, 2, 9, 16)
    stored = {key: (value.shape, value.dtype) for key, value in batch.items() if key.startswith("teacher/")}
    assert {key: (s.shape, s.dtype) for key, s in task.stored_batch_shapes(2).items()} == stored  # for AOT compiles
    state = first.get_state()
    expect = [next(first) for _ in range(4)]  # into the second pass over the 8 entries
    resumed = task.train_iterator(seed=0, batch_size=2)
    resumed.set_state(state)
    for want in expect:
        jax.tree.map(np.testing.assert_array_equal, next(resumed), want)


@pytest.mark.slow  # ~25 s on 2 cores: two trainer runs (compile, then resume)
def test_the_trainer_trains_from_the_cache_without_teachers_resumes_and_its_student_restores(setup, tmp_path):
    paths, params = setup
    config = config_for(paths, cache=paths["cache"])
    workdir = str(tmp_path / "run")
    assert trainer.train(config, workdir, stop_after=1) is None
    result = trainer.train(config, workdir)  # resumes at step 1, data position included
    assert result["steps"] == 2 and np.isfinite(result["train"]["loss"])
    saved = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", "2", "state"))["params"]
    assert not set(saved) & set(TEACHERS) and "student" in saved and "clip_decoder_0" in saved
    # Stage 2 (and a next stage 1) restore `params/student` from such a checkpoint.
    restored = restore_subtrees({"vision_encoder": params["student"]}, dict(
        checkpoint=os.path.join(workdir, "checkpoints"), mapping={"vision_encoder": "params/student"}))
    jax.tree.map(np.testing.assert_array_equal, restored["vision_encoder"], saved["student"])


def test_the_1b_recipe_from_stored_targets_holds_only_the_student_and_heads():
    """`targets=DIR`: no teachers in the model (1,070,042,752 params, the recipe's trainable ones), none to freeze or
    restore; the heads keep the teachers' widths (from the teachers' abstract outputs)."""
    config = internvideo2_distill.get_config("1B,targets=/cache")
    assert config.teacher_targets == "/cache" and tuple(config.optim.frozen) == ()
    task = get_task(config)
    boxed = jax.eval_shape(task.init_variables, jax.random.PRNGKey(0), trainer.example_batch(config, 1))
    params = nn.unbox(boxed["params"])
    assert not set(params) & set(TEACHERS)
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(params)) == 1_070_042_752
    assert params["clip_decoder_0"]["head"]["kernel"].shape == (1408, 3200)  # student width -> InternViT-6B width
    assert params["final_clip_decoder"]["head"]["kernel"].shape == (768, 768)
    assert trainer.init_sources(config, task) == []

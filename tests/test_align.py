"""InternVideo2 stage 2 (video-text alignment): temperature clamp, CON, VTM hard negatives, MLM masking, a short
training run with retrieval and zero-shot evaluation, and the 1B recipe built abstractly."""
import json
import math
import os
from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import internvideo2_align
from invideo_jax import losses, sharding
from invideo_jax.data import pipeline, synthetic
from invideo_jax.evaluate.retrieval import retrieval_metrics
from invideo_jax.models.align import VideoTextAlign
from invideo_jax.models.internvideo2 import InternVideo2
from invideo_jax.train import checkpoint, init_from as restore, optim, trainer
from invideo_jax.train.tasks import get_task
from invideo_jax.train.tasks.align import gather_in_groups, interleave, matching_loss

pytestmark = pytest.mark.usefixtures("quick_compiling")  # conftest.py

VISION = dict(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=16, tubelet_size=1, num_frames=4, image_size=32,
              attn_pool_heads=2, clip_embed_dim=24)
TEXT = dict(vocab_size=30522, width=32, depth=2, num_heads=2, mlp_dim=64, max_len=16, fusion_layer=1)
CLS, SEP, PAD, MASK = 101, 102, 0, 103  # BERT uncased


def tiny_config(root, steps=3, batch=4):
    c = internvideo2_align.get_config("S,epochs=1,train_size=16,batch=4")
    c.model.kwargs = ml_collections.ConfigDict(dict(vision_config=VISION, text_config=TEXT, embed_dim=16, pad_id=0,
                                                    dtype="float32"))
    data = os.path.join(root, "data")
    c.data.update(dict(train_annotations=os.path.join(data, "train.json"),
                       eval_annotations=os.path.join(data, "val.json"), root=data, num_frames=4, crop_size=32,
                       short_side=32, train_crop="resize_crop", flip=False, workers=0, text_length=16,
                       cache_videos=False))
    c.mask.ratio = 0.5
    c.batch_size = c.eval_batch_size = batch
    c.total_steps, c.log_every, c.checkpoint_every = steps, 1, steps
    c.mesh.update(dict(data=1, fsdp=1))  # one device (the recipe shards over all of them)
    c.optim.update(dict(base_lr=1e-3, warmup_steps=1, min_lr=1e-5))
    c.init_from = ml_collections.ConfigDict(dict(checkpoint="", mapping={}, pos_embed_grid_src=(),
                                                 pos_embed_grid_dst=()))
    c.zero_shot.class_names, c.zero_shot.templates = synthetic.zero_shot_prompts()
    return c


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("align"))
    synthetic.write_dataset(os.path.join(root, "data"), num_train=16, num_val=8, num_frames=8, size=32, seed=0)
    return root


@pytest.fixture(scope="module")
def task_and_params(root):
    task = get_task(tiny_config(root))
    rng = np.random.default_rng(0)
    batch = {"video": jnp.asarray(rng.normal(size=(4, 4, 32, 32, 3)), jnp.float32),
             "text": jnp.asarray(task.tokenizer().encode(["a red square moves up", "a blue star grows",
                                                          "a green triangle shrinks", "a cyan square slides left"]))}
    # random values of the right shapes (no compiled initialisation: the checks hold for any parameters)
    shapes = jax.eval_shape(lambda: nn.unbox(task.init_variables(jax.random.PRNGKey(0), batch))["params"])
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.1, s.shape), s.dtype), shapes)
    return task, params, batch


# ---------------------------------------------------------------- temperature and CON
def test_temperature_is_clamped_and_can_come_back():
    value, grad = jax.vmap(jax.value_and_grad(lambda t, s: s * losses.clamp_temperature(t)))(
        jnp.array([1e-4, 1e-4, 0.07, 0.9, 0.9]), jnp.array([1.0, -1.0, 1.0, 1.0, -1.0]))
    np.testing.assert_allclose(value / jnp.array([1, -1, 1, 1, -1]), [0.001, 0.001, 0.07, 0.5, 0.5], rtol=1e-6)
    # below the range a gradient that would lower it further (descent: t - lr * g, g > 0) is dropped and one that
    # raises it passes; above the range likewise; inside every gradient passes
    np.testing.assert_allclose(grad, [0.0, -1.0, 1.0, 1.0, 0.0])
    grad_low = jax.grad(lambda t: losses.clamp_temperature(t))(1e-4)
    assert grad_low == 0.0  # descent would push 1e-4 further down (update -lr * 1): dropped


def test_con_equals_contrastive_loss_at_the_same_temperature(task_and_params):
    rng = np.random.default_rng(1)
    v, t = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    ours, ours_metrics = losses.temperature_contrastive_loss(v, t, 0.07)
    clip, clip_metrics = losses.contrastive_loss(v, t, jnp.log(1 / 0.07))
    np.testing.assert_allclose(ours, clip, rtol=1e-5)
    assert ours_metrics.keys() == clip_metrics.keys()
    # through the task: CON alone (no token masking, no dropout) is that loss on the model's features, at the clamped
    # temperature (the parameter is set out of range)
    task, params, batch = task_and_params
    task.config.unlock()
    task.config.loss.update(dict(vtm=0.0, mlm=0.0))
    task.config.mask.ratio = 0.0
    try:
        params = dict(params, temp=jnp.float32(2.0))
        loss, (metrics, _) = task.loss(params, {}, batch, jax.random.PRNGKey(3))
        video = task.model.apply({"params": params}, batch["video"], method=VideoTextAlign.encode_video)
        text = task.model.apply({"params": params}, batch["text"], method=VideoTextAlign.encode_text)
        expected, _ = losses.contrastive_loss(video, text, jnp.log(1 / 0.5))
        np.testing.assert_allclose(loss, expected, rtol=1e-5)
        assert metrics["temperature"] == pytest.approx(0.5)
        assert set(metrics) >= {"con_loss", "loss", "video_to_text_accuracy"} and "vtm_loss" not in metrics
    finally:
        task.config.loss.update(dict(vtm=1.0, mlm=1.0))
        task.config.mask.ratio = 0.5


# ---------------------------------------------------------------- VTM
def test_rerank_match_logits_and_predict_outputs(task_and_params):
    """The re-ranking's padded, jitted text mode and matching head equal the model's `text_hidden` and `match` on the
    same (caption, video) pairs; `predict` gives the context tokens and caption ids they need."""
    task, params, batch = task_and_params
    out = jax.jit(task.predict)(params, {}, batch)
    assert {"context", "text_ids"} <= set(out) and out["context"].shape[0] == 4
    np.testing.assert_array_equal(out["text_ids"], batch["text"])
    texts, videos = np.array([0, 2, 3]), np.array([1, 1, 0])
    ids, context = np.asarray(batch["text"])[texts], np.asarray(out["context"])[videos]
    hidden, mask = task.text_states(params, ids)
    np.testing.assert_array_equal(mask, ids != PAD)
    np.testing.assert_allclose(hidden, task.model.apply({"params": params}, ids, method=VideoTextAlign.text_hidden),
                               rtol=1e-5, atol=1e-6)
    scores = task.match_logits(params, hidden, mask, context)
    want = task.model.apply({"params": params}, hidden, mask, context, method=VideoTextAlign.match)[:, 1]
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-6)


def test_rerank_scores_paragraph_queries(root, task_and_params):
    """DiDeMo's protocol: with `retrieval.captions=paragraph` the matching re-ranking scores each video's joined
    captions; with k = every video, its ranks are those of the model's match logit of every (paragraph, video)."""
    _, params, _ = task_and_params
    config = tiny_config(root)
    config.retrieval.captions, config.rerank.k, config.zero_shot.class_names = "paragraph", 8, ()
    task = get_task(config)
    ev = task.evaluate(SimpleNamespace(params=params, batch_stats={}), jax.jit(task.predict),
                       sharding.make_mesh(config.mesh))
    source = pipeline.make_source(config.data, "eval")
    paragraphs = [" ".join(source[i][0].captions) for i in range(len(source))]
    assert len(paragraphs) == 8 and all(len(source[i][0].captions) > 1 for i in range(8))
    video = next(pipeline.eval_iterator(config.data, batch_size=8))["video"]  # the 8 videos in order, one view each

    def apply(method, *args):
        return np.asarray(task.model.apply({"params": params}, *args, method=method))

    tokens, ids = apply(lambda m, v: m.encode_vision(v)[0], video), task.tokenizer().encode(paragraphs)
    hidden, mask = apply(VideoTextAlign.text_hidden, ids), ids != PAD
    match = np.stack([apply(VideoTextAlign.match, np.repeat(hidden[t:t + 1], 8, 0), np.repeat(mask[t:t + 1], 8, 0),
                            tokens)[:, 1] for t in range(8)])
    want = retrieval_metrics(match, np.arange(8))
    assert ev["retrieval_match/k"] == 8 and ev["num_texts"] == 8
    for name in ("t2v_r1", "t2v_r5", "t2v_meanr", "v2t_r1", "v2t_r5", "v2t_meanr"):
        assert ev[f"retrieval_match/{name}"] == pytest.approx(want[name]), name


def test_hard_negatives_never_pick_the_positive_and_follow_the_similarities():
    rng = np.random.default_rng(0)
    v, t, temp = rng.normal(size=(5, 8)), rng.normal(size=(5, 8)), 0.3
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    texts, videos = jax.jit(jax.vmap(lambda k: losses.sample_hard_negatives(k, v, t, temp)))(keys)
    texts, videos = np.asarray(texts), np.asarray(videos)
    assert not (texts == np.arange(5)).any() and not (videos == np.arange(5)).any()
    sim = np.asarray(losses.l2_normalize(v) @ losses.l2_normalize(t).T) / temp
    for similarity, drawn in ((sim, texts), (sim.T, videos)):
        weights = np.exp(similarity - similarity.max(axis=1, keepdims=True))
        np.fill_diagonal(weights, 0)
        weights /= weights.sum(axis=1, keepdims=True)
        counts = np.stack([np.bincount(drawn[:, i], minlength=5) for i in range(5)]) / len(keys)
        np.testing.assert_allclose(counts, weights, atol=0.03)


def test_hard_negatives_peaked_similarity_groups_and_bad_rows():
    eye = np.eye(6)
    v, t = eye, np.roll(eye, -1, axis=0)  # text j is video j + 1: video i's closest other text is i - 1
    sample = jax.jit(losses.sample_hard_negatives, static_argnames="groups")
    texts, videos = sample(jax.random.PRNGKey(1), v, t, 0.001)
    np.testing.assert_array_equal(texts, (np.arange(6) - 1) % 6)
    np.testing.assert_array_equal(videos, (np.arange(6) + 1) % 6)
    # in groups of 3 the negatives stay in the example's own group, never the example
    keys = jax.random.split(jax.random.PRNGKey(2), 200)
    rng = np.random.default_rng(0)
    v, t = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    texts, videos = jax.jit(jax.vmap(lambda k: sample(k, v, t, 0.1, groups=2)))(keys)
    for drawn in (np.asarray(texts), np.asarray(videos)):
        assert (drawn // 3 == np.arange(6) // 3).all() and not (drawn == np.arange(6)).any()
    # a row with NaN similarities samples uniformly among the others
    logits = losses.hard_negative_logits(jnp.array([[np.nan, 1.0, 2.0], [0.0, 5.0, 1.0], [1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(jax.nn.softmax(logits, axis=-1)[0], [0, 0.5, 0.5])
    with pytest.raises(ValueError, match="groups of at least 2"):
        losses.sample_hard_negatives(jax.random.PRNGKey(0), v, t, 0.1, groups=6)


def test_group_gather_interleave_and_matching_labels():
    x = jnp.arange(6)[:, None] * 10 + jnp.arange(2)
    np.testing.assert_array_equal(gather_in_groups(x, jnp.array([2, 0, 1, 5, 3, 4]), 2)[:, 0], [20, 0, 10, 50, 30, 40])
    np.testing.assert_array_equal(interleave(jnp.arange(2), 10 + jnp.arange(2), 20 + jnp.arange(2)),
                                  [0, 10, 20, 1, 11, 21])
    logits = jnp.array([[0.0, 5.0], [5.0, 0.0], [5.0, 0.0]] * 2)  # pos, neg, neg: all right
    loss, accuracy = matching_loss(logits)
    assert accuracy == 1.0 and loss < 0.01


# ---------------------------------------------------------------- MLM
def test_mlm_masking_statistics_and_exclusions():
    rng = np.random.default_rng(0)
    batch, length = 256, 32
    ids = np.full((batch, length), PAD, np.int32)
    ends = rng.integers(4, length, batch)
    for row, end in zip(ids, ends):
        row[0], row[1:end], row[end] = CLS, rng.integers(1000, 2000, end - 1), SEP
    corrupted, selected = jax.jit(lambda key, ids: losses.mlm_inputs(
        key, ids, mask_prob=0.5, mask_id=MASK, vocab_size=30522, special_ids=(PAD, CLS, SEP)))(
        jax.random.PRNGKey(0), jnp.asarray(ids))
    corrupted, selected = np.asarray(corrupted), np.asarray(selected)
    words = (ids != PAD) & (ids != CLS) & (ids != SEP)
    assert not selected[~words].any()
    np.testing.assert_array_equal(corrupted[~selected], ids[~selected])  # unselected tokens (specials too) unchanged
    assert abs(selected[words].mean() - 0.5) < 0.02
    chosen_ids, original = corrupted[selected], ids[selected]
    assert abs((chosen_ids == MASK).mean() - 0.8) < 0.02
    assert abs((chosen_ids == original).mean() - 0.1) < 0.015
    assert abs(((chosen_ids != MASK) & (chosen_ids != original)).mean() - 0.1) < 0.015


# ---------------------------------------------------------------- training through the trainer
@pytest.mark.slow  # ~50 s on 2 cores; the demo test trains and evaluates this task in CI
def test_training_run_reports_every_loss_and_retrieval_and_zero_shot(root):
    workdir = os.path.join(root, "run")
    result = trainer.train(tiny_config(root, steps=2), workdir)
    ev = result["eval"]
    assert ev["num_videos"] == 8
    for prefix in ("retrieval", "retrieval_dsl"):
        for direction in ("t2v", "v2t"):
            r1, r5, r10 = (ev[f"{prefix}/{direction}_r{k}"] for k in (1, 5, 10))
            assert 0 <= r1 <= r5 <= r10 == 100.0
    assert 0 <= ev["zero_shot/top1"] <= ev["zero_shot/top5"] <= 1
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [row for row in map(json.loads, f) if "loss" in row]
    assert len(rows) == 2
    for row in rows:
        for key in ("loss", "con_loss", "vtm_loss", "vtm_accuracy", "mlm_loss", "mlm_accuracy", "temperature"):
            assert np.isfinite(row[key]), (key, row)
        assert row["skipped"] == 0
        assert row["mlm_loss"] > 0 and 0.001 <= row["temperature"] <= 0.5
        assert row["loss"] == pytest.approx(row["con_loss"] + row["vtm_loss"] + row["mlm_loss"], rel=1e-4)


def test_bad_configs_are_named(root):
    config = tiny_config(root)
    config.data.tokenizer = "clip"
    with pytest.raises(ValueError, match="mask token"):
        get_task(config)
    config = tiny_config(root)
    config.model.kwargs.text_config.vocab_size = 100
    with pytest.raises(ValueError, match="vocab_size is 100"):
        get_task(config)
    config = tiny_config(root)
    config.loss.temp_min = 0.0
    with pytest.raises(ValueError, match="temp_min"):
        get_task(config)
    config = tiny_config(root)
    config.loss.vtm_groups = 3
    with pytest.raises(ValueError, match="vtm_groups"):
        get_task(config)


# ---------------------------------------------------------------- images
def test_image_batches_run_at_one_frame(root, task_and_params):
    """An image batch (one frame, `data.image_batches`) through the task: CON alone without masking equals the
    contrastive loss of the model's image features (one-frame encoder: tests/test_convert_internvideo2.py); its
    masking keeps 1 - mask.image_ratio of the frame's 4 tokens, a video's 1 - mask.ratio of 16."""
    _, params, batch = task_and_params
    config = tiny_config(root)
    config.loss.update(dict(vtm=0.0, mlm=0.0))
    config.mask.update(dict(ratio=0.0, image_ratio=0.0))
    task = get_task(config)
    image = batch["video"][:, :1]
    loss, (metrics, _) = task.loss(params, {}, dict(batch, video=image), jax.random.PRNGKey(3))
    video = task.model.apply({"params": params}, image, method=VideoTextAlign.encode_video)
    text = task.model.apply({"params": params}, batch["text"], method=VideoTextAlign.encode_text)
    expected, _ = losses.contrastive_loss(video, text, jnp.log(1 / metrics["temperature"]))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    config.mask.update(dict(ratio=0.75, image_ratio=0.5))
    task = get_task(config)
    assert task.visible_indices(jax.random.PRNGKey(0), 4, 1).shape == (4, 2)
    assert task.visible_indices(jax.random.PRNGKey(0), 4, 4).shape == (4, 4)


def test_separate_image_positions_restore_from_stage1_without_them():
    """`sep_image_pos`: stage 2 holds `img_pos_embed`, stage 1 has none; the vision source restores every other part
    (the table keeps its initialisation, as the official non-strict load)."""
    student = jax.eval_shape(lambda: InternVideo2(**VISION).init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 32, 32, 3))))
    saved = {f"params/student/{checkpoint.tree_path(p)}": leaf.shape
             for p, leaf in jax.tree_util.tree_leaves_with_path(nn.unbox(student)["params"])}
    model = VideoTextAlign(vision_config=dict(VISION, sep_image_video_pos_embed=True), text_config=TEXT, embed_dim=16)
    params = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 32, 32, 3)),
                                                        jnp.ones((1, 4), jnp.int32))))["params"]
    assert params["vision_encoder"]["encoder"]["img_pos_embed"].shape == (1, 1 + 4, 32)
    for sep, problems in ((True, []), (False, ["vision_encoder/encoder/img_pos_embed: missing in checkpoint as "
                                               "params/student/encoder/img_pos_embed"])):
        source = internvideo2_align.init_from(stage1_frames=4, frames=4, image_size=32, sep_image_pos=sep).vision
        pairs, found = restore.match_leaves(params, saved, source)
        assert found == problems and len(pairs) == len(saved)
    config = internvideo2_align.get_config("S,images=True,sep_image_pos=True,train_size=16,batch=4")
    assert config.data.image_batches and config.model.kwargs.vision_config.sep_image_video_pos_embed
    assert config.mask.image_ratio == 0.5


# ---------------------------------------------------------------- the 1B recipe
def test_1b_recipe_builds_abstractly_with_its_parameter_count():
    config = internvideo2_align.get_config("1B")
    assert config.model.kwargs.text_config.fusion_layer == 19 and config.model.kwargs.text_config.depth == 24
    assert config.model.kwargs.embed_dim == 512 and config.loss.mlm_prob == 0.5 and config.mask.ratio == 0.8
    task = get_task(config)
    boxed = jax.eval_shape(task.init_variables, jax.random.PRNGKey(0), trainer.example_batch(config, 1))
    params = sharding.strip_boxes(boxed["params"])
    count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
    assert {k: count(v) for k, v in params.items()} == {
        "vision_encoder": 1_019_266_816, "text_encoder": 360_108_858, "vision_proj": 393_728, "text_proj": 524_800,
        "itm_head": 2_050, "temp": 1}
    assert count(params) == 1_380_296_253
    assert params["text_encoder"]["layer_19"]["cross_attn"]["kv"]["kernel"].shape == (1408, 2, 16, 64)
    assert "cross_attn" not in params["text_encoder"]["layer_18"]
    rows = {row.path: row for row in optim.describe(params, config.optim)}
    assert not rows["temp"].weight_decay and not rows["temp"].frozen  # as the official's no_weight_decay
    optim.make_optimizer(config.optim, params, total_steps=config.total_steps, global_batch=config.batch_size)

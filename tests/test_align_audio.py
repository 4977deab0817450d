"""Audio in InternVideo2 stage 2: the clips' audio in the data pipeline (train and multi-view eval, videos without an
audio track), the audio-visual model's parameters and per-example skipping, the masked AVTC/AVTM losses against the
losses of the valid examples, train steps with a frozen audio encoder, and the 6B audio-visual recipe built
abstractly."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from flax import traverse_util

from configs import internvideo2_align
from invideo_jax import losses
from invideo_jax.data import audio, pipeline, synthetic
from invideo_jax.models.align import VideoTextAlign, audio_visual_context
from invideo_jax.models.audio import AUDIO_SIZES
from invideo_jax.train import optim, trainer
from invideo_jax.train.state import TrainState
from invideo_jax.train.tasks import get_task
from invideo_jax.train.tasks.align import check_audio_fields, matching_loss
from tests.test_align import TEXT, VISION, tiny_config

pytestmark = pytest.mark.usefixtures("quick_compiling")  # conftest.py

AUDIO = dict(AUDIO_SIZES["tiny"], num_mel_bins=64, scan=False, dtype="float32")
AUDIO_FRAMES = 64  # 0.66 s of log-mel: the demo clips last 1 s


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("align_audio"))
    synthetic.write_dataset(os.path.join(root, "data"), num_train=8, num_val=4, num_frames=8, size=32, seed=0,
                            audio=True)
    return root


def audio_config(root, steps=2):
    c = tiny_config(root, steps=steps)
    c.model.kwargs.update(dict(audio_config=AUDIO, av_concat_dim=20, freeze_audio=True))
    internvideo2_align.use_audio(c)
    c.data.audio_frames = AUDIO_FRAMES
    c.data.eval_clips, c.data.eval_crops = 2, 2
    return c


def peak_bin(spectrogram, frames):
    return int(np.argmax(spectrogram[:frames].mean(axis=0)))


def test_train_and_eval_batches_carry_each_clips_audio(root):
    c = audio_config(root)
    batch = next(pipeline.train_iterator(c.data, seed=0, batch_size=8))
    assert batch["audio"].shape == (8, AUDIO_FRAMES, 64) and batch["audio"].dtype == np.float32
    labels = batch["label"]
    # the 8 training videos are shuffled; videos 3 and 7 (label 3 and 7) have no audio track
    for row, label in enumerate(labels):
        expected = synthetic.has_sound(int(label))  # video i has label i here (8 videos, 8 classes)
        assert batch["audio_mask"][row] == int(expected)
        if expected:
            assert peak_bin(batch["audio"][row], 20) == audio.mel_bin_of(synthetic.tone_hz(int(label)))
        else:
            np.testing.assert_array_equal(batch["audio"][row], 0)

    views = next(pipeline.eval_iterator(c.data, batch_size=8))  # 2 videos x 2 clips x 2 crops
    np.testing.assert_array_equal(views["audio_mask"], [1] * 8)
    # crops of one clip share its sound; the two clips cover different seconds
    np.testing.assert_array_equal(views["audio"][0], views["audio"][1])
    assert not np.array_equal(views["audio"][0], views["audio"][2])
    assert peak_bin(views["audio"][4], 20) == audio.mel_bin_of(synthetic.tone_hz(1))
    # a clip's spectrogram is that of the seconds its frames cover
    video = os.path.join(root, "data", "videos", "val", "00000.mp4")
    indices = pipeline.clip_indices(c.data, 8, view=1)
    expected = audio.audio_example(video, *audio.clip_seconds(indices, synthetic.FPS), target_frames=AUDIO_FRAMES)
    np.testing.assert_array_equal(views["audio"][2], expected["audio"])


def test_clip_audio_without_a_track_or_frame_rate(root, monkeypatch):
    c = audio_config(root)
    silent = os.path.join(root, "data", "videos", "train", "00003.mp4")
    fields = pipeline.clip_audio(c.data, silent, np.arange(4))
    assert fields["audio_mask"] == 0 and not fields["audio"].any()
    monkeypatch.setattr(pipeline, "frame_rate", lambda video: 0.0)
    sounding = os.path.join(root, "data", "videos", "train", "00000.mp4")
    assert pipeline.clip_audio(c.data, sounding, np.arange(4))["audio_mask"] == 0


@pytest.fixture(scope="module")
def model_and_params():
    model = VideoTextAlign(vision_config=VISION, text_config=TEXT, audio_config=AUDIO, av_concat_dim=20, embed_dim=16)
    rng = np.random.default_rng(0)
    video = jnp.asarray(rng.normal(size=(3, 4, 32, 32, 3)), jnp.float32)
    ids = jnp.asarray(rng.integers(1000, 2000, (3, 6)), jnp.int32)
    sound = jnp.asarray(rng.normal(size=(3, AUDIO_FRAMES, 64)), jnp.float32)
    has_audio = jnp.array([1, 0, 1], jnp.int32)
    init = jax.jit(lambda *args: model.init(jax.random.PRNGKey(0), *args))
    params = nn.unbox(init(video, ids, None, None, sound, has_audio))["params"]
    return model, params, (video, ids, sound, has_audio)


def test_parameters_follow_the_official_audio_visual_model(model_and_params):
    _, params, _ = model_and_params
    shapes = jax.tree.map(np.shape, params)
    assert shapes["av_concat_vision_proj"]["dense"]["kernel"] == (32, 20)  # vision width -> av_concat_dim
    assert shapes["av_concat_audio_proj"]["dense"]["kernel"] == (64, 20)  # audio width -> av_concat_dim
    assert shapes["audio_proj"]["kernel"] == (64, 16) and shapes["av_fusion"]["kernel"] == (32, 16)  # 2E -> E
    assert shapes["avtm_head"]["kernel"] == (32, 2)
    # the fusion layers' cross-attention reads the av_concat_dim-wide context
    cross = [v for k, v in traverse_util.flatten_dict(shapes, sep="/").items() if "cross" in k and k.endswith("kernel")]
    assert cross and any(shape[0] == 20 for shape in cross)


def test_examples_without_audio_skip_the_branch(model_and_params):
    model, params, (video, ids, sound, has_audio) = model_and_params
    variables = {"params": params}
    apply = jax.jit(lambda method, *args: model.apply(variables, *args, method=method), static_argnums=0)
    tokens, pooled = apply(VideoTextAlign.encode_vision, video)
    audio_tokens, pooled_audio, mask = apply(VideoTextAlign.encode_audio, sound, has_audio)
    np.testing.assert_array_equal(mask, [True, False, True])
    context, context_mask = audio_visual_context(audio_tokens, mask, tokens)
    hidden = apply(VideoTextAlign.text_hidden, ids)
    text_mask = ids != 0
    match = jax.jit(lambda *args: model.apply(variables, *args, head="avtm", method=VideoTextAlign.match))
    with_audio, vision_only = match(hidden, text_mask, context, context_mask), match(hidden, text_mask, tokens)
    # row 1 has no audio: its audio tokens are masked out (tolerance: float32 reduction order); rows 0, 2 use them
    np.testing.assert_allclose(with_audio[1], vision_only[1], atol=2e-5)
    assert np.abs(with_audio[np.array([0, 2])] - vision_only[np.array([0, 2])]).max() > 1e-4
    features = apply(VideoTextAlign.encode_audio_video, video, sound, has_audio)
    plain = apply(VideoTextAlign.encode_video, video)
    np.testing.assert_array_equal(features[1], plain[1])
    assert np.abs(features[np.array([0, 2])] - plain[np.array([0, 2])]).max() > 1e-3
    # what a silent row's spectrogram holds does not matter
    again = apply(VideoTextAlign.encode_audio, sound.at[1].set(100.0), has_audio)
    np.testing.assert_array_equal(again[0], audio_tokens)


def test_masked_contrastive_and_matching_losses_equal_the_loss_of_the_valid_examples():
    rng = np.random.default_rng(2)
    video, text = (jnp.asarray(rng.normal(size=(6, 8)), jnp.float32) for _ in range(2))
    valid = jnp.array([1, 0, 1, 1, 0, 1], bool)
    rows = np.flatnonzero(valid)
    loss, metrics = losses.temperature_contrastive_loss(video, text, 0.1, valid)
    sub_loss, sub_metrics = losses.temperature_contrastive_loss(video[rows], text[rows], 0.1)
    np.testing.assert_allclose(loss, sub_loss, rtol=1e-6)
    for key in metrics:
        np.testing.assert_allclose(metrics[key], sub_metrics[key], rtol=1e-6)
    logits = jnp.asarray(rng.normal(size=(18, 2)), jnp.float32)
    weights = jnp.repeat(valid, 3)  # interleaved (positive, negative, negative) per example
    pairs = np.flatnonzero(weights)
    np.testing.assert_allclose(matching_loss(logits, weights), matching_loss(logits[pairs]), rtol=1e-6)
    # hard negatives are drawn among the valid examples only
    sample = jax.jit(losses.sample_hard_negatives, static_argnums=4)
    for seed in range(20):
        texts, videos = sample(jax.random.PRNGKey(seed), video, text, 0.1, 1, valid)
        assert valid[texts[rows]].all() and valid[videos[rows]].all()
        assert (texts != np.arange(6)).all() and (videos != np.arange(6)).all()


def test_train_steps_on_pipeline_batches_keep_the_frozen_encoder(root):
    """Two jitted train steps of the recipe's optimiser on a real batch (3 of 4 clips with audio) report every video
    and audio-visual term, leave the frozen audio encoder bitwise unchanged and train the audio projections;
    evaluation gives audio-visual features that use the audio."""
    c = audio_config(root)
    task = get_task(c)
    batch = {k: v for k, v in next(pipeline.train_iterator(c.data, seed=0, batch_size=4)).items()
             if k in pipeline.batch_spec(c.data, 4)}
    params = nn.unbox(jax.jit(task.init_variables)(jax.random.PRNGKey(0), batch))["params"]
    tx, schedule = optim.make_optimizer(c.optim, params, total_steps=2, global_batch=4)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), batch_stats={},
                       rng=jax.random.PRNGKey(0))
    step = jax.jit(trainer.make_train_step(task, tx, schedule))
    for _ in range(2):
        state, metrics = step(state, batch)
    assert metrics["skipped"] == 0 and metrics["audio_fraction"] == batch["audio_mask"].mean()
    terms = [f"{side}{name}_loss" for side in ("", "av_") for name in ("con", "vtm", "mlm")]
    assert all(np.isfinite(metrics[k]) and metrics[k] > 0 for k in terms)
    np.testing.assert_allclose(metrics["loss"], sum(metrics[k] for k in terms), rtol=1e-5)
    for trained, start in zip(jax.tree.leaves(state.params["audio_encoder"]), jax.tree.leaves(params["audio_encoder"])):
        np.testing.assert_array_equal(trained, start)
    for name in ("audio_proj", "av_fusion", "av_concat_audio_proj", "avtm_head"):
        changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), state.params[name], params[name])
        assert any(jax.tree.leaves(changed)), name

    views = next(pipeline.eval_iterator(c.data, batch_size=8))
    views = {k: jnp.asarray(v) for k, v in views.items() if k in ("video", "text", "audio", "audio_mask")}
    predict = jax.jit(task.predict)
    out = predict(state.params, {}, views)
    silent = predict(state.params, {}, dict(views, audio_mask=jnp.zeros_like(views["audio_mask"])))
    assert np.abs(out["audio_video_features"] - silent["audio_video_features"]).max() > 1e-3
    np.testing.assert_array_equal(silent["audio_video_features"], out["video_features"])


@pytest.mark.slow  # ~50 s on 2 cores, as the align training run without audio
def test_training_run_with_audio_evaluates_retrieval(root):
    summary = trainer.train(audio_config(root, steps=2), os.path.join(root, "run"))
    assert summary["eval"]["num_videos"] == 4
    assert 0 <= summary["eval"]["retrieval/t2v_r1"] <= 100 and 0 <= summary["eval"]["retrieval_av/t2v_r1"] <= 100


def test_audio_fields_must_agree(root):
    c = tiny_config(root)
    c.data.audio = True
    with pytest.raises(ValueError, match="data.audio=True but the model has no audio encoder"):
        get_task(c)
    data = ml_collections.ConfigDict(dict(audio=True, audio_mel_bins=128))
    with pytest.raises(ValueError, match="audio_mel_bins=128 but .*num_mel_bins=64"):
        check_audio_fields(AUDIO, data)


def test_6b_audio_visual_recipe_builds_abstractly():
    c = internvideo2_align.get_config("6B,audio=beats_iter3,embed_dim=768,text_length=40,epochs=5")
    assert c.data.audio and c.data.audio_mel_bins == 64 and r"audio_encoder/" in c.optim.frozen
    model = VideoTextAlign(**c.model.kwargs)
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, 4, 224, 224, 3)), jnp.zeros((1, 40), jnp.int32),
        audio=jnp.zeros((1, audio.TARGET_FRAMES, 64)), audio_mask=jnp.ones((1,), jnp.int32)))["params"]

    def count(tree):
        return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nn.unbox(tree)))

    # official widths: vision 3200, BEATs 768, av_concat_dim 768, contra_dim 768, BERT-large 1024
    assert count(shapes["av_concat_vision_proj"]) == 3200 * 768 + 768 + 2 * 768
    assert count(shapes["av_concat_audio_proj"]) == 768 * 768 + 768 + 2 * 768
    assert count(shapes["audio_proj"]) == 768 * 768 + 768 and count(shapes["av_fusion"]) == 2 * 768 * 768 + 768
    assert count(shapes["avtm_head"]) == 1024 * 2 + 2
    assert count(shapes["audio_encoder"]) == 90_311_664  # models/audio.py BEATs iter3, relative position bias included
    print(f"6B stage 2 with audio: {count(shapes):,} parameters")

"""Audio in InternVideo2 stage 2: the clips' audio in the data pipeline (train and multi-view eval, videos without an
audio track), the audio joining the video side of VideoTextAlign (skipped per example without audio), the frozen
audio encoder, a short training run with audio, and the 6B audio-visual recipe built abstractly."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import internvideo2_align
from invideo_jax.data import audio, pipeline, synthetic
from invideo_jax.models.align import VideoTextAlign
from invideo_jax.models.audio import AUDIO_SIZES
from invideo_jax.train import optim, trainer
from invideo_jax.train.state import TrainState
from invideo_jax.train.tasks import get_task
from invideo_jax.train.tasks.align import check_audio_fields
from tests.test_align import TEXT, VISION, tiny_config

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
    c.model.kwargs.audio_config = AUDIO
    c.model.kwargs.freeze_audio = True
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
    model = VideoTextAlign(vision_config=VISION, text_config=TEXT, audio_config=AUDIO, embed_dim=16)
    rng = np.random.default_rng(0)
    video = jnp.asarray(rng.normal(size=(3, 4, 32, 32, 3)), jnp.float32)
    ids = jnp.asarray(rng.integers(1000, 2000, (3, 6)), jnp.int32)
    sound = jnp.asarray(rng.normal(size=(3, AUDIO_FRAMES, 64)), jnp.float32)
    has_audio = jnp.array([1, 0, 1], jnp.int32)
    init = jax.jit(lambda *args: model.init(jax.random.PRNGKey(0), *args))
    params = nn.unbox(init(video, ids, None, None, sound, has_audio))["params"]
    return model, params, (video, ids, sound, has_audio)


def test_fusion_starts_as_the_video_only_model(model_and_params):
    model, params, (video, ids, sound, has_audio) = model_and_params
    np.testing.assert_array_equal(params["av_fusion"]["kernel"][:24], np.eye(24))
    np.testing.assert_array_equal(params["av_fusion"]["kernel"][24:], 0)
    with_audio = model.apply({"params": params}, video, sound, has_audio, method=model.encode_video)
    without = model.apply({"params": params}, video, method=model.encode_video)
    np.testing.assert_allclose(with_audio, without, atol=1e-6)


def test_examples_without_audio_skip_the_branch(model_and_params):
    model, params, (video, ids, sound, has_audio) = model_and_params
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(0, 0.05, p.shape), p.dtype), params)
    variables = {"params": params}
    apply = jax.jit(lambda *args: model.apply(variables, *args))
    full, plain = apply(video, ids, None, None, sound, has_audio), apply(video, ids)
    # row 1 has no audio: every output equals the video-only model's (tolerance: float32 reduction order)
    for key in ("video_features", "itm_logits", "mlm_logits"):
        np.testing.assert_allclose(full[key][1], plain[key][1], atol=2e-5, err_msg=key)
        for row in (0, 2):  # rows with audio: the audio changes them
            assert np.abs(full[key][row] - plain[key][row]).max() > 1e-4, (key, row)
    # what a silent row's spectrogram holds does not matter
    noisy = sound.at[1].set(100.0)
    again = apply(video, ids, None, None, noisy, has_audio)
    np.testing.assert_array_equal(again["mlm_logits"][1], full["mlm_logits"][1])


def test_train_steps_on_pipeline_batches_keep_the_frozen_encoder(root):
    """Two jitted train steps of the recipe's optimiser on a real batch (3 of 4 clips with audio) leave the frozen
    audio encoder bitwise unchanged and train the audio side of `av_fusion` and `av_concat_audio_proj`; evaluation
    features use the audio."""
    c = audio_config(root)
    task = get_task(c)
    batch = {k: v for k, v in next(pipeline.train_iterator(c.data, seed=0, batch_size=4)).items()
             if k in trainer.batch_shapes(c, 4)}
    params = nn.unbox(jax.jit(task.init_variables)(jax.random.PRNGKey(0), batch))["params"]
    tx, schedule = optim.make_optimizer(c.optim, params, total_steps=2, global_batch=4)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), batch_stats={},
                       rng=jax.random.PRNGKey(0))
    step = jax.jit(trainer.make_train_step(task, tx, schedule))
    for _ in range(2):
        state, metrics = step(state, batch)
    assert metrics["skipped"] == 0 and np.isfinite(metrics["loss"])
    for trained, start in zip(jax.tree.leaves(state.params["audio_encoder"]), jax.tree.leaves(params["audio_encoder"])):
        np.testing.assert_array_equal(trained, start)
    assert np.any(state.params["av_fusion"]["kernel"][24:] != 0)
    assert np.any(state.params["av_concat_audio_proj"]["kernel"] != params["av_concat_audio_proj"]["kernel"])

    views = next(pipeline.eval_iterator(c.data, batch_size=8))
    views = {k: jnp.asarray(v) for k, v in views.items() if k in ("video", "text", "audio", "audio_mask")}
    predict = jax.jit(task.predict)
    features = predict(state.params, {}, views)["video_features"]
    silent = predict(state.params, {}, dict(views, audio_mask=jnp.zeros_like(views["audio_mask"])))
    assert np.abs(features - silent["video_features"]).max() > 1e-6


@pytest.mark.slow  # ~50 s on 2 cores, as the align training run without audio
def test_training_run_with_audio_evaluates_retrieval(root):
    summary = trainer.train(audio_config(root, steps=2), os.path.join(root, "run"))
    assert summary["eval"]["num_videos"] == 4
    assert 0 <= summary["eval"]["retrieval/t2v_r1"] <= 100


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
    count = lambda tree: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nn.unbox(tree)))  # noqa: E731
    assert count(shapes["av_fusion"]) == (768 + 768) * 768 + 768
    assert count(shapes["av_concat_audio_proj"]) == 768 * 3200 + 3200
    print(f"6B stage 2 with audio: {count(shapes):,} parameters, audio encoder {count(shapes['audio_encoder']):,}")

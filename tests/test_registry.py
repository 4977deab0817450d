"""The presets, their `list` command and inference loading: names and errors, parameter counts from shapes, loading
every checkpoint layout (a training run, a converted directory, PyTorch weights read by a converter) into features
equal to the model's own."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from invideo_jax import inference, presets, registry
from invideo_jax.convert import clip
from invideo_jax.convert.api import save
from invideo_jax.train.tasks import TASKS
from invideo_jax.models.internvideo2 import InternVideo2
from invideo_jax.models.vit import VisionTransformer
from invideo_jax.train.checkpoint import Checkpointer
from invideo_jax.train.state import TrainState
from tests.tiny_models import random_variables, tiny


def assert_equal_trees(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_unknown_names_list_the_known_ones(capsys):
    with pytest.raises(ValueError, match="unknown model 'vit_b'; known: .*uniformerv2_b16_k400.*videomae_vit_b_k400"):
        presets.get("vit_b")
    with pytest.raises(ValueError, match="unknown model 'internvideo2_1b'; known: .*internvideo2_1b_stage2"):
        presets.get("internvideo2_1b")
    with pytest.raises(ValueError, match="unknown model"):
        inference.load("vit_b", "/nonexistent")
    assert registry.main(["list", "nothing*"]) == 2
    assert "known: demo_classifier" in capsys.readouterr().err
    adhoc = presets.get("configs/videomae_finetune.py:vit_s,classes=5")  # a config file works as a name
    assert adhoc.format == presets.OURS
    assert presets.build_config(adhoc).model.kwargs.num_classes == 5
    for name in presets.names():
        if not name.startswith("demo_"):  # the demo presets need the demo pipeline (slow imports); same code path
            preset = presets.PRESETS[name]
            assert preset.format in presets.FORMATS
            task = presets.build_config(preset).task  # its task gives the inference interface
            assert hasattr(importlib.import_module(TASKS[task]).Task, "encode_video"), (name, task)
    assert presets.build_config(presets.PRESETS["internvideo2_1b_stage1"]).task == "distill"
    assert presets.build_config(presets.PRESETS["internvideo2_1b_stage2"]).task == "align"
    with pytest.raises(ValueError, match="task 'videochat2' has no inference interface"):
        inference.load("configs/videochat2.py:tiny", "/")


def test_list_prints_parameter_counts_and_formats(capsys):
    tinies = {tiny(kind): kind for kind in ("vit", "videomae", "uniformerv2", "videotext", "internvideo2_stage2")}
    assert registry.main(["list", *tinies, "videomae_vit_b_k400", "uniformerv2_b16_k400", "internvideo2_1b_*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:]
            if line.split() and (line.split()[0] in presets.PRESETS or line.split()[0] in tinies)}
    rows = {f"tiny_{tinies[name]}" if name in tinies else name: row for name, row in rows.items()}
    assert set(rows) == {"tiny_vit", "tiny_videomae", "tiny_uniformerv2", "tiny_videotext", "videomae_vit_b_k400",
                         "uniformerv2_b16_k400", "tiny_internvideo2_stage2", "internvideo2_1b_stage1",
                         "internvideo2_1b_stage2"}
    assert rows["videomae_vit_b_k400"][1:3] == ["86.5M", "videomae"]  # VideoMAE ViT-B: 87 M in the paper
    assert rows["uniformerv2_b16_k400"][1:3] == ["114.6M", "uniformerv2"]  # UniFormerV2-B/16: 115 M
    # InternVideo2-1B: 1,020,708,608 at 8 frames; stage 2 (4 frames, BERT-large with fusion layers) 1,380,296,253
    assert rows["internvideo2_1b_stage1"][1:3] == ["1.02B", "internvideo2"]
    assert rows["internvideo2_1b_stage2"][1:3] == ["1.38B", "internvideo2_stage2"]
    counts = {kind: sum(x.size for x in jax.tree.leaves(random_variables(tiny(kind))["params"]))
              for kind in ("vit", "uniformerv2")}
    for kind, count in counts.items():
        assert rows[f"tiny_{kind}"][1:3] == [registry.format_count(count), "ours"]
        assert inference.count_params(tiny(kind)) == count


def test_load_training_run_converted_dir_and_pytorch_file(tmp_path):
    """A UniFormerV2 with local UniBlocks: params and BatchNorm statistics from each layout, bitwise."""
    variables = random_variables(tiny("uniformerv2"), seed=2)
    assert set(variables) == {"params", "batch_stats"}
    run = tmp_path / "run"
    ckpt = Checkpointer(str(run / "checkpoints"), async_save=False)
    ckpt.save(3, TrainState(step=jnp.int32(3), params=variables["params"], opt_state={"mu": variables["params"]},
                            batch_stats=variables["batch_stats"], rng=jax.random.PRNGKey(0)), force=True)
    ckpt.close()
    from_run = inference.load(tiny("uniformerv2"), str(run))  # a run's workdir: its latest step
    assert_equal_trees(from_run.variables, variables)

    save(variables, str(tmp_path / "converted"))
    assert_equal_trees(inference.load(tiny("uniformerv2"), str(tmp_path / "converted")).variables, variables)

    weights = str(tmp_path / "uniformerv2.safetensors")  # the official key layout
    safetensors.numpy.save_file({k: np.array(v, order="C") for k, v in clip.to_state_dict(variables).items()},
                                weights)
    with pytest.raises(ValueError, match="is a file: a checkpoint of ours is a directory"):
        inference.load(tiny("uniformerv2"), weights)
    assert_equal_trees(inference.load(tiny("uniformerv2"), weights, format="uniformerv2").variables, variables)

    video = np.random.default_rng(0).normal(size=(8, 4, 32, 32, 3)).astype(np.float32)
    out = from_run.encode_video(video, tokens=True)
    direct = jax.jit(from_run.model.apply)(variables, video)  # unsharded, BatchNorm from the statistics
    np.testing.assert_allclose(out["features"], direct["features"], atol=1e-5, rtol=1e-5)
    assert out["tokens"].shape == (8, 2, 17, 32)  # temporal downsampling: 2 steps of CLS + 4x4 patches
    np.testing.assert_allclose(out["tokens"], direct["tokens"], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of 8"):
        from_run.encode_video(video[:3])
    with pytest.raises(ValueError, match="text needs a video-text model"):
        from_run.tokenizer()


def test_on_cpu_a_bfloat16_model_loads_computing_in_float32(tmp_path):
    save(random_variables(tiny("vit"), seed=5), str(tmp_path / "ckpt"))
    video = np.random.default_rng(2).normal(size=(8, 4, 32, 32, 3)).astype(np.float32)
    as_configured = inference.load(tiny("vit"), str(tmp_path / "ckpt"))
    bf16 = inference.load(tiny("vit"), str(tmp_path / "ckpt"), overrides={"model.kwargs.dtype": "bfloat16"})
    assert bf16.config.model.kwargs.dtype == "float32"
    np.testing.assert_array_equal(bf16.encode_video(video)["features"], as_configured.encode_video(video)["features"])
    chat = presets.build_config(presets.get("configs/videochat2.py:tiny"))  # nested configs, dtype objects
    in_float32 = inference.cpu_float32(chat)
    for part in ("llm_config", "qformer_config", "vision_config"):
        assert in_float32.model.kwargs[part].dtype == jnp.float32, part
        assert chat.model.kwargs[part].dtype == jnp.bfloat16, part  # the given config is unchanged


def test_videomae_features_are_the_encoder_on_every_token(tmp_path):
    variables = random_variables(tiny("videomae"), seed=4)
    save(variables, str(tmp_path / "ckpt"))
    model = inference.load(tiny("videomae"), str(tmp_path / "ckpt"))
    video = np.random.default_rng(1).normal(size=(8, 4, 32, 32, 3)).astype(np.float32)
    out = model.encode_video(video, tokens=True)
    encoder = VisionTransformer(**dict(model.model.encoder, final_norm=True))  # no mask: all 2x4x4 tokens
    tokens = jax.jit(encoder.apply)({"params": variables["params"]["encoder"]}, video)["tokens"]
    np.testing.assert_allclose(out["tokens"], np.reshape(tokens, (8, 2, 16, 32)), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(out["features"], np.mean(tokens, axis=1), atol=1e-5, rtol=1e-5)




def test_internvideo2_stage1_features_are_the_students(tmp_path):
    """A stage-1 checkpoint: its `student` on every 2nd frame of the clip; features the attention-pooled feature,
    tokens the patch tokens without CLS in the (t, h*w) grid. (The classifier: test_extract.py; stage 2:
    test_zero_shot_cli.py.)"""
    overrides = {"model.kwargs.student.depth": 1, "model.kwargs.teacher_video.depth": 1,  # the demo's, one layer
                 "model.kwargs.video_layers": 1}
    variables = random_variables("demo_iv2_stage1", seed=5, overrides=overrides)
    save(variables, str(tmp_path / "ckpt"))
    model = inference.load("demo_iv2_stage1", str(tmp_path / "ckpt"), overrides=overrides)
    assert model.config.task == "distill" and model.num_frames == 16 and model.token_grid() == (8, 16)
    video = np.random.default_rng(2).normal(size=(8, 16, 32, 32, 3)).astype(np.float32)
    out = model.encode_video(video, tokens=True)
    direct = jax.jit(InternVideo2(**model.model.student).apply)({"params": variables["params"]["student"]},
                                                                 video[:, ::2])
    np.testing.assert_allclose(out["features"], direct["pooled"], atol=1e-5, rtol=1e-5)
    assert out["tokens"].shape == (8, 8, 16, 64)  # 8 frames of 4x4 patches, width 64
    np.testing.assert_allclose(out["tokens"], np.reshape(direct["tokens"][:, 1:], (8, 8, 16, 64)), atol=1e-5,
                               rtol=1e-5)
    with pytest.raises(ValueError, match="text needs a video-text model"):
        model.encode_text(np.zeros((1, 4), np.int32))

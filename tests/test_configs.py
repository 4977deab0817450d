"""Every shipped recipe builds: task, abstract parameters and optimiser, without memory (jax.eval_shape)."""
import jax
import numpy as np
import pytest

from configs import (demo, internvideo2_finetune, internvideo_fusion, internvideo_mm_pretrain, internvideo_pipeline,
                     uniformerv2_finetune, videomae_finetune, videomae_pretrain)
from invideo_jax import sharding, stages
from invideo_jax.train import optim, trainer
from invideo_jax.train.tasks import get_task


def build(config):
    task = get_task(config)
    boxed = jax.eval_shape(task.init_variables, jax.random.PRNGKey(0), trainer.example_batch(config, 1))
    params = sharding.strip_boxes(boxed["params"])
    optim.make_optimizer(config.optim, params, total_steps=config.total_steps, global_batch=config.batch_size)
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def block(d):
    """A pre-norm block with MLP ratio 4 and q/v biases: qkv 3d^2+2d, proj d^2+d, norms 4d, MLP 8d^2+5d."""
    return 12 * d * d + 12 * d


VIT_S_PRETRAIN = (12 * block(384) + 2 * 16 * 16 * 3 * 384 + 384 + 2 * 384  # encoder with final norm
                  + 384 * 192 + 192 + 4 * block(192) + 2 * 192 + 192 * 1536 + 1536)  # decoder side
VIT_B_K400 = 12 * block(768) + 2 * 16 * 16 * 3 * 768 + 768 + 2 * 768 + 768 * 400 + 400


@pytest.mark.parametrize("module, arg, expected", [
    (videomae_pretrain, "vit_s", VIT_S_PRETRAIN),
    (videomae_pretrain, "vit_b,v2=True", None),
    (videomae_finetune, "vit_b,classes=400", VIT_B_K400),
    (videomae_finetune, "vit_s,dataset=ssv2,scan=False", None),
    (videomae_finetune, "vit_l", None),
    (videomae_finetune, "vit_h,dataset=k400", None),
    (uniformerv2_finetune, "L/14@336", None),  # parameter counts: tests/test_uniformerv2.py
    (uniformerv2_finetune, "B/16,dataset=ssv2,frozen=True,scan=False", None),
    (internvideo_mm_pretrain, "B/16", None),
    (internvideo_mm_pretrain, "L/14,scan=False,frames=16", None),
    (internvideo2_finetune, "1B,dataset=k710", None),
    (internvideo2_finetune, "S,dataset=ssv2", None),
    (internvideo2_finetune, "B,dataset=k400,mode=attentive", None),
])
def test_recipes_build(module, arg, expected):
    count = build(module.get_config(arg))
    if expected:
        assert count == expected


def test_paper_scale_fusion_freezes_both_encoders():
    """ViT-H/16 + UniFormerV2-L/14 with 4 fusion blocks: only the fusion blocks, the head and the query token train."""
    config = internvideo_fusion.get_config()
    task = get_task(config)
    boxed = jax.eval_shape(task.init_variables, jax.random.PRNGKey(0), trainer.example_batch(config, 1))
    params = sharding.strip_boxes(boxed["params"])
    count = lambda tree: sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))
    rows = optim.describe(params, config.optim)
    trainable = sum(int(np.prod(r.shape)) for r in rows if not r.frozen)
    assert sorted(params) == ["fusion_0", "fusion_1", "fusion_2", "fusion_3", "head_multimodal", "masked",
                              "multimodal"]
    query = params["multimodal"]["backbone"]["temporal_cls_token"]
    assert trainable == count({k: v for k, v in params.items() if k not in ("masked", "multimodal")}) + query.size
    assert count(params) == 1_041_664_462 and trainable == 56_370_894  # as the config's docstring states


def test_demo_stages_build(tmp_path):
    """Every demo stage builds; each baseline (`scratch`, `iv2_scratch`) is its classifier's model and recipe without
    the restore, as the demo's docstring says (the effect of pre-training is their difference)."""
    config = demo.get_config()
    stage = {name: stages.stage_config(config, name, str(tmp_path)) for name in config.stage_order}
    counts = {name: build(c) for name, c in stage.items()}
    assert all(count > 0 for count in counts.values()), counts
    for scratch, restored in (("scratch", "finetune"), ("iv2_scratch", "iv2_finetune")):
        assert counts[scratch] == counts[restored]
        for field in ("model", "optim", "data"):
            assert stage[scratch][field].to_dict() == stage[restored][field].to_dict(), (scratch, field)
        assert stage[scratch].total_steps == stage[restored].total_steps
        assert stage[restored].init_from.checkpoint and not stage[scratch].init_from.checkpoint
        assert (restored, scratch) in config.claims


def test_boolean_args_are_true_or_false_only():
    assert videomae_pretrain.get_config("vit_b,v2=TRUE,scan=false").mask.decoder_kind == "running_cell"
    assert not videomae_pretrain.get_config("vit_b,scan=False").model.kwargs.encoder.scan
    for bad in ("scan=flase", "scan=1", "v2=yes", "v2="):
        with pytest.raises(ValueError, match=f"config arg {bad.split('=')[0]}=.*expected true or false"):
            videomae_pretrain.get_config(f"vit_b,{bad}")
    with pytest.raises(ValueError, match="config arg frames='8f': expected type int"):
        videomae_pretrain.get_config("vit_b,frames=8f")


def test_unknown_arg_is_named():
    with pytest.raises(ValueError, match="frmes"):
        videomae_pretrain.get_config("vit_b,frmes=8")
    with pytest.raises(ValueError, match="vit_q"):
        videomae_pretrain.get_config("vit_q")
    with pytest.raises(ValueError, match="k700"):
        uniformerv2_finetune.get_config("B/16,dataset=k700")


@pytest.mark.parametrize("module", [demo, internvideo_pipeline])
def test_pipeline_stages_restore_subtrees_their_sources_have(module, tmp_path):
    """Every init_from of the demo and of the paper-scale InternVideo pipeline (ViT-H + UniFormerV2-L/14) names
    subtrees that the earlier stage's model has, with the same shapes; a wrong mapping is caught before any stage."""
    config = module.get_config()
    stages.check_init_from(config, str(tmp_path))
    fusion = config.stages.fusion
    assert fusion.init_from.masked.checkpoint in config.stages and fusion.init_from.multimodal.checkpoint in config.stages
    fusion.init_from.multimodal.mapping = {"multimodal": "params/backbone"}  # one level too deep
    with pytest.raises(ValueError, match="fusion <- .*multimodal/backbone/.*: missing in checkpoint as params/backbone/backbone"):
        stages.check_init_from(config, str(tmp_path))


@pytest.mark.parametrize("arg, values", [
    # MCG-NJU/VideoMAE scripts/*/finetune.sh: (lr, epochs, global batch, drop-path, layer decay, min lr)
    ("vit_l", (2e-3, 35, 128, 0.1, 0.75, 1e-6)),
    ("vit_h", (1e-3, 50, 512, 0.2, 0.75, 1e-5)),
    ("vit_b,dataset=ssv2", (5e-4, 30, 384, 0.1, 0.75, 1e-6)),
])
def test_videomae_finetune_recipes_follow_the_official_scripts(arg, values):
    c = videomae_finetune.get_config(arg)
    lr, epochs, batch, drop_path, layer_decay, min_lr = values
    assert (c.optim.base_lr, c.batch_size, c.model.kwargs.drop_path, c.optim.layer_decay, c.optim.min_lr) == (
        lr, batch, drop_path, layer_decay, min_lr)
    train_size = 168913 if "ssv2" in arg else 240436  # SSv2 / K400 training videos
    assert c.total_steps == epochs * (train_size // batch)
    assert (c.data.sampling, c.data.flip, c.data.eval_clips) == (
        ("segment", False, 2) if "ssv2" in arg else ("dense", True, 5))


@pytest.mark.parametrize("arg, values", [
    # OpenGVLab/InternVideo InternVideo2/single_modality/scripts/finetuning: (official lr, epochs, videos per step,
    # num_sample, frames, drop-path, layer decay, weight decay, official min lr, warm-up epochs, test clips)
    ("1B,dataset=k710", (5e-5, 9, 256, 2, 8, 0.3, 0.9, 0.05, 1e-6, 2, 4)),
    ("6B,dataset=k710", (2.5e-5, 6, 256, 2, 8, 0.35, 0.915, 0.05, 0.0, 1, 4)),
    ("L,dataset=k710", (2e-4, 14, 256, 2, 8, 0.1, 0.75, 0.05, 1e-6, 2, 4)),
    ("1B,dataset=k600", (1e-5, 3, 256, 2, 8, 0.3, 0.9, 0.05, 1e-6, 0, 4)),
    ("S,dataset=k400", (2e-5, 5, 1024, 2, 8, 0.1, 0.75, 0.05, 1e-6, 1, 4)),
    ("1B,dataset=ssv2", (1e-4, 8, 256, 2, 8, 0.3, 0.915, 0.05, 1e-6, 3, 2)),
    ("1B,dataset=k400,mode=linear", (1e-3, 15, 1024, 1, 16, 0.0, 1.0, 0.0, 1e-6, 3, 1)),
    ("1B,dataset=k710,mode=attentive", (2e-4, 25, 1024, 1, 16, 0.0, 1.0, 0.0, 0.0, 5, 1)),
])
def test_internvideo2_recipes_follow_the_official_scripts(arg, values):
    c = internvideo2_finetune.get_config(arg)
    lr, epochs, videos, num_sample, frames, drop_path, layer_decay, weight_decay, min_lr, warmup, clips = values
    train_size = internvideo2_finetune.DATASETS[arg.split("dataset=")[1].split(",")[0]]["train_size"]
    steps_per_epoch = train_size // videos
    assert (c.batch_size, c.data.num_sample, c.data.num_frames, c.model.kwargs.num_frames) == (
        videos * num_sample, num_sample, frames, frames)
    # the official scaling: lr, min lr and warm-up lr x (videos x num_sample) / 256
    assert (c.optim.base_lr, c.optim.lr_batch_denom) == (lr, 256)
    assert c.optim.min_lr == pytest.approx(min_lr * videos * num_sample / 256)
    assert c.optim.warmup_lr == pytest.approx(1e-6 * videos * num_sample / 256)
    assert (c.model.kwargs.drop_path, c.optim.layer_decay, c.optim.weight_decay) == (drop_path, layer_decay,
                                                                                    weight_decay)
    assert (c.total_steps, c.optim.warmup_steps) == (epochs * steps_per_epoch, warmup * steps_per_epoch)
    assert (c.data.eval_clips, c.data.eval_crops, c.data.sampling) == (clips, 3, "segment")
    assert c.data.format == ("rawframes" if "ssv2" in arg else "videomae")


@pytest.mark.parametrize("arg, rows", [
    # official run_finetuning.py from a 710-class head: nb_classes 400 -> head rows [:400], 600 / 700 ->
    # ./k710/label_mixto{600,700}.json; heads of other starts are new
    ("1B,dataset=k400", "first"), ("1B,dataset=k600", "label_mixto600.json"), ("S,dataset=k700", "label_mixto700.json"),
    ("1B,dataset=k400,mode=attentive", "first"), ("1B,dataset=k710", ""), ("1B,dataset=k400,mode=linear", ""),
])
def test_internvideo2_kinetics_from_k710_start_from_the_k710_head_rows(arg, rows):
    c = internvideo2_finetune.get_config(arg)
    assert c.init_from.head_rows == rows
    assert (c.init_from.mapping.get("head") == "params/head") == bool(rows)


def test_internvideo2_probes_train_only_their_head():
    """Linear: fc_norm + head; attentive: also the attention pool (clip_projector); the encoder never."""
    for mode, trainable in (("linear", {"fc_norm", "head"}), ("attentive", {"clip_projector", "fc_norm", "head"}),
                            ("finetune", {"encoder", "clip_projector", "fc_norm", "head"})):
        config = internvideo2_finetune.get_config(f"S,dataset=k400,mode={mode}")
        task = get_task(config)
        boxed = jax.eval_shape(task.init_variables, jax.random.PRNGKey(0), trainer.example_batch(config, 1))
        rows = optim.describe(sharding.strip_boxes(boxed["params"]), config.optim)
        assert {row.path.split("/")[0] for row in rows if not row.frozen} == trainable, mode

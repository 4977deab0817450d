"""The retrieval fine-tuning presets build and carry the official scripts' values and the benchmark's protocol."""
import pytest

from configs import internvideo2_retrieval, internvideo_mm_retrieval
from tests.test_configs import build

TRAIN_SIZE = 180_000


@pytest.mark.parametrize("module, arg", [
    (internvideo2_retrieval, "6B,dataset=msrvtt"),
    (internvideo2_retrieval, "1B,dataset=didemo"),
    (internvideo_mm_retrieval, "L/14,dataset=msvd"),
    (internvideo_mm_retrieval, "B/16,dataset=didemo"),
])
def test_retrieval_presets_build(module, arg):
    assert build(module.get_config(f"{arg},train_size={TRAIN_SIZE}")) > 0


@pytest.mark.parametrize("arg, text_length, captions, rerank_k", [
    ("6B,dataset=msrvtt", 40, "first", 128),  # MSR-VTT 1k-A, one caption per video, ITM re-ranking of the top 128
    ("6B,dataset=didemo", 64, "paragraph", 128),  # configs/data.py didemo_ret_*: max_txt_l 64, is_paragraph_retrieval
    ("1B,dataset=msrvtt", 40, "first", 128),
])
def test_internvideo2_retrieval_follows_the_official_scripts(arg, text_length, captions, rerank_k):
    # OpenGVLab/InternVideo InternVideo2/multi_modality/scripts/finetuning/stage2/6B/{msrvtt,didemo}/config.py:
    # num_frames 4, image_res 224, max_txt_l 40 (DiDeMo: 64, below), batch_size 8 (x NUM_GPUS=4 in msrvtt/run.sh),
    # lr 5e-6, opt_betas (0.9, 0.98), weight_decay 0.05, max_grad_norm 3, cosine 5 epochs, warmup_epochs 1,
    # min_lr_multi 0.01, loss_weight vtc 1 vtm 1 mlm 0 (audio ones 0), video_mask_ratio 0.8, contra_dim 768,
    # the audio-visual model with freeze_audio True, k_test 128.
    c = internvideo2_retrieval.get_config(f"{arg},train_size={TRAIN_SIZE}")
    steps_per_epoch = TRAIN_SIZE // 32
    assert (c.data.num_frames, c.data.crop_size, c.data.text_length, c.batch_size) == (4, 224, text_length, 32)
    assert (c.optim.base_lr, c.optim.lr_batch_denom, c.optim.b1, c.optim.b2) == (5e-6, 0, 0.9, 0.98)
    assert (c.optim.weight_decay, c.optim.clip_grad) == (0.05, 3.0)
    assert c.optim.min_lr == pytest.approx(5e-8)
    assert (c.total_steps, c.optim.warmup_steps) == (5 * steps_per_epoch, steps_per_epoch)
    assert {k: c.loss[k] for k in ("con", "vtm", "mlm", "av_con", "av_vtm", "av_mlm")} == dict(
        con=1.0, vtm=1.0, mlm=0.0, av_con=0.0, av_vtm=0.0, av_mlm=0.0)
    assert c.mask.ratio == 0.8
    assert (c.retrieval.captions, c.rerank.k) == (captions, rerank_k)
    assert c.init_from.to_dict() == {"checkpoint": "", "mapping": {}}  # the whole stage-2 model, vision not frozen
    assert not any(rx.startswith("vision") for rx in c.optim.frozen)
    if arg.startswith("6B"):
        assert c.model.kwargs.embed_dim == 768 and c.model.kwargs.audio_config and c.model.kwargs.freeze_audio
        assert "audio_encoder/" in c.optim.frozen


@pytest.mark.parametrize("dataset, values", [
    # OpenGVLab/InternVideo InternVideo1/Downstream/Video-Text-Retrieval/finetune_scripts/<script>:
    # (lr, coef_lr, batch_size, max_frames, max_words, protocol); every script: epochs 5
    ("msrvtt", (1e-3, 5e-3, 128, 12, 32, "first")),  # ret_msrvtt.sh, MSRVTT_JSFUSION_test (1k-A)
    ("didemo", (1e-3, 1e-2, 64, 32, 64, "paragraph")),  # ret_didemo.sh
    ("lsmdc", (1e-4, 1e-3, 128, 12, 32, "first")),  # ret_lsmdc.sh
    ("msvd", (1e-3, 2.5e-3, 64, 8, 77, "all")),  # train_msvd.sh
    ("vatex", (1e-3, 5e-3, 128, 8, 77, "all")),  # train_vatex.sh
])
def test_internvideo_mm_retrieval_follows_the_official_scripts(dataset, values):
    lr, coef_lr, batch, frames, words, captions = values
    c = internvideo_mm_retrieval.get_config(f"L/14,dataset={dataset},train_size={TRAIN_SIZE}")
    total = 5 * (TRAIN_SIZE // batch)
    assert c.optim.base_lr == pytest.approx(lr * coef_lr) and c.optim.lr_batch_denom == 0
    assert (c.batch_size, c.data.num_frames, c.model.kwargs.visual_config.num_frames) == (batch, frames, frames)
    assert (c.data.text_length, c.retrieval.captions, c.loss.caption_weight) == (words, captions, 0.0)
    # main_task_retrieval.py prep_optimizer: BertAdam b1 0.9, b2 0.98, e 1e-6, weight_decay 0.2, max_grad_norm 1,
    # warmup_proportion 0.1 of the steps, 'warmup_cosine'
    assert (c.optim.b1, c.optim.b2, c.optim.eps, c.optim.weight_decay, c.optim.clip_grad) == (0.9, 0.98, 1e-6, 0.2, 1.0)
    assert (c.total_steps, c.optim.warmup_steps, c.optim.min_lr) == (total, total // 10, 0.0)


@pytest.mark.parametrize("module, arg, match", [
    (internvideo2_retrieval, "6B,dataset=msvd,train_size=10", "msvd"),
    (internvideo2_retrieval, "L,dataset=msrvtt,train_size=10", "'L'"),
    (internvideo2_retrieval, "6B,dataset=msrvtt", "train_size"),
    (internvideo_mm_retrieval, "L/14,dataset=anet,train_size=10", "anet"),
    (internvideo_mm_retrieval, "L/14,dataset=msvd", "train_size"),
])
def test_bad_retrieval_args_are_named(module, arg, match):
    with pytest.raises(ValueError, match=match):
        module.get_config(arg)

"""InternVideo2 stage 2: video-text alignment (CON + VTM + MLM) of the stage-1 encoder with a BERT text encoder.

  python -m invideo_jax.main --config=configs/internvideo2_align.py:1B --workdir=$WORKDIR \
      --config.data.train_annotations=pretrain.json --config.data.eval_annotations=msrvtt/test_1k.json \
      --config.data.root=videos --config.init_from.vision.checkpoint=$STAGE1 \
      --config.init_from.text.checkpoint=$BERT_LARGE

ARG: the vision size (1B, 6B; S, B, L build too) then options: text=large (BERT-large, fusion_layer 19; base: BERT-base,
fusion_layer 9), frames=4, image_size=224, embed_dim=512, text_length=32, mask_ratio=0.8, mlm_prob=0.5, epochs=10,
batch=4096 (global), train_size=1000000 (clips in the list, for the schedule: set it to yours), stage1_frames=8
(frames of the stage-1 pos_embed, resampled on restore), scan=True, vision_remat=full, text_remat=full,
dtype=bfloat16, attn=auto (the vision encoder's attention kernel: xla, tpu_flash, ...), audio= (none; `beats_iter3`:
the 6B model's BEATs-style audio encoder over 64-bin log-mel of the clip's audio track, models/audio.py),
audio_frozen=True, act=gelu_tanh (the vision MLP activation; gelu: exact, for weights trained with the official
use_fused_mlp=False, configs/internvideo2.py), images=False (`data.image_batches`: the list's still images train in
batches of their own at one frame, masked at `mask.image_ratio` 0.5, as the official image-text corpora),
sep_image_pos=False (the vision encoder's own image position table `img_pos_embed`, the official 1B stage 2's
`sep_image_video_pos_embed=True`, which the released 1B stage-2 file holds; off: images take the frames' mean of
`pos_embed`, the official fallback; the default keeps the parameter count below).

Audio (6B, `InternVideo2_Stage2_audiovisual`; its pre-training config): `audio=beats_iter3` adds the frozen audio
encoder, the 768-wide audio-visual context (`av_concat_dim`: vision tokens through `av_concat_vision_proj`, audio
tokens through `av_concat_audio_proj`) and the audio-visual losses AVTC, AVTM, AVMLM (`loss.av_con`, `av_vtm`,
`av_mlm`, weight 1 each, on the same captions) beside VTC, VTM, MLM, and turns on `data.audio` (each clip's seconds of
audio, 998 x 64 log-mel). Examples whose video has no audio track take part in the video losses only. Use it with
`embed_dim=768` (`contra_dim`), `text_length=40`, `epochs=5`. The official freezes a pre-trained BEATs: convert its
release file (`python -m invideo_jax.convert.cli --format=beats --input=BEATs_iter3_plus_AS2M.pt --output=$BEATS
--model=configs/internvideo2_align.py:6B,audio=beats_iter3`) and restore it with an `init_from.audio` source
(`{checkpoint: $BEATS, mapping: {audio_encoder: params}}`), or train it (`audio_frozen=False`); the released
audio-visual stage-2 file converts whole (`--format=internvideo2_stage2`, same config). A frozen encoder left at its
initialisation is allowed but carries no information.

Recipe of the official 1B stage 2 (internvideo.md 1.9, 5.4; multi_modality scripts/pretraining/stage2/1B/config.py):
4 frames of 224, random masking of 0.8 of the video tokens in training (`only_mask`, no teacher), text encoder
BERT-large-uncased (24 layers, 1024 wide, 16 heads, FFN 4096, vocab 30522, LN eps 1e-12, hidden dropout 0.1) whose
layers 19-23 carry cross-attention to the vision tokens (keys/values from the vision width 1408), captions of at
most 32 WordPiece tokens, `vision_proj` 768 -> 512 and `text_proj` 1024 -> 512, `itm_head` 1024 -> 2, learnable
temperature 0.07 clamped to [0.001, 0.5]; losses VTC, VTM (hard negatives), MLM (mask probability 0.5), weight 1 each.
AdamW (0.9, 0.98), lr 5e-5 (not batch-scaled), wd 0.05, gradient clip 3, cosine over 10 epochs with 1 warm-up epoch
to min lr 0.01 x lr, global batch 64 x 64 GPUs = 4096, bf16, gradient checkpointing of the text encoder (the
official does not checkpoint the 1B vision encoder; `vision_remat=none` where memory allows); vision drop_path 0.25
(1B) / 0.3 (6B), hard-coded in the official builders. The 6B run differs by 5 epochs, text length 40, contrastive
dim 768 and audio (`audio=beats_iter3`, above). Expected (released s2-1B, 4 frames, zero-shot retrieval R@1 t2v / v2t):
MSR-VTT 51.9 / 50.9, DiDeMo 57.0 / 54.3, ActivityNet 60.4 / 54.8 (the official numbers re-rank each query's top 128
candidates with the ITM head: `retrieval_match/...` with `rerank.k` 128, the default here).
Not given by the reference and chosen here: the training crop (random resized crop, scale 0.5-1, and flip), ImageNet
normalisation, segment sampling (one random frame per segment; evaluation: the middle ones), warm-up from lr 0,
AdamW eps 1e-8, `train_size`.

Initialisation, by named `init_from` sources: `vision` <- `params/student` of a stage-1 run (configs/
internvideo2_distill.py; its 8-frame pos_embed resampled to `frames`), `text` <- `params` of a BERT checkpoint
converted with invideo_jax.convert.bert (`bert_hf`, e.g. bert-large-uncased; its layers have no cross-attention,
which starts from its initialisation as in the official). To start from a whole stage-2 model (a converted official
checkpoint or an earlier run), use a single source: `init_from = {checkpoint: DIR, mapping: {}}` (mapping: the whole
model).

Parameter counts (jax.eval_shape; tests/test_align.py), 1B at 4 frames of 224 with BERT-large:
  vision_encoder 1,019,266,816; text_encoder 360,108,858 (BERT-large without pooler, with its MLM head:
  335,174,458, + the cross-attention of the 5 fusion layers: 24,934,400); vision_proj 393,728; text_proj 524,800;
  itm_head 2,050; temp 1; total 1,380,296,253.

Fits (TPU compiler via `python -m invideo_jax.aot`, docs/scale.md; bf16, remat=full, FSDP over every chip): 1B at
batch 4096 on v5p-64 with `--config.grad_accum_steps=4` (32 clips per chip, peak 7.7 of 95 GiB); 6B at batch 4096
on v5p-128 with `--config.grad_accum_steps=16` (4 clips per chip per microbatch, peak 5.2 of 95 GiB; with
`audio=beats_iter3,embed_dim=768,text_length=40`, 5.5 GiB).
"""
import ml_collections

from configs import common, internvideo2
from invideo_jax.models.audio import AUDIO_SIZES

BERT_SIZES = {  # official TextEncoders (configs/model.py): bert_large and bert (base)
    "large": dict(width=1024, depth=24, num_heads=16, mlp_dim=4096, fusion_layer=19),
    "base": dict(width=768, depth=12, num_heads=12, mlp_dim=3072, fusion_layer=9),
}
BERT_VOCAB_SIZE, BERT_MAX_LEN = 30522, 512
AV_CONCAT_DIM = 768  # the audio-visual model's context width (official 6B stage-2 audio-visual configs)


def text_config(size: str = "large", **overrides) -> dict:
    """Bert kwargs of an official BERT text encoder with fusion layers (uncased WordPiece vocabulary)."""
    if size not in BERT_SIZES:
        raise ValueError(f"unknown BERT size {size!r}; expected one of {sorted(BERT_SIZES)}")
    cfg = dict(BERT_SIZES[size], vocab_size=BERT_VOCAB_SIZE, max_len=BERT_MAX_LEN, type_vocab_size=2,
               norm_eps=1e-12, act="gelu", dropout=0.1)
    cfg.update(overrides)
    return cfg


def audio_config(size: str, num_mel_bins: int = 64, scan: bool = True, dtype: str = "bfloat16") -> dict | None:
    """AudioTransformer kwargs of a row of AUDIO_SIZES ('' or 'none': no audio branch)."""
    if size in ("", "none"):
        return None
    if size not in AUDIO_SIZES:
        raise ValueError(f"unknown audio size {size!r}; expected one of {sorted(AUDIO_SIZES)} or none")
    return dict(AUDIO_SIZES[size], num_mel_bins=num_mel_bins, scan=scan, dtype=dtype)


def model_config(size: str = "1B", text: str = "large", frames: int = 4, image_size: int = 224, embed_dim: int = 512,
                 scan: bool = True, vision_remat: str = "none", text_remat: str = "full",
                 dtype: str = "bfloat16", audio: str = "", audio_frozen: bool = True, act: str = "gelu_tanh",
                 sep_image_pos: bool = False) -> dict:
    """`VideoTextAlign` kwargs: the InternVideo2 vision encoder, the BERT text encoder, the projections, the audio
    encoder (`audio`: a row of AUDIO_SIZES, or '' for none)."""
    vision = internvideo2.encoder_config(size, frames=frames, image_size=image_size, scan=scan, remat=vision_remat,
                                         drop_path=internvideo2.PRETRAIN_DROP_PATH.get(size, 0.0), dtype=dtype,
                                         act=act)
    vision["sep_image_video_pos_embed"] = sep_image_pos
    audio_cfg = audio_config(audio, scan=scan, dtype=dtype)
    return dict(vision_config=vision, text_config=text_config(text, remat=text_remat, dtype=dtype),
                audio_config=audio_cfg, av_concat_dim=AV_CONCAT_DIM if audio_cfg else 0, freeze_audio=audio_frozen,
                embed_dim=embed_dim, temp_init=0.07, pad_id=0, dtype=dtype)


def use_audio(c) -> None:
    """Data and optimiser fields that go with the model's audio encoder: the clips' audio, a frozen encoder."""
    kwargs = c.model.kwargs
    if not kwargs.get("audio_config"):
        return
    c.data.audio = True
    c.data.audio_mel_bins = kwargs.audio_config.num_mel_bins
    if kwargs.freeze_audio:
        c.optim.frozen = tuple(c.optim.frozen) + (r"audio_encoder/",)


def init_from(vision: str = "", text: str = "", stage1_frames: int = 8, frames: int = 4,
              image_size: int = 224, sep_image_pos: bool = False) -> ml_collections.ConfigDict:
    """Named sources: the stage-1 student (pos_embed resampled from `stage1_frames`; with `sep_image_pos` every part
    but `img_pos_embed`, which stage 1 has not: it starts from its sin-cos table, as the official non-strict load)
    and a converted BERT."""
    side = image_size // 14
    vision_mapping = {"vision_encoder": "params/student"}
    if sep_image_pos:
        vision_mapping = {f"vision_encoder/{part}": f"params/student/{part}" for part in (
            "encoder/patch_embed", "encoder/cls_token", "encoder/pos_embed", "encoder/transformer", "clip_projector")}
    return ml_collections.ConfigDict(dict(
        vision=dict(checkpoint=vision, mapping=vision_mapping,
                    pos_embed_grid_src=(stage1_frames, side, side), pos_embed_grid_dst=(frames, side, side)),
        text=dict(checkpoint=text, mapping={"text_encoder": "params"})))


def align_fields(c, *, mask_ratio: float = 0.8, mlm_prob: float = 0.5, rerank_k: int = 128, class_names=(),
                 templates=()):
    """The align task's own fields: loss weights and settings, video token masking, the matching re-ranking's k
    (0: off; the official k_test 128), zero-shot prompts. Image batches (`data.image_batches`) mask
    `mask.image_ratio` of their tokens (the official image_mask_ratio 0.5)."""
    c.loss = ml_collections.ConfigDict(dict(con=1.0, vtm=1.0, mlm=1.0, av_con=1.0, av_vtm=1.0, av_mlm=1.0,
                                            mlm_prob=mlm_prob, temp_min=0.001, temp_max=0.5, vtm_groups=0))
    c.mask = ml_collections.ConfigDict(dict(ratio=mask_ratio, image_ratio=0.5))
    c.rerank = ml_collections.ConfigDict(dict(k=rerank_k))
    c.retrieval = ml_collections.ConfigDict(dict(captions="first"))
    c.zero_shot = ml_collections.ConfigDict(dict(class_names=class_names, templates=templates))
    return c


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="1B", text="large", frames=4, image_size=224, embed_dim=512, text_length=32,
                           mask_ratio=0.8, mlm_prob=0.5, epochs=10, batch=4096, train_size=1_000_000,
                           stage1_frames=8, scan=True, vision_remat="full", text_remat="full", dtype="bfloat16",
                           audio="", audio_frozen=True, attn="auto", act="gelu_tanh", images=False,
                           sep_image_pos=False)
    model = model_config(arg.variant, arg.text, arg.frames, arg.image_size, arg.embed_dim, scan=arg.scan,
                         vision_remat=arg.vision_remat, text_remat=arg.text_remat, dtype=arg.dtype, audio=arg.audio,
                         audio_frozen=arg.audio_frozen, act=arg.act, sep_image_pos=arg.sep_image_pos)
    model["vision_config"]["attn_impl"] = arg.attn
    c = align_fields(common.train_config("align", model, model_name="align"), mask_ratio=arg.mask_ratio,
                     mlm_prob=arg.mlm_prob)
    steps_per_epoch = max(arg.train_size // arg.batch, 1)
    c.batch_size = arg.batch
    c.mesh.update(dict(data=1, fsdp=-1))  # FSDP over every chip (docs/scale.md)
    c.total_steps = arg.epochs * steps_per_epoch
    c.checkpoint_every = steps_per_epoch // 10 or 1
    c.data.update(dict(format="json", num_frames=arg.frames, sampling="segment", crop_size=arg.image_size,
                       short_side=arg.image_size, train_crop="rrc", rrc_scale=(0.5, 1.0), flip=True,
                       normalize="imagenet", tokenizer="bert", text_length=arg.text_length, eval_clips=1,
                       eval_crops=1, workers=8, image_batches=arg.images))
    c.optim.update(dict(base_lr=5e-5, lr_batch_denom=0, b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.05,
                        clip_grad=3.0, warmup_steps=steps_per_epoch, warmup_lr=0.0, min_lr=5e-7))
    c.init_from = init_from(stage1_frames=arg.stage1_frames, frames=arg.frames, image_size=arg.image_size,
                            sep_image_pos=arg.sep_image_pos)
    use_audio(c)
    return c

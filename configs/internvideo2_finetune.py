"""InternVideo2 classification: full fine-tuning, linear probing and attentive probing (official single_modality).

  python -m invideo_jax.main --config=configs/internvideo2_finetune.py:1B,dataset=k710 --workdir=$WORKDIR \
      --config.data.train_annotations=k710/train.csv --config.data.eval_annotations=k710/val.csv \
      --config.data.root=k710/videos --config.init_from.checkpoint=$STAGE1_WORKDIR/checkpoints

ARG: the size (S, B, L, 1B, 6B) then options: dataset=k710|k400|k600|k700|ssv2, mode=finetune|linear|attentive,
init=stage1|stage2|k710 (what `init_from.checkpoint` holds: a stage-1 run (`params/student`), a stage-2 run
(`params/vision_encoder`) or a K710 fine-tuning run here (`params`); default: the official script's source), classes,
frames, epochs, videos (per step; the batch is videos x num_sample clips), lr (base, x clips/256), drop_path,
layer_decay, train_size (training videos; the defaults are the datasets' published sizes: pass your list's length),
scan=True, remat=full|none|dots, dtype=bfloat16, attn=auto|xla|tpu_flash.

Recipes (OpenGVLab/InternVideo `InternVideo2/single_modality/scripts/finetuning`, commits d0f2b97 / 12c79c5), in
`RECIPES`; a (mode, dataset, size) without a stored script takes the 1B values of its mode and dataset:
  finetune (`run_finetuning.py`, repeated augmentation `--num_sample 2`, 8 frames, one per equal segment, test 4
  clips x 3 crops; SSv2: rawframe folders, no flip):
    k710  1B  lr 5e-5, 9 ep, 2 warm-up, 256 videos, drop-path 0.3, layer decay 0.9     (from stage 1)
          6B  lr 2.5e-5, 6 ep, 1 warm-up, 256 videos, drop-path 0.35, layer decay 0.915, min lr 0
          S / B / L  lr 2e-4, 35 / 20 / 14 ep, 5 / 4 / 2 warm-up, 256 videos, drop-path 0.1, layer decay 0.75
    k400, k600, k700 (from the K710 fine-tuning)
          1B  lr 1e-5, 3 ep, no warm-up, 256 videos, drop-path 0.3, layer decay 0.9
          6B  (k400) lr 1e-5, 1 ep, 256 videos, drop-path 0.35, layer decay 0.915
          S / B / L  (k400) lr 2e-5, 5 ep, 1 warm-up, 1024 videos, drop-path 0.1, layer decay 0.75
    ssv2  1B  lr 1e-4, 8 ep, 3 warm-up, 256 videos, drop-path 0.3, layer decay 0.915, test 2 x 3  (from stage 1)
          6B  lr 7.5e-5, 6 ep, 2 warm-up, 256 videos, drop-path 0.4, layer decay 0.915, min lr 0, test 5 x 3
  linear / attentive (`run_linear_probing.py`: patch embedding, positions and blocks frozen; linear also freezes the
  attention pool (`clip_projector`), attentive (`--open_clip_projector`) trains it; `fc_norm` and the new `head`
  train; 16 frames, 1024 videos, one sample, weight decay 0, RandAugment m5-n2-mstd0.25, test 1 clip x 3 crops):
    linear k400     1B  lr 1e-3, 15 ep, 3 warm-up                 (from stage 1)
    attentive k710  1B  lr 2e-4, 25 ep, 5 warm-up, min lr 0       (from stage 2, official `loadStage2`)
    attentive k400  1B  lr 1e-5, 3 ep, no warm-up, min lr 0       (from the K710 attentive probe)
Every recipe: AdamW (0.9, 0.999), weight decay 0.05 (probes 0), warm-up from 1e-6, cosine to 1e-6 (where not 0),
the official learning rates scaled by clips / 256 (`total_batch_size * num_sample / 256`, also the minimum and
warm-up rates), RandAugment m7-n4-mstd0.5 (probes m5-n2-mstd0.25), random resized crop, random erasing 0.25, mixup
0.8 / cutmix 1.0, label smoothing 0.1, LayerScale 1e-5, bf16. EMA is off in the official scripts
(`--config.optim.ema_decay=0.9999` turns it on). Heads from K710: as the official K400/K600/K700 runs, `init=k710`
restores the encoder, the pool, `fc_norm` and the head's K710 rows of the target classes (`init_from.head_rows`,
train/init_from.py): the first 400 for K400 ('first'); for K600/K700 the official index lists `label_mixto600.json` /
`label_mixto700.json` (from the official Google Drive folder: pass their path,
`--config.init_from.head_rows=DIR/label_mixto600.json`). A K710 model is evaluated on K400/600/700 directly with
`config.label_map` (class-name files; evaluate/label_map.py).
Not here: the SSv2 linear probe (`internvideo2_cat` model, CLS + mean merge), MiT, SSv1, ANet, HACS, 16-frame
full tuning (pass frames=16; the official f16 scripts were not read).

Official top-1 (single_modality MODEL_ZOO.md, 8 frames x 3 crops x 4 clips): K710 1B 87.6, 6B 88.1, S 79.6, B 83.5,
L 86.2; K400 1B 91.3 (16 frames 91.6), 6B 91.9, S 85.4, B 88.4, L 90.4; K600 1B 91.4, 6B 91.7, S 86.0, B 88.9,
L 90.6; K700 1B 85.0, 6B 85.7, S 75.7, B 80.5, L 83.5; SSv2 1B 77.1, 6B 77.5, S 71.6, B 73.5, L 76.4. The probes have
no number in the stored MODEL_ZOO.
"""
from configs import common
from configs.internvideo2 import SIZES, encoder_config, pos_embed_grid

DATASETS = {  # classes, training videos (published), sampling, flip
    "k710": dict(classes=710, train_size=658340, flip=True),
    "k400": dict(classes=400, train_size=240436, flip=True),
    "k600": dict(classes=600, train_size=392622, flip=True),
    "k700": dict(classes=700, train_size=545317, flip=True),
    "ssv2": dict(classes=174, train_size=168913, flip=False),
}
_FT = dict(frames=8, num_sample=2, eval_clips=4, weight_decay=0.05, randaug="rand-m7-n4-mstd0.5-inc1", min_lr=1e-6)
_PROBE = dict(frames=16, num_sample=1, eval_clips=1, weight_decay=0.0, randaug="rand-m5-n2-mstd0.25-inc1",
              min_lr=1e-6, videos=1024, drop_path=0.0, layer_decay=1.0)
_KINETICS_1B = dict(_FT, lr=1e-5, epochs=3, warmup=0, videos=256, drop_path=0.3, layer_decay=0.9, init="k710")
_KINETICS_SBL = dict(_FT, lr=2e-5, epochs=5, warmup=1, videos=1024, drop_path=0.1, layer_decay=0.75, init="k710")
RECIPES = {  # (mode, dataset, size) -> the official script's values
    ("finetune", "k710", "1B"): dict(_FT, lr=5e-5, epochs=9, warmup=2, videos=256, drop_path=0.3, layer_decay=0.9,
                                     init="stage1"),
    ("finetune", "k710", "6B"): dict(_FT, lr=2.5e-5, epochs=6, warmup=1, videos=256, drop_path=0.35,
                                     layer_decay=0.915, min_lr=0.0, init="stage1"),
    **{("finetune", "k710", size): dict(_FT, lr=2e-4, epochs=epochs, warmup=warmup, videos=256, drop_path=0.1,
                                        layer_decay=0.75, init="stage1")
       for size, epochs, warmup in (("S", 35, 5), ("B", 20, 4), ("L", 14, 2))},
    **{("finetune", dataset, "1B"): _KINETICS_1B for dataset in ("k400", "k600", "k700")},
    ("finetune", "k400", "6B"): dict(_FT, lr=1e-5, epochs=1, warmup=0, videos=256, drop_path=0.35, layer_decay=0.915,
                                     init="k710"),
    **{("finetune", "k400", size): _KINETICS_SBL for size in ("S", "B", "L")},
    ("finetune", "ssv2", "1B"): dict(_FT, lr=1e-4, epochs=8, warmup=3, videos=256, drop_path=0.3, layer_decay=0.915,
                                     eval_clips=2, init="stage1"),
    ("finetune", "ssv2", "6B"): dict(_FT, lr=7.5e-5, epochs=6, warmup=2, videos=256, drop_path=0.4,
                                     layer_decay=0.915, min_lr=0.0, eval_clips=5, init="stage1"),
    ("linear", "k400", "1B"): dict(_PROBE, lr=1e-3, epochs=15, warmup=3, init="stage1"),
    ("attentive", "k710", "1B"): dict(_PROBE, lr=2e-4, epochs=25, warmup=5, min_lr=0.0, init="stage2"),
    ("attentive", "k400", "1B"): dict(_PROBE, lr=1e-5, epochs=3, warmup=0, min_lr=0.0, init="k710"),
}
MODES = ("finetune", "linear", "attentive")
FROZEN = {"finetune": (), "linear": (r"encoder/", r"clip_projector/"), "attentive": (r"encoder/",)}
# init -> ({our subtree: saved path}, frames of the saved pos_embed: stage 1 at 8, the released stage 2 at 4)
INIT = {
    "stage1": ({"encoder": "params/student/encoder", "clip_projector": "params/student/clip_projector"}, 8),
    "stage2": ({"encoder": "params/vision_encoder/encoder",
                "clip_projector": "params/vision_encoder/clip_projector"}, 4),
    "k710": ({"encoder": "params/encoder", "clip_projector": "params/clip_projector", "fc_norm": "params/fc_norm"},
             None),  # the K710 run's own frame count: the recipe's
}


# A K710 head's classes that start a head of another Kinetics (official run_finetuning.py): K400's are its first 400,
# K600's and K700's are listed by the official label_mixto{600,700}.json (init_from.head_rows)
HEAD_ROWS = {"k400": "first", "k600": "label_mixto600.json", "k700": "label_mixto700.json"}


def recipe(mode: str, dataset: str, size: str) -> dict:
    """The official values for (mode, dataset, size); a size without a stored script takes 1B's."""
    for key in ((mode, dataset, size), (mode, dataset, "1B")):
        if key in RECIPES:
            return dict(RECIPES[key])
    stored = sorted({(m, d) for m, d, _ in RECIPES})
    raise ValueError(f"no official recipe for mode={mode}, dataset={dataset}; stored (mode, dataset): {stored}")


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="1B", dataset="k710", mode="finetune", init="", classes=0, frames=0, epochs=0,
                           videos=0, lr=0.0, drop_path=-1.0, layer_decay=0.0, train_size=0, scan=True, remat="full",
                           dtype="bfloat16", attn="auto")
    if arg.variant not in SIZES:
        raise ValueError(f"unknown InternVideo2 size {arg.variant!r}; expected one of {sorted(SIZES)}")
    for field, choices in (("dataset", DATASETS), ("mode", MODES), ("init", ("",) + tuple(INIT))):
        if arg[field] not in choices:
            raise ValueError(f"config arg {field}={arg[field]!r}; expected one of {sorted(choices)}")
    data, r = DATASETS[arg.dataset], recipe(arg.mode, arg.dataset, arg.variant)
    for field in ("frames", "epochs", "videos", "lr", "layer_decay"):
        r[field] = arg[field] or r[field]
    r["drop_path"] = r["drop_path"] if arg.drop_path < 0 else arg.drop_path
    classes, train_size = arg.classes or data["classes"], arg.train_size or data["train_size"]
    model = encoder_config(arg.variant, frames=r["frames"], num_classes=classes, drop_path=r["drop_path"],
                           scan=arg.scan, remat=arg.remat, dtype=arg.dtype, attn_impl=arg.attn)
    c = common.train_config("classification", model, model_name="internvideo2")
    steps_per_epoch = max(train_size // r["videos"], 1)
    clips = r["videos"] * r["num_sample"]
    c.batch_size = clips
    c.mesh.update(dict(data=1, fsdp=-1))
    c.total_steps = r["epochs"] * steps_per_epoch
    c.checkpoint_every = steps_per_epoch
    c.data.update(dict(num_frames=r["frames"], sampling="segment", num_sample=r["num_sample"], crop_size=224,
                       short_side=224, train_crop="rrc", flip=data["flip"], randaug=r["randaug"], random_erase=0.25,
                       mixup=0.8, cutmix=1.0, label_smoothing=0.1, num_classes=classes, normalize="imagenet",
                       eval_clips=r["eval_clips"], eval_crops=3, workers=8))
    if arg.dataset == "ssv2":  # the official SSv2 runs read rawframe folders (`--no_use_decord`, img_{:05}.jpg from 1)
        c.data.format = "rawframes"
    scale = clips / 256  # official: lr, min_lr and warmup_lr all x total_batch_size * num_sample / 256
    c.optim.update(dict(base_lr=r["lr"], lr_batch_denom=256, b1=0.9, b2=0.999, weight_decay=r["weight_decay"],
                        warmup_steps=r["warmup"] * steps_per_epoch, warmup_lr=1e-6 * scale,
                        min_lr=r["min_lr"] * scale, layer_decay=r["layer_decay"], num_layers=model["depth"],
                        layer_decay_prefix="encoder/", frozen=FROZEN[arg.mode]))
    init = arg.init or r["init"]
    mapping, source_frames = INIT[init]
    c.init_from.head_rows = HEAD_ROWS.get(arg.dataset, "") if init == "k710" else ""
    c.init_from.mapping = dict(mapping, head="params/head") if c.init_from.head_rows else mapping
    if source_frames and source_frames != r["frames"]:
        c.init_from.pos_embed_grid_src = pos_embed_grid(source_frames)
        c.init_from.pos_embed_grid_dst = pos_embed_grid(r["frames"])
    return c

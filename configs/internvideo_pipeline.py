"""The whole InternVideo recipe as one pipeline: pre-train each encoder, post-pretrain each with labels, fuse them.

  python -m invideo_jax.main --config=configs/internvideo_pipeline.py --workdir=$WORKDIR \
      --config.stages.videomae_pretrain.data.train_annotations=unlabeled_hybrid.csv \
      --config.stages.multimodal_pretrain.data.train_annotations=webvid.json \
      --config.stages.multimodal_pretrain.init_from.checkpoint=$CONVERTED_CLIP_L14 \
      ...  (train/eval annotations and root of every stage; k710 lists for the supervised and fusion stages)

Stages, each in WORKDIR/<stage> (finished stages are skipped when the pipeline runs again; deleting a stage's
directory re-runs that stage and every later one):
  videomae_pretrain      VideoMAE ViT-H/16 masked video modelling (configs/videomae_pretrain.py)
  multimodal_pretrain    InternVideo-MM video-text pre-training of UniFormerV2-L/14 (configs/internvideo_mm_pretrain.py)
  videomae_supervised    supervised post-pretraining of the masked encoder on K710 (configs/videomae_finetune.py)
  multimodal_supervised  supervised post-pretraining of UniFormerV2 on K710 (configs/uniformerv2_finetune.py)
  fusion                 both encoders frozen, cross-model attention trained (configs/internvideo_fusion.py)
and evaluates the fusion against the two encoders alone and their late ensemble (averaged softmax) in
WORKDIR/report.md, the shape of the paper's ablation.

ARG options: classes=710, scan=True, remat=full, dtype=bfloat16. The stage recipes are those of the single-stage
configs (see their docstrings); override any field with --config.stages.<stage>.<field>.
"""
import ml_collections

from configs import (common, internvideo_fusion, internvideo_mm_pretrain, uniformerv2_finetune, videomae_finetune,
                     videomae_pretrain)


def wire(c, *, masked_pretrain, multimodal_pretrain, masked_supervised, multimodal_supervised, fusion):
    """Connects InternVideo's stages of `c.stages` by name: each supervised stage restores its encoder from its
    pre-training stage, the fusion stage both encoders (and the multimodal head) from the supervised stages; adds
    the late ensemble of the two classifiers and the report's comparison table."""
    c.stages[masked_supervised].init_from.checkpoint = masked_pretrain
    c.stages[multimodal_supervised].init_from.checkpoint = multimodal_pretrain
    c.stages[fusion].init_from = internvideo_fusion.init_from(masked_supervised, multimodal_supervised)
    c.ensembles = ml_collections.ConfigDict({"ensemble": (masked_supervised, multimodal_supervised)})
    c.comparison_title = "InternVideo: each encoder alone, their late ensemble and their fusion"
    c.comparison = (("masked encoder alone", masked_supervised), ("multimodal encoder alone", multimodal_supervised),
                    ("late ensemble (softmax averaged)", "ensemble"), ("cross-model attention fusion", fusion))
    return c


def get_config(arg=None):
    arg = common.parse_arg(arg, classes=710, scan=True, remat="full", dtype="bfloat16")
    scale = f"scan={arg.scan},remat={arg.remat},dtype={arg.dtype}"
    c = ml_collections.ConfigDict()
    c.stages = ml_collections.ConfigDict(dict(
        videomae_pretrain=videomae_pretrain.get_config(f"vit_h,{scale}"),
        multimodal_pretrain=internvideo_mm_pretrain.get_config(f"L/14,{scale}"),
        videomae_supervised=videomae_finetune.get_config(f"vit_h,classes={arg.classes},{scale}"),
        multimodal_supervised=uniformerv2_finetune.get_config(f"L/14,classes={arg.classes},{scale}"),
        fusion=internvideo_fusion.get_config(f"classes={arg.classes},{scale}")))
    c.stage_order = ("videomae_pretrain", "multimodal_pretrain", "videomae_supervised", "multimodal_supervised",
                     "fusion")
    c.report_title = "InternVideo: masked and multimodal pre-training, supervised post-pretraining, fusion"
    return wire(c, masked_pretrain="videomae_pretrain", multimodal_pretrain="multimodal_pretrain",
                masked_supervised="videomae_supervised", multimodal_supervised="multimodal_supervised",
                fusion="fusion")

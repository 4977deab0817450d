"""InternVideo2 stage 2 retrieval fine-tuning: the stage-2 model (configs/internvideo2_align.py) trained on one
benchmark's training captions with VTC + VTM and evaluated with that benchmark's retrieval protocol.

  python -m invideo_jax.main --config=configs/internvideo2_retrieval.py:6B,dataset=msrvtt,train_size=$N \
      --workdir=$WORKDIR --config.data.train_annotations=msrvtt/train_9k.json \
      --config.data.eval_annotations=msrvtt/test_1k.json --config.data.root=videos \
      --config.init_from.checkpoint=$STAGE2   # a converted stage-2 model (--format=internvideo2_stage2) or a run

Data: InternVideo JSON lists ({"video": path, "caption": str | [str, ...]}). MSR-VTT: the 9k training list, one
entry per caption (training draws one caption of a list at random per visit), and the 1k-A test list (one caption
per video, protocol `first`). DiDeMo: paragraph lists; evaluation joins a video's sentences into one query
(protocol `paragraph`), training does not, so give each training entry its sentences joined into one caption string;
the official reads each video's first 30 seconds (`trimmed30`): give the entries `"start": 0, "end": 30`.
`train_size` (required): entries in the training list, for the schedule.

ARG: the vision size (6B: the audio-visual model of the official scripts, contrastive dim 768; 1B: its own stage-2
model, contrastive dim 512, no audio), dataset=msrvtt|didemo, train_size.

Recipe (`RECIPE`; OpenGVLab/InternVideo InternVideo2/multi_modality/scripts/finetuning/stage2/6B/{msrvtt,didemo}/
config.py, msrvtt/run.sh): the whole stage-2 model restored, vision trained, audio frozen; 4 frames of 224 (one
random frame per segment; test: the middle ones), video tokens masked at 0.8 in training as in stage 2, captions of
at most 40 tokens (DiDeMo: 64, the `max_txt_l` of its entries in the official configs/data.py); losses VTC and VTM
(hard negatives) weight 1, MLM and the audio-visual losses 0; AdamW (0.9, 0.98), lr 5e-6, wd 0.05, gradient clip
3, cosine over 5 epochs with 1 warm-up epoch to 0.01 x lr; batch 8 per GPU on the 4 GPUs of run.sh (32); evaluation
re-ranks each query's top 128 by the ITM head (`k_test`; DiDeMo's queries are the joined paragraphs). Only the 6B
scripts exist; the 1B preset takes the same recipe (run.sh itself restores a 1B stage-2 file).
Expected: the official repository publishes no fine-tuned retrieval number for these scripts; the paper's Table 10
(6B, fine-tuned) is not verified here (docs/recipes.md).
"""
import ml_collections

from configs import common, internvideo2_align

RECIPE = dict(frames=4, image_size=224, epochs=5, batch=32, lr=5e-6, min_lr_ratio=0.01, mask_ratio=0.8,
              loss=dict(con=1.0, vtm=1.0, mlm=0.0, av_con=0.0, av_vtm=0.0, av_mlm=0.0))
DATASETS = {  # caption tokens, the retrieval protocol (evaluate/retrieval.py), the official k_test
    "msrvtt": dict(text_length=40, captions="first", rerank_k=128),
    "didemo": dict(text_length=64, captions="paragraph", rerank_k=128),
}
MODELS = {"6B": "embed_dim=768,audio=beats_iter3", "1B": "embed_dim=512"}


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="6B", dataset="msrvtt", train_size=0)
    if arg.variant not in MODELS:
        raise ValueError(f"unknown variant {arg.variant!r}; expected one of {sorted(MODELS)}")
    if arg.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {arg.dataset!r}; expected one of {sorted(DATASETS)}")
    if arg.train_size <= 0:
        raise ValueError("config arg train_size: set it to the number of entries in the training list")
    r, d = RECIPE, DATASETS[arg.dataset]
    c = internvideo2_align.get_config(
        f"{arg.variant},{MODELS[arg.variant]},frames={r['frames']},image_size={r['image_size']},"
        f"text_length={d['text_length']},epochs={r['epochs']},batch={r['batch']},train_size={arg.train_size},"
        f"mask_ratio={r['mask_ratio']}")
    c.loss.update(r["loss"])
    c.optim.update(dict(base_lr=r["lr"], min_lr=r["lr"] * r["min_lr_ratio"]))
    c.retrieval.captions = d["captions"]
    c.rerank.k = d["rerank_k"]
    c.init_from = ml_collections.ConfigDict(dict(checkpoint="", mapping={}))  # one source: the whole model
    return c

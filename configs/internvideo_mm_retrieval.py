"""InternVideo-MM retrieval fine-tuning: the video-text model (configs/internvideo_mm_pretrain.py) trained on one
benchmark's training captions with the symmetric contrastive loss and evaluated with that benchmark's protocol.

  python -m invideo_jax.main --config=configs/internvideo_mm_retrieval.py:L/14,dataset=msvd,train_size=$N \
      --workdir=$WORKDIR --config.data.train_annotations=msvd/train.json \
      --config.data.eval_annotations=msvd/test.json --config.data.root=videos \
      --config.init_from.checkpoint=$INTERNVIDEO_MM   # the whole model: a converted release or a pre-training run

Data: InternVideo JSON lists ({"video": path, "caption": str | [str, ...]}), CLIP BPE tokens. Training: one entry
per caption, as the official `--expand_msrvtt_sentences` (a list of captions draws one at random per visit);
DiDeMo: each entry's sentences joined into one caption string (training does not join them). Evaluation: MSR-VTT
the 1k-A list and LSMDC its test list (one caption each, protocol `first`), MSVD and VATEX every caption (`all`),
DiDeMo paragraphs (`paragraph`). `train_size` (required): entries in the training list, for the schedule.

ARG: the variant (B/16, L/14), dataset=msrvtt|didemo|lsmdc|msvd|vatex, train_size.

Recipe (`DATASETS`; OpenGVLab/InternVideo InternVideo1/Downstream/Video-Text-Retrieval/finetune_scripts/
{ret_msrvtt,ret_didemo,ret_lsmdc,train_msvd,train_vatex}.sh; the optimiser of their main_task_retrieval.py, read in
a fork's copy, ruixuan-ray-zhang/InternVideo, as the official repository's is not stored): 5 epochs; the towers' lr
is `lr` x `coef_lr` (every parameter of the model is a CLIP-branch parameter there), not batch-scaled; global batch
`batch_size`; `max_frames` frames sampled uniformly; captions of at most `max_words` tokens; mean-pooled frame
features (`sim_header=meanP`), loss: symmetric InfoNCE only (caption weight 0); AdamW (0.9, 0.98), eps 1e-6, wd 0.2,
gradient clip 1, linear warm-up over the first 10% of the steps, then cosine to 0.
The scripts name the CLIP they start from: MSVD and VATEX the InternVideo-MM L/14 model (`--clip_evl`
`--pretrained_path`); MSR-VTT (ViT-B/32), DiDeMo and LSMDC (ViT-B/16) plain CLIP without `--clip_evl`. Here every
dataset runs the InternVideo-MM model of the chosen variant (L/14 by default) with its script's values.
Expected (InternVideo1 Video-Text-Retrieval README, fine-tuned R@1 t2v / v2t): MSR-VTT 55.2 / 57.9, MSVD 58.4 / 76.3,
LSMDC 34.0 / 34.9, DiDeMo 57.9 / 59.1, VATEX 72.0 / 86.0 (ActivityNet 62.2 / 62.8 has no stored script).
"""
from configs import common, internvideo_mm_pretrain

DATASETS = {  # script values: lr x coef_lr, batch_size, max_frames, max_words; the retrieval protocol
    "msrvtt": dict(lr=1e-3 * 5e-3, batch=128, frames=12, words=32, captions="first"),
    "didemo": dict(lr=1e-3 * 1e-2, batch=64, frames=32, words=64, captions="paragraph"),
    "lsmdc": dict(lr=1e-4 * 1e-3, batch=128, frames=12, words=32, captions="first"),
    "msvd": dict(lr=1e-3 * 2.5e-3, batch=64, frames=8, words=77, captions="all"),
    "vatex": dict(lr=1e-3 * 5e-3, batch=128, frames=8, words=77, captions="all"),
}
EPOCHS, WARMUP_FRACTION = 5, 0.1


def get_config(arg=None):
    arg = common.parse_arg(arg, variant="L/14", dataset="msrvtt", train_size=0)
    if arg.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {arg.dataset!r}; expected one of {sorted(DATASETS)}")
    if arg.train_size <= 0:
        raise ValueError("config arg train_size: set it to the number of entries in the training list")
    d = DATASETS[arg.dataset]
    c = internvideo_mm_pretrain.get_config(f"{arg.variant},epochs={EPOCHS},batch={d['batch']},"
                                           f"train_size={arg.train_size},frames={d['frames']},caption_weight=0.0")
    c.retrieval.captions = d["captions"]
    c.data.text_length = d["words"]
    c.optim.update(dict(base_lr=d["lr"], lr_batch_denom=0, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.2,
                        clip_grad=1.0, warmup_steps=int(WARMUP_FRACTION * c.total_steps), warmup_lr=0.0,
                        min_lr=0.0))
    return c

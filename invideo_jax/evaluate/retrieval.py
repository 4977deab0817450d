"""Video-text retrieval metrics in both directions, optionally with dual-softmax re-ranking.

Conventions (as in the official evaluations: InternVideo1 Downstream/Video-Text-Retrieval
metrics.py and inference.py, InternVideo2 multi_modality/tasks/retrieval_utils.py `itm_eval`):
  - `similarity` is (num_texts, num_videos); text i describes video `text_to_video[i]`.
  - rank = 1 + the number of candidates scored strictly higher than the ground truth (ties count in
    the ground truth's favour).
  - text-to-video: each text ranks all videos.
  - video-to-text: each video ranks all texts; its rank is that of its best-ranked caption. Videos
    without captions are left out of video-to-text.
  - R@K: percentage of queries with rank <= K; medr and meanr: median and mean rank (1 = first).

Dual softmax (DSL): every score is multiplied by a softmax prior taken in the other direction,
  text-to-video  S * softmax(S / temperature) over texts  (axis 0, for each video),
  video-to-text  S * softmax(S / temperature) over videos (axis 1, for each text)
(InternVideo1's several-captions path reuses the text-to-video matrix for video-to-text; this follows
its one-caption path and InternVideo2).
The official code does this on its logit-scaled similarities. InternVideo1 scales cosines by
exp(logit_scale), 100 for a CLIP logit scale: temperature=0.01 (the default) on cosine similarities
gives its ranks. InternVideo2 applies it to raw cosines: temperature=1. InternVideo1's reported
zero-shot retrieval numbers used DSL (OpenGVLab/InternVideo#32), so results state the re-ranking.
"""
import numpy as np

from invideo_jax.evaluate.multiview import softmax


def retrieval_metrics(similarity, text_to_video, *, dual_softmax: bool = False,
                      temperature: float = 0.01) -> dict:
    """t2v_/v2t_ r1, r5, r10 (percent), medr, meanr, and 'rerank' ('dual_softmax' or 'none'; with
    DSL also 'temperature')."""
    sim = np.asarray(similarity, np.float64)
    text_to_video = np.asarray(text_to_video)
    if sim.ndim != 2 or text_to_video.shape != sim.shape[:1]:
        raise ValueError(f"similarity {sim.shape} must be (num_texts, num_videos) with "
                         f"text_to_video ({sim.shape[0]},), got {text_to_video.shape}")
    num_texts, num_videos = sim.shape
    if text_to_video.min(initial=0) < 0 or text_to_video.max(initial=0) >= num_videos:
        raise ValueError(f"text_to_video must hold video indices in [0, {num_videos})")
    t2v = v2t = sim
    if dual_softmax:
        t2v = sim * softmax(sim.T / temperature).T
        v2t = sim * softmax(sim / temperature)
    captions = text_to_video[None, :] == np.arange(num_videos)[:, None]  # (videos, texts)
    captioned = captions.any(axis=1)
    results = {
        **_summary("t2v", _ranks(t2v, np.arange(num_videos)[None, :] == text_to_video[:, None])),
        **_summary("v2t", _ranks(v2t.T[captioned], captions[captioned])),
        "rerank": "dual_softmax" if dual_softmax else "none",
    }
    if dual_softmax:
        results["temperature"] = temperature
    return results


def _ranks(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """1-based rank of the best positive of each row."""
    best = np.where(positives, scores, -np.inf).max(axis=1)
    return 1 + (scores > best[:, None]).sum(axis=1)


def _summary(prefix: str, ranks: np.ndarray) -> dict:
    results = {f"{prefix}_r{k}": 100.0 * float(np.mean(ranks <= k)) for k in (1, 5, 10)}
    results[f"{prefix}_medr"] = float(np.median(ranks))
    results[f"{prefix}_meanr"] = float(np.mean(ranks))
    return results

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

Caption protocols (`caption_queries`): 'first' (each video's first caption), 'all' (every caption a query:
MSVD, VATEX; text-to-video ranks every caption, video-to-text takes the video's best caption), 'paragraph' (a
video's captions joined with spaces into one query: DiDeMo, ActivityNet paragraph retrieval, as InternVideo2's
`is_paragraph_retrieval`). MSR-VTT 1k-A is 'first' on the 1k-A test list (1000 videos, one caption each).

Matching re-ranking (InternVideo2 `evaluation`, k_test): each text's k most similar videos and each video's k most
similar texts are scored again by a cross-encoder (the matching head's "match" logit); the other pairs rank below
them (`rerank_top_k`, then `retrieval_metrics(t2v_scores, ..., v2t_similarity=v2t_scores)`).
"""
import numpy as np

from invideo_jax.evaluate.multiview import softmax


CAPTION_PROTOCOLS = ("first", "all", "paragraph")


def caption_queries(captions, protocol: str):
    """(texts, text_to_video) of the caption tuples of each video under a caption protocol; videos without
    captions give no query (they stay candidates)."""
    if protocol not in CAPTION_PROTOCOLS:
        raise ValueError(f"retrieval.captions={protocol!r} must be one of {CAPTION_PROTOCOLS}")
    if protocol == "all":
        pairs = [(text, video) for video, texts in enumerate(captions) for text in texts]
    elif protocol == "paragraph":
        pairs = [(" ".join(texts), video) for video, texts in enumerate(captions) if texts]
    else:
        pairs = [(texts[0], video) for video, texts in enumerate(captions) if texts]
    return [text for text, _ in pairs], np.array([video for _, video in pairs], np.int64)


def retrieval_metrics(similarity, text_to_video, *, dual_softmax: bool = False,
                      temperature: float = 0.01, v2t_similarity=None) -> dict:
    """t2v_/v2t_ r1, r5, r10 (percent), medr, meanr, and 'rerank' ('dual_softmax', 'match' or 'none'; with
    DSL also 'temperature'). `v2t_similarity` (num_texts, num_videos): other scores for video-to-text (matching
    re-ranking scores each direction's own top k)."""
    sim = np.asarray(similarity, np.float64)
    text_to_video = np.asarray(text_to_video)
    if sim.ndim != 2 or text_to_video.shape != sim.shape[:1]:
        raise ValueError(f"similarity {sim.shape} must be (num_texts, num_videos) with "
                         f"text_to_video ({sim.shape[0]},), got {text_to_video.shape}")
    num_texts, num_videos = sim.shape
    if text_to_video.min(initial=0) < 0 or text_to_video.max(initial=0) >= num_videos:
        raise ValueError(f"text_to_video must hold video indices in [0, {num_videos})")
    t2v = v2t = sim
    if v2t_similarity is not None:
        if dual_softmax:
            raise ValueError("v2t_similarity comes from a re-ranking; dual softmax is another")
        v2t = np.asarray(v2t_similarity, np.float64)
    if dual_softmax:
        t2v = sim * softmax(sim.T / temperature).T
        v2t = sim * softmax(sim / temperature)
    captions = text_to_video[None, :] == np.arange(num_videos)[:, None]  # (videos, texts)
    captioned = captions.any(axis=1)
    results = {
        **_summary("t2v", _ranks(t2v, np.arange(num_videos)[None, :] == text_to_video[:, None])),
        **_summary("v2t", _ranks(v2t.T[captioned], captions[captioned])),
        "rerank": "dual_softmax" if dual_softmax else "match" if v2t_similarity is not None else "none",
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


def rerank_top_k(similarity, k: int, pair_scores, batch: int = 32):
    """(t2v, v2t) scores (num_texts, num_videos): each text's top-k videos (t2v) and each video's top-k texts (v2t)
    by `similarity` get `pair_scores(text_indices, video_indices)` (arrays of `batch` pairs or fewer), every other
    pair -inf. Each distinct pair is scored once."""
    sim = np.asarray(similarity)
    num_texts, num_videos = sim.shape
    top_videos = np.argsort(-sim, axis=1, kind="stable")[:, :min(k, num_videos)]
    top_texts = np.argsort(-sim, axis=0, kind="stable")[:min(k, num_texts)]
    t2v_pairs = np.stack([np.repeat(np.arange(num_texts), top_videos.shape[1]), top_videos.ravel()], axis=1)
    v2t_pairs = np.stack([top_texts.ravel(), np.tile(np.arange(num_videos), top_texts.shape[0])], axis=1)
    pairs = np.unique(np.concatenate([t2v_pairs, v2t_pairs]), axis=0)
    scores = np.full(sim.shape, np.nan)
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        scores[chunk[:, 0], chunk[:, 1]] = np.asarray(pair_scores(chunk[:, 0], chunk[:, 1]))
    t2v, v2t = np.full(sim.shape, -np.inf), np.full(sim.shape, -np.inf)
    t2v[t2v_pairs[:, 0], t2v_pairs[:, 1]] = scores[t2v_pairs[:, 0], t2v_pairs[:, 1]]
    v2t[v2t_pairs[:, 0], v2t_pairs[:, 1]] = scores[v2t_pairs[:, 0], v2t_pairs[:, 1]]
    return t2v, v2t

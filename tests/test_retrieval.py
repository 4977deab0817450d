import math

import numpy as np
import pytest

import ml_collections

from invideo_jax.evaluate.retrieval import caption_queries, rerank_top_k, retrieval_metrics
from invideo_jax.train.tasks.videotext import caption_protocol


def brute_force(sim, text_to_video):
    """Ranks by explicit argsort per query, metrics by counting."""
    num_texts, num_videos = sim.shape
    t2v = [1 + list(np.argsort(-sim[i], kind="stable")).index(text_to_video[i]) for i in range(num_texts)]
    v2t = []
    for v in range(num_videos):
        order = list(np.argsort(-sim[:, v], kind="stable"))
        captions = [i for i in range(num_texts) if text_to_video[i] == v]
        if captions:
            v2t.append(1 + min(order.index(i) for i in captions))
    results = {}
    for prefix, ranks in (("t2v", t2v), ("v2t", v2t)):
        for k in (1, 5, 10):
            results[f"{prefix}_r{k}"] = 100.0 * sum(r <= k for r in ranks) / len(ranks)
        results[f"{prefix}_medr"] = float(np.median(ranks))
        results[f"{prefix}_meanr"] = sum(ranks) / len(ranks)
    return results


def dual_softmax_by_loops(sim, temperature):
    """(t2v scores, v2t scores): each entry times its softmax over the other axis, computed entry by entry."""
    num_texts, num_videos = sim.shape
    t2v, v2t = np.zeros_like(sim), np.zeros_like(sim)
    for i in range(num_texts):
        for v in range(num_videos):
            column = sum(math.exp((sim[j, v] - sim[i, v]) / temperature) for j in range(num_texts))
            row = sum(math.exp((sim[i, w] - sim[i, v]) / temperature) for w in range(num_videos))
            t2v[i, v], v2t[i, v] = sim[i, v] / column, sim[i, v] / row
    return t2v, v2t


def random_case(seed, num_videos=15):
    rng = np.random.default_rng(seed)
    text_to_video = np.concatenate([np.arange(num_videos), rng.integers(0, num_videos, 12)])
    rng.shuffle(text_to_video)
    sim = rng.normal(size=(len(text_to_video), num_videos)) * 0.1
    sim[np.arange(len(text_to_video)), text_to_video] += 0.15  # better than chance, not perfect
    return sim, text_to_video


def check_equal(results, expected):
    for key, value in expected.items():
        assert results[key] == pytest.approx(value), key


@pytest.mark.parametrize("seed", range(3))
def test_matches_brute_force(seed):
    sim, text_to_video = random_case(seed)
    results = retrieval_metrics(sim, text_to_video)
    check_equal(results, brute_force(sim, text_to_video))
    assert results["rerank"] == "none" and "temperature" not in results


@pytest.mark.parametrize("temperature", [0.01, 1.0])
def test_dual_softmax_matches_loops(temperature):
    sim, text_to_video = random_case(7, num_videos=8)
    t2v, v2t = dual_softmax_by_loops(sim, temperature)
    expected_t2v = brute_force(t2v, text_to_video)
    expected_v2t = brute_force(v2t, text_to_video)
    results = retrieval_metrics(sim, text_to_video, dual_softmax=True, temperature=temperature)
    check_equal(results, {k: v for k, v in expected_t2v.items() if k.startswith("t2v")})
    check_equal(results, {k: v for k, v in expected_v2t.items() if k.startswith("v2t")})
    assert results["rerank"] == "dual_softmax" and results["temperature"] == temperature


def test_hand_built_ranks():
    sim = np.array([[0.9, 0.1, 0.0],
                    [0.8, 0.5, 0.2],
                    [0.1, 0.7, 0.3]])
    results = retrieval_metrics(sim, [0, 1, 2])
    # t2v ranks 1, 2, 2; v2t (columns) ranks 1, 2, 1
    check_equal(results, {"t2v_r1": 100 / 3, "t2v_r5": 100, "t2v_medr": 2, "t2v_meanr": 5 / 3,
                          "v2t_r1": 200 / 3, "v2t_r10": 100, "v2t_medr": 1, "v2t_meanr": 4 / 3})


def test_several_captions_per_video_use_the_best():
    # video 0 has captions 0 and 2: caption 2 ranks first in column 0, caption 0 last
    sim = np.array([[0.1, 0.9],
                    [0.5, 0.4],
                    [0.9, 0.0]])
    results = retrieval_metrics(sim, [0, 1, 0])
    check_equal(results, {"v2t_r1": 50, "v2t_meanr": 1.5, "t2v_r1": 100 / 3, "t2v_meanr": 5 / 3})


def test_uncaptioned_videos_are_distractors_only():
    sim = np.array([[0.9, 0.95, 0.1]])
    results = retrieval_metrics(sim, [0])
    check_equal(results, {"t2v_r1": 0, "t2v_medr": 2, "v2t_r1": 100, "v2t_meanr": 1})


def test_ties_count_for_the_ground_truth():
    results = retrieval_metrics(np.full((2, 2), 0.3), [0, 1])
    check_equal(results, {"t2v_r1": 100, "v2t_r1": 100})


def test_dual_softmax_demotes_a_hub_video():
    # video 1 scores high for every text; with DSL it goes to the text that fits it best (text 1)
    sim = np.array([[0.50, 0.52],
                    [0.10, 0.60]])
    plain = retrieval_metrics(sim, [0, 1])
    dsl = retrieval_metrics(sim, [0, 1], dual_softmax=True)
    assert plain["t2v_r1"] == 50 and plain["rerank"] == "none"
    assert dsl["t2v_r1"] == 100 and dsl["rerank"] == "dual_softmax" and dsl["temperature"] == 0.01
    # at a high temperature the prior is nearly flat and the hub wins again
    assert retrieval_metrics(sim, [0, 1], dual_softmax=True, temperature=100.0)["t2v_r1"] == 50


def test_bad_inputs():
    with pytest.raises(ValueError, match="num_texts"):
        retrieval_metrics(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="video indices"):
        retrieval_metrics(np.zeros((2, 2)), [0, 2])


def test_matching_rerank_scores_each_directions_top_k_once():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(6, 5))
    match = rng.normal(size=(6, 5))  # the cross-encoder's score of every (text, video) pair
    calls = []

    def pair_scores(texts, videos):
        calls.extend(zip(texts.tolist(), videos.tolist()))
        assert len(texts) <= 4
        return match[texts, videos]

    t2v, v2t = rerank_top_k(sim, 2, pair_scores, batch=4)
    assert len(calls) == len(set(calls))  # each distinct pair scored once
    for i in range(6):  # each text: its 2 most similar videos carry their match scores, the others -inf
        top = set(np.argsort(-sim[i])[:2])
        assert {v for v in range(5) if np.isfinite(t2v[i, v])} == top
        assert all(t2v[i, v] == match[i, v] for v in top)
    for v in range(5):  # each video: its 2 most similar texts
        top = set(np.argsort(-sim[:, v])[:2])
        assert {i for i in range(6) if np.isfinite(v2t[i, v])} == top
        assert all(v2t[i, v] == match[i, v] for i in top)
    scored = np.isfinite(t2v) | np.isfinite(v2t)
    assert set(calls) == {(i, v) for i in range(6) for v in range(5) if scored[i, v]}


def test_matching_rerank_reorders_within_k_and_ranks_the_rest_after():
    # text 0's caption video (0) is 2nd by similarity and 1st by matching; text 1's (1) is 3rd: outside k = 2
    sim = np.array([[0.5, 0.9, 0.1],
                    [0.9, 0.1, 0.5],
                    [0.1, 0.2, 0.9]])
    match = np.array([[5.0, 1.0, 0.0],
                      [1.0, 9.0, 2.0],
                      [0.0, 0.0, 3.0]])
    t2v, v2t = rerank_top_k(sim, 2, lambda t, v: match[t, v])
    results = retrieval_metrics(t2v, [0, 1, 2], v2t_similarity=v2t)
    assert results["rerank"] == "match"
    # t2v ranks: 1 (re-ranked), 3 (k + 1: not among the top 2), 1
    check_equal(results, {"t2v_r1": 200 / 3, "t2v_meanr": 5 / 3})
    with pytest.raises(ValueError, match="dual softmax"):
        retrieval_metrics(t2v, [0, 1, 2], v2t_similarity=v2t, dual_softmax=True)


CAPTIONS = [("a dog runs", "a dog plays"), (), ("a cat sleeps",)]  # video 1 has no caption


def test_caption_protocols_build_the_queries():
    texts, text_to_video = caption_queries(CAPTIONS, "first")
    assert texts == ["a dog runs", "a cat sleeps"] and text_to_video.tolist() == [0, 2]
    texts, text_to_video = caption_queries(CAPTIONS, "all")
    assert texts == ["a dog runs", "a dog plays", "a cat sleeps"] and text_to_video.tolist() == [0, 0, 2]
    texts, text_to_video = caption_queries(CAPTIONS, "paragraph")
    assert texts == ["a dog runs a dog plays", "a cat sleeps"] and text_to_video.tolist() == [0, 2]
    with pytest.raises(ValueError, match="retrieval.captions='each'"):
        caption_queries(CAPTIONS, "each")


def test_every_caption_protocol_by_hand():
    _, text_to_video = caption_queries(CAPTIONS, "all")
    sim = np.array([[0.2, 0.1, 0.8],   # "a dog runs": video 0 2nd (video 2 above it)
                    [0.7, 0.9, 0.1],   # "a dog plays": video 0 2nd (the uncaptioned video 1 above it)
                    [0.3, 0.0, 0.6]])  # "a cat sleeps": video 2 1st
    # t2v ranks 2, 2, 1. v2t: video 0's column (0.2, 0.7, 0.3): its best caption (0.7) is 1st;
    # video 2's column (0.8, 0.1, 0.6): its caption (0.6) is 2nd; video 1 has no caption, so no v2t query.
    results = retrieval_metrics(sim, text_to_video)
    check_equal(results, {"t2v_r1": 100 / 3, "t2v_r5": 100, "t2v_medr": 2, "t2v_meanr": 5 / 3,
                          "v2t_r1": 50, "v2t_medr": 1.5, "v2t_meanr": 1.5})


def test_matching_rerank_of_paragraph_queries_by_hand():
    texts, text_to_video = caption_queries(CAPTIONS, "paragraph")  # "a dog runs a dog plays" -> 0, "a cat.." -> 2
    sim = np.array([[0.2, 0.9, 0.5],    # paragraph 0: its video 0 is 3rd by similarity, outside k = 2
                    [0.1, 0.3, 0.8]])   # paragraph 1: its video 2 is 1st by similarity
    match = np.array([[4.0, 1.0, 2.0],
                      [0.0, 5.0, 1.0]])
    t2v, v2t = rerank_top_k(sim, 2, lambda t, v: match[t, v])
    results = retrieval_metrics(t2v, text_to_video, v2t_similarity=v2t)
    # t2v: paragraph 0 ranks its video 3rd (k + 1: only videos 1 and 2 are re-scored); paragraph 1's top 2 are
    # videos 2 and 1, the matching head puts video 1 (5.0) above video 2 (1.0): 2nd.
    # v2t (2 texts: every text is in each video's top 2): video 0's column (4.0, 0.0): its paragraph 1st;
    # video 2's column (2.0, 1.0): its paragraph 2nd; video 1 has no caption.
    check_equal(results, {"t2v_r1": 0, "t2v_r5": 100, "t2v_medr": 2.5, "t2v_meanr": 2.5,
                          "v2t_r1": 50, "v2t_medr": 1.5, "v2t_meanr": 1.5})
    assert results["rerank"] == "match" and len(texts) == 2


def test_caption_protocol_config():
    config = ml_collections.ConfigDict()
    assert caption_protocol(config) == "first"
    config.retrieval = dict(captions="paragraph")
    assert caption_protocol(config) == "paragraph"
    config.retrieval.captions = "every"
    with pytest.raises(ValueError, match="retrieval.captions='every'"):
        caption_protocol(config)

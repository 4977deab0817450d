"""Video-text pre-training (InternVideo-MM): symmetric InfoNCE on the global batch + captioning cross-entropy.

Evaluation on the eval split (multi-view: each video's unit features averaged over its views):
  zero-shot classification from prompt-ensembled class names (`config.zero_shot`), and text->video /
  video->text retrieval with each video's first caption (or every caption, or its paragraph:
  `config.retrieval.captions`), reported twice: plain cosine ranking (`retrieval/...`)
  and with dual-softmax re-ranking (`retrieval_dsl/...`), so numbers are never ambiguous.
"""
import jax
import jax.numpy as jnp
import numpy as np

from invideo_jax import losses
from invideo_jax.data import pipeline
from invideo_jax.data.tokenizer import load_tokenizer
from invideo_jax.evaluate import clip_features, loop, multiview, retrieval, zero_shot
from invideo_jax.models.multimodal import VideoTextModel
from invideo_jax.models.uniformerv2 import UniFormerV2
from invideo_jax.train.tasks import apply_model, model_variables


def caption_targets(ids):
    """(targets, mask) for next-token prediction: the tokens after the start token, up to (not including) the
    end token (the largest id of a row); the end token and the padding are not predicted, as the official."""
    targets = ids[:, 1:]
    end = jnp.argmax(ids, axis=-1)[:, None]
    mask = jnp.arange(1, ids.shape[1])[None] < end
    return targets, mask


def class_names(spec) -> list:
    """`config.zero_shot.class_names`: a tuple of names, or a text file with one name per line."""
    if isinstance(spec, str):
        with open(spec) as f:
            return [line.strip() for line in f if line.strip()]
    return list(spec)


# The CLIP text tower pools at the largest id of a row, which must be the end token.
TOKENIZERS = ("clip", "words")


class Task:
    def __init__(self, config):
        self.config = config
        if config.data.tokenizer not in TOKENIZERS:
            raise ValueError(f"data.tokenizer={config.data.tokenizer!r}: the videotext task needs one of "
                             f"{TOKENIZERS} (the end token must be the largest id)")
        self.model = VideoTextModel(**config.model.kwargs)
        self.init_from_mapping = {"": "params"}  # the whole model (e.g. converted CLIP or InternVideo-MM weights)
        self._tokenizer = None
        self._check_vocabulary()

    def tokenizer(self):
        """The data's tokenizer, loaded once."""
        if self._tokenizer is None:
            d = self.config.data
            self._tokenizer = load_tokenizer(d.tokenizer, d.tokenizer_path, context_length=d.text_length)
        return self._tokenizer

    def _check_vocabulary(self):
        d = self.config.data
        try:
            tokenizer = self.tokenizer()
        except FileNotFoundError:
            return  # not written yet (e.g. a pipeline's data stage); the data pipeline reports it
        if tokenizer.vocab_size > self.model.text_config["vocab_size"]:
            raise ValueError(f"the {d.tokenizer} tokenizer has {tokenizer.vocab_size} ids but "
                             f"model.kwargs.text_config.vocab_size is {self.model.text_config['vocab_size']}")

    def init_variables(self, rng, batch):
        return self.model.init({"params": rng, "dropout": rng}, batch["video"], batch["text"])

    def loss(self, params, model_state, batch, rng):
        out, model_state = apply_model(self.model, params, model_state, batch["video"], batch["text"], rng=rng)
        loss, metrics = losses.contrastive_loss(out["video_features"], out["text_features"], out["logit_scale"])
        metrics = dict(metrics, contrastive_loss=loss)
        if "caption_logits" in out:
            targets, mask = caption_targets(batch["text"])
            caption, accuracy = losses.caption_loss(out["caption_logits"], targets, mask)
            loss = loss + self.config.loss.caption_weight * caption
            metrics.update(caption_loss=caption, caption_accuracy=accuracy)
        return loss, (dict(metrics, loss=loss), model_state)

    def predict(self, params, model_state, batch):
        variables = model_variables(params, model_state)
        video, _ = self.model.apply(variables, batch["video"], method=VideoTextModel.encode_video)
        text = self.model.apply(variables, batch["text"], method=VideoTextModel.encode_text)["features"]
        return {"video_features": video, "text_features": text}

    def evaluate(self, state, predict, mesh) -> dict:
        return evaluate_video_text(state, predict, mesh, self.config, self.encode_text, self.tokenizer)

    def encode_text(self, params, batch_stats, ids):
        """Text features (N, E) of token ids (zero-shot prompts)."""
        variables = model_variables(params, batch_stats)
        return self.model.apply(variables, ids, method=VideoTextModel.encode_text)["features"]

    # ---------------------------------------------------------------- inference (invideo_jax/inference.py)
    def encode_video(self, params, model_state, video) -> dict:
        """The projected video embedding (unnormalised); the video tower's tokens (B, t, 1 + h*w, C)."""
        video_features, tokens = self.model.apply(model_variables(params, model_state), video,
                                                  method=VideoTextModel.encode_video)
        t, h, w = UniFormerV2(**self.model.visual_config).grid
        return {"features": video_features, "tokens": clip_features.on_grid(tokens, (t, 1 + h * w))}

    def logit_scale(self, params) -> float:
        """The factor on cosine similarities before a softmax: exp(the learned log scale)."""
        return float(np.exp(np.asarray(params["logit_scale"])))


def rerank_k(config) -> int:
    """`config.rerank.k`: the matching re-ranking's k (0, or no such field: off)."""
    return config.rerank.k if "rerank" in config else 0


def caption_protocol(config) -> str:
    """`config.retrieval.captions` (no such field: 'first'), checked."""
    protocol = config.retrieval.captions if "retrieval" in config else "first"
    if protocol not in retrieval.CAPTION_PROTOCOLS:
        raise ValueError(f"retrieval.captions={protocol!r} must be one of {retrieval.CAPTION_PROTOCOLS}")
    return protocol


def evaluate_video_text(state, predict, mesh, config, encode_text, tokenizer, text_states=None, match=None) -> dict:
    """Retrieval (plain and dual-softmax) and, with `config.zero_shot.class_names`, zero-shot classification on the
    eval split; shared by the video-text tasks (videotext, align).

    `predict` gives per-view `video_features` and `text_features` (and optionally `audio_video_features`, reported
    as `retrieval_av/...`); each video's views' unit features are averaged and normalised. Its texts follow
    `config.retrieval.captions` (`retrieval.CAPTION_PROTOCOLS`): 'first' (default) uses the first caption `predict`
    encoded; 'all' and 'paragraph' read every caption of the eval annotations and encode them here.
    `encode_text(params, batch_stats, ids)` -> (N, E) text features (of those captions and the zero-shot prompts),
    `tokenizer()` -> the data's tokenizer (called only for them).

    Matching re-ranking (`config.rerank.k` > 0, `text_states` and `match`), under every caption protocol: `predict`
    also gives per-view `context` tokens and the caption's `text_ids`; each video's views' context tokens are
    averaged (as the official averages test segments); the queries' token ids (the first captions' from `predict`,
    else the protocol's texts tokenized) -> `text_states(ids)` -> (hidden, mask), and `match(hidden, mask,
    context)` -> (n,) match logits re-scores each direction's top k (`retrieval_match/...`).
    """
    views = list(loop.predictions(state, predict, config, mesh))
    out = {k: np.concatenate([v[k] for v in views]) for k in views[0]}
    keep = out["mask"] > 0
    videos, first_view, view_video = np.unique(out["video_index"][keep], return_index=True, return_inverse=True)

    def per_video(features):  # the mean of each video's views' unit features, normalised
        pooled = np.zeros((len(videos), features.shape[-1]))
        np.add.at(pooled, view_video, losses.l2_normalize(features[keep]))
        return losses.l2_normalize(pooled)

    video = per_video(out["video_features"])
    protocol = caption_protocol(config)
    if protocol == "first":
        text, text_to_video = losses.l2_normalize(out["text_features"][keep][first_view]), np.arange(len(videos))
        texts = None
    else:
        source = pipeline.make_source(config.data, "eval")
        texts, text_to_video = retrieval.caption_queries([source[int(i)][0].captions for i in videos], protocol)
        encode = jax.jit(encode_text)
        text = losses.l2_normalize(zero_shot.encode_texts(
            lambda ids: encode(state.params, state.batch_stats, ids), tokenizer(), texts))
    result = {"num_videos": len(videos), "num_texts": len(text_to_video)}
    sides = [("", video)]
    if "audio_video_features" in out:  # the align task with audio: retrieval of the audio-visual features too
        sides.append(("_av", per_video(out["audio_video_features"])))
    for side, features in sides:
        for prefix, dual_softmax in (("retrieval", False), ("retrieval_dsl", True)):
            metrics = retrieval.retrieval_metrics(text @ features.T, text_to_video, dual_softmax=dual_softmax)
            result.update({f"{prefix}{side}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    k = rerank_k(config)
    if match is not None and k:
        context = np.zeros((len(videos), *out["context"].shape[1:]), np.float32)
        np.add.at(context, view_video, out["context"][keep])
        context /= np.bincount(view_video)[:, None, None]
        ids = out["text_ids"][keep][first_view] if texts is None else tokenizer().encode(texts)
        hidden, mask = text_states(ids)
        t2v, v2t = retrieval.rerank_top_k(text @ video.T, k, lambda t, v: match(hidden[t], mask[t], context[v]))
        metrics = retrieval.retrieval_metrics(t2v, text_to_video, v2t_similarity=v2t)
        result.update({f"retrieval_match/{name}": value for name, value in metrics.items()
                       if isinstance(value, (int, float))})
        result["retrieval_match/k"] = k
    zs = config.zero_shot
    if zs.class_names:
        labels = out["label"][keep][first_view]
        encode = jax.jit(encode_text)
        names = class_names(zs.class_names)
        templates = tuple(zs.templates) or zero_shot.DEFAULT_TEMPLATES
        embeddings = zero_shot.class_embeddings(lambda ids: encode(state.params, state.batch_stats, ids), tokenizer(),
                                                names, templates)
        logits = zero_shot.zero_shot_logits(video, embeddings)
        known = labels >= 0
        accuracy = multiview.top_k_accuracy(logits[known], labels[known], [k for k in (1, 5) if k <= len(names)])
        result.update({f"zero_shot/{k}": v for k, v in accuracy.items()})
    return result

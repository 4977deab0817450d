"""InternVideo2 stage 2: video-text alignment (model `invideo_jax.models.align.VideoTextAlign`), optionally with audio.

Image-text data (`data.image_batches`): still images come in batches of their own with one frame, which the vision
encoder runs as images (its `img_pos_embed` with `sep_image_video_pos_embed`, else the frames' mean of `pos_embed`),
masked at `mask.image_ratio`; every loss is the same on them (the official `use_image` batches of its image loaders).

Per step, on the clips' visible tokens (random masking of `config.mask.ratio` of the patch tokens, fixed count; the
official masks 0.8 of a video's tokens in stage 2; 0 = every token):
  CON  symmetric InfoNCE on the global batch between the unit video and text features, similarities divided by the
       learnable `temp` clamped to [loss.temp_min, loss.temp_max] (official [0.001, 0.5]); each clip's own caption
       is its only positive (the official also counts clips with the same sample index as positives; our batches
       carry no index, and a training list has one row per clip); `con_loss`
  VTM  video-text matching ("MAC"): for each video one hard-negative text and for each text one hard-negative video,
       drawn (step rng) from the softmax of the in-batch similarities with the positive excluded
       (`losses.sample_hard_negatives`, within groups of `loss.vtm_groups`); the fusion encoder's CLS of the B
       positive and 2B negative pairs -> `itm_head` -> 2-way cross-entropy; `vtm_loss`, `vtm_accuracy`
  MLM  BERT masking of the captions (`loss.mlm_prob` of the tokens, never [PAD] / start / end token -- the official
       excludes only [PAD] and [CLS], so its [SEP] can be masked; 80% [MASK], 10% a random id, 10% kept), the
       corrupted text through the text then the fusion layers (conditioned on the vision tokens), the tied MLM head;
       cross-entropy at the selected tokens; `mlm_loss`, `mlm_accuracy`
loss = loss.con * CON + loss.vtm * VTM + loss.mlm * MLM (a zero weight skips that part's computation). Other
metrics: `temperature` (clamped), in-batch `video_to_text_accuracy` / `text_to_video_accuracy`.

Hard negatives come from the example's own group of B / vtm_groups consecutive examples; vtm_groups=0 uses the
number of batch shards of the mesh (each device's examples, as the official samples within each GPU's batch, and
the negatives' tokens are then gathered without leaving the device); 1 samples from the whole global batch.

Evaluation (the videotext task's `evaluate_video_text`): text->video / video->text retrieval, plain and with
dual-softmax re-ranking, and zero-shot classification from `config.zero_shot` prompts, on the unit features of the
unmasked encoder; with `config.rerank.k` > 0 also the official matching re-ranking (k_test: each text's top-k
videos and each video's top-k texts scored by the `itm_head` match logit, `retrieval_match/...`; the official's
reported numbers use it with k = 128), under every caption protocol (`retrieval.captions`: the paragraph queries
of DiDeMo are scored as joined paragraphs). The audio-visual side is not re-ranked.

Captions need a tokenizer with a mask token and a padding id equal to `model.kwargs.pad_id`: 'bert' (the official
BERT-large-uncased WordPiece vocabulary) or 'words' (the demo's).

Audio (`model.kwargs.audio_config` set: the 6B `InternVideo2_Stage2_audiovisual`): the batches carry 'audio' and
'audio_mask' (`data.audio`), and the same three terms run again on the audio-visual side (official AVTC, AVTM,
AVMLM, weights `loss.av_con`, `loss.av_vtm`, `loss.av_mlm`; metrics prefixed `av_`): the unit
`av_fusion`([audio_proj, vision_proj]) feature against the captions, hard negatives drawn from its similarities,
`avtm_head` on the context [audio tokens, vision tokens], MLM conditioned on that context. Only examples with audio
take part in them (as anchors, candidates and masked tokens; `audio_fraction` says how many had audio); every
example takes part in the video terms. The audio encoder is frozen (`optim.frozen`, configs/internvideo2_align.py).
Evaluation adds `retrieval_av/...` on the audio-visual features (a video without audio: its video feature).
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from invideo_jax import losses, masking, sharding
from invideo_jax.data.tokenizer import load_tokenizer
from invideo_jax.evaluate import clip_features
from invideo_jax.models import layers
from invideo_jax.models.align import VideoTextAlign, audio_visual_context
from invideo_jax.models.audio import AudioTransformer
from invideo_jax.models.bert import Bert
from invideo_jax.models.internvideo2 import InternVideo2
from invideo_jax.train.tasks.videotext import evaluate_video_text, rerank_k

TOKENIZERS = ("bert", "words")
MATCH_BATCH = 32  # pairs per matching-head call in the re-ranking evaluation (the official batch)
WEIGHTS = ("con", "vtm", "mlm", "av_con", "av_vtm", "av_mlm")


def gather_in_groups(x, index, groups: int):
    """x (B, ...) rows `index` (B,) where each index lies in its own row's group of B / groups consecutive rows;
    gathered inside each group, so a batch sharded into `groups` shards is gathered shard-locally."""
    n = x.shape[0] // groups
    local = (index % n).reshape(groups, n)
    grouped = x.reshape(groups, n, *x.shape[1:])
    local = local.reshape(groups, n, *([1] * (x.ndim - 1)))
    return jnp.take_along_axis(grouped, local, axis=1).reshape(x.shape)


def interleave(*parts):
    """(B, ...) arrays -> (len(parts) * B, ...) with example-major order [p0[0], p1[0], ..., p0[1], ...], so each
    batch shard keeps its own rows (a concatenation would move them between shards)."""
    stacked = jnp.stack(parts, axis=1)
    return stacked.reshape(-1, *stacked.shape[2:])


def matching_loss(logits, weights=None, num_parts: int = 3):
    """2-way cross-entropy of interleaved (positive, negative, negative) pairs' ITM logits: (loss, accuracy), both
    averaged over the pairs with weight > 0 (`weights` (len(logits),); None: all)."""
    labels = jnp.tile(jnp.arange(num_parts) == 0, logits.shape[0] // num_parts).astype(jnp.int32)
    weights = jnp.ones(labels.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
    count = jnp.maximum(weights.sum(), 1.0)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return (loss * weights).sum() / count, ((jnp.argmax(logits, axis=-1) == labels) * weights).sum() / count


def batch_groups(requested: int, batch: int) -> int:
    """`loss.vtm_groups`: as given, or (0) the number of batch shards of the mesh in scope (1 without a mesh)."""
    if requested:
        return requested
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return 1
    groups = 1
    for axis in sharding.BATCH_AXES:
        groups *= mesh.shape.get(axis, 1)
    return groups if batch % groups == 0 and batch // groups >= 2 else 1


def check_audio_fields(audio_config, data) -> None:
    """The data carries audio exactly when the model has an audio encoder, with its mel bins."""
    if bool(audio_config) != bool(data.audio):
        have = "has an audio encoder" if audio_config else "has no audio encoder (model.kwargs.audio_config)"
        raise ValueError(f"data.audio={data.audio} but the model {have}: set both or neither")
    bins = audio_config.get("num_mel_bins", AudioTransformer.num_mel_bins) if audio_config else data.audio_mel_bins
    if bins != data.audio_mel_bins:
        raise ValueError(f"data.audio_mel_bins={data.audio_mel_bins} but model.kwargs.audio_config.num_mel_bins={bins}")


class Task:
    def __init__(self, config):
        self.config = config
        d, cfg = config.data, config.loss
        if d.tokenizer not in TOKENIZERS:
            raise ValueError(f"data.tokenizer={d.tokenizer!r}: the align task needs one of {TOKENIZERS} (a tokenizer "
                             "with a mask token)")
        for name in WEIGHTS:
            if cfg[name] < 0:
                raise ValueError(f"config.loss.{name}={cfg[name]}: expected a weight >= 0")
        if not 0 < cfg.temp_min <= cfg.temp_max:
            raise ValueError(f"config.loss.temp_min={cfg.temp_min}, temp_max={cfg.temp_max}: expected "
                             "0 < temp_min <= temp_max")
        if not 0 <= cfg.mlm_prob <= 1:
            raise ValueError(f"config.loss.mlm_prob={cfg.mlm_prob}: expected a probability")
        if cfg.vtm_groups < 0 or (cfg.vtm_groups and config.batch_size % cfg.vtm_groups):
            raise ValueError(f"config.loss.vtm_groups={cfg.vtm_groups} must be 0 (per batch shard) or divide "
                             f"batch_size {config.batch_size}")
        if cfg.vtm and config.batch_size < 2:
            raise ValueError(f"batch_size {config.batch_size}: VTM hard negatives need at least 2 examples")
        if not 0 <= config.mask.ratio < 1:
            raise ValueError(f"config.mask.ratio={config.mask.ratio}: expected a fraction in [0, 1)")
        self.model = VideoTextAlign(**config.model.kwargs)
        check_audio_fields(self.model.audio_config, d)
        self.num_tokens = math.prod(layers.unbound_module(InternVideo2, self.model.vision_config, "vision_config").grid)
        self.text_encoder = layers.unbound_module(Bert, self.model.text_config, "text_config")  # its settings
        self.init_from_mapping = {"": "params"}  # the whole model (a converted stage-2 checkpoint or an earlier run)
        self._tokenizer = None
        self._match = None  # the jitted matching head of the re-ranking evaluation
        self._check_tokenizer()

    # ---------------------------------------------------------------- text
    def tokenizer(self):
        """The data's tokenizer, loaded once."""
        if self._tokenizer is None:
            d = self.config.data
            self._tokenizer = load_tokenizer(d.tokenizer, d.tokenizer_path, context_length=d.text_length)
        return self._tokenizer

    def _check_tokenizer(self):
        d = self.config.data
        try:
            tokenizer = self.tokenizer()
        except FileNotFoundError:
            return  # not written yet (e.g. a pipeline's data stage); the data pipeline reports it
        vocab = self.text_encoder.vocab_size
        if tokenizer.vocab_size > vocab:
            raise ValueError(f"the {d.tokenizer} tokenizer has {tokenizer.vocab_size} ids but "
                             f"model.kwargs.text_config.vocab_size is {vocab}")
        if tokenizer.pad_id != self.model.pad_id:
            raise ValueError(f"the {d.tokenizer} tokenizer pads with id {tokenizer.pad_id} but model.kwargs.pad_id "
                             f"is {self.model.pad_id}")
        if d.text_length > self.text_encoder.max_len:
            raise ValueError(f"data.text_length={d.text_length} exceeds model.kwargs.text_config.max_len "
                             f"{self.text_encoder.max_len}")

    # ---------------------------------------------------------------- training
    def visible_indices(self, rng, batch: int, frames: int = 0):
        """(B, N_vis) patch tokens kept in training (random masking, fixed count), or None without masking. An image
        batch (`frames` 1, `data.image_batches`) masks `mask.image_ratio` of its one frame's tokens (official
        image_mask_ratio 0.5; default: `mask.ratio`)."""
        vision = self.model.vision_config
        tokens, ratio = self.num_tokens, self.config.mask.ratio
        if frames == 1 != vision.get("num_frames", 8):
            tokens //= vision.get("num_frames", 8) // vision.get("tubelet_size", 1)
            ratio = self.config.mask.get("image_ratio", ratio)
        if not ratio:
            return None
        mask = masking.random_mask(rng, batch, tokens, ratio)
        return masking.split_indices(mask, int(ratio * tokens))[0]

    def init_variables(self, rng, batch):
        return self.model.init({"params": rng, "dropout": rng}, batch["video"], batch["text"],
                               audio=batch.get("audio"), audio_mask=batch.get("audio_mask"))

    def loss(self, params, model_state, batch, rng):
        cfg, model = self.config.loss, VideoTextAlign
        vision_key, text_key, audio_key, video_key, av_key = jax.random.split(rng, 5)
        variables = {"params": params}

        def run(method, *args, key, **kwargs):
            return self.model.apply(variables, *args, method=method, train=True, rngs={"dropout": key}, **kwargs)

        video, ids = batch["video"], batch["text"]
        side = {"ids": ids, "text_mask": ids != self.model.pad_id}
        visible = self.visible_indices(jax.random.fold_in(vision_key, 1), video.shape[0], video.shape[1])
        tokens, pooled = run(model.encode_vision, video, visible, key=vision_key)
        side["hidden"] = run(model.text_hidden, ids, side["text_mask"], key=text_key)
        side["text_features"] = self.model.apply(variables, side["hidden"], method=model.text_features)
        temp = losses.clamp_temperature(params["temp"], cfg.temp_min, cfg.temp_max)
        video_features = self.model.apply(variables, pooled, method=model.video_features)
        total, metrics = self._pair_losses(run, side, temp, video_features, tokens, prefix="", head="itm",
                                           rng=video_key)
        if self.model.audio_config is not None:
            audio_tokens, pooled_audio, has_audio = run(model.encode_audio, batch["audio"], batch["audio_mask"],
                                                        key=audio_key)
            av_features = self.model.apply(variables, pooled, pooled_audio, method=model.audio_video_features)
            context, context_mask = audio_visual_context(audio_tokens, has_audio, tokens)
            av_total, av_metrics = self._pair_losses(run, side, temp, av_features, context, context_mask, has_audio,
                                                     prefix="av_", head="avtm", rng=av_key)
            total += av_total
            metrics.update(av_metrics, audio_fraction=has_audio.mean())
        metrics["temperature"] = temp
        return total, (dict(metrics, loss=total), model_state)

    def _pair_losses(self, run, side, temp, features, context, context_mask=None, valid=None, *, prefix: str,
                     head: str, rng):
        """The weighted CON, VTM and MLM terms (weights `loss.<prefix>con` ...) of one side: unit `features` (B, E)
        and fusion `context` (B, N, C) against the captions, matching scored by the `head` ('itm' or 'avtm') head;
        `valid` (B,) leaves out the other examples (None: all)."""
        cfg, model = self.config.loss, VideoTextAlign
        negatives_key, mlm_key, match_key, mlm_dropout_key = jax.random.split(rng, 4)
        hidden, text_mask, ids = side["hidden"], side["text_mask"], side["ids"]
        if context_mask is None:
            context_mask = jnp.ones(context.shape[:2], bool)
        weights = jnp.ones(ids.shape[0], jnp.float32) if valid is None else valid.astype(jnp.float32)
        total, metrics = jnp.zeros((), jnp.float32), {}
        if cfg[prefix + "con"]:
            con, con_metrics = losses.temperature_contrastive_loss(features, side["text_features"], temp, valid)
            total += cfg[prefix + "con"] * con
            metrics.update({prefix + k: v for k, v in con_metrics.items()})
            metrics[prefix + "con_loss"] = con
        if cfg[prefix + "vtm"]:
            groups = batch_groups(cfg.vtm_groups, ids.shape[0])
            neg_text, neg_video = losses.sample_hard_negatives(negatives_key, features, side["text_features"], temp,
                                                               groups, valid)
            # pairs (video i, text i), (negative video of text i, text i), (video i, negative text of video i)
            logits = run(model.match,
                         interleave(hidden, hidden, gather_in_groups(hidden, neg_text, groups)),
                         interleave(text_mask, text_mask, gather_in_groups(text_mask, neg_text, groups)),
                         interleave(context, gather_in_groups(context, neg_video, groups), context),
                         interleave(context_mask, gather_in_groups(context_mask, neg_video, groups), context_mask),
                         head=head, key=match_key)
            vtm, vtm_accuracy = matching_loss(logits, interleave(weights, weights, weights))
            total += cfg[prefix + "vtm"] * vtm
            metrics.update({prefix + "vtm_loss": vtm, prefix + "vtm_accuracy": vtm_accuracy})
        if cfg[prefix + "mlm"]:
            tokenizer = self.tokenizer()
            corrupted, selected = losses.mlm_inputs(
                mlm_key, ids, mask_prob=cfg.mlm_prob, mask_id=tokenizer.mask_id,
                vocab_size=self.text_encoder.vocab_size,
                special_ids=(tokenizer.pad_id, tokenizer.start_id, tokenizer.end_id))
            logits = run(model.mlm_logits, corrupted, text_mask, context, context_mask, key=mlm_dropout_key)
            mlm, mlm_accuracy = losses.caption_loss(logits, ids, selected & (weights[:, None] > 0))
            total += cfg[prefix + "mlm"] * mlm
            metrics.update({prefix + "mlm_loss": mlm, prefix + "mlm_accuracy": mlm_accuracy})
        return total, metrics

    # ---------------------------------------------------------------- evaluation
    def predict(self, params, model_state, batch):
        model, variables = VideoTextAlign, {"params": params}
        tokens, pooled = self.model.apply(variables, batch["video"], method=model.encode_vision)
        hidden = self.model.apply(variables, batch["text"], method=model.text_hidden)
        out = {"video_features": self.model.apply(variables, pooled, method=model.video_features),
               "text_features": self.model.apply(variables, hidden, method=model.text_features)}
        if rerank_k(self.config):
            out.update(context=tokens, text_ids=batch["text"])
        if self.model.audio_config is not None:
            out["audio_video_features"] = self.model.apply(variables, batch["video"], batch["audio"],
                                                           batch["audio_mask"], method=model.encode_audio_video)
        return out

    def encode_text(self, params, batch_stats, ids):
        """Unit text features (N, E) of token ids (zero-shot prompts)."""
        del batch_stats
        return self.model.apply({"params": params}, ids, method=VideoTextAlign.encode_text)

    def evaluate(self, state, predict, mesh) -> dict:
        return evaluate_video_text(state, predict, mesh, self.config, self.encode_text, self.tokenizer,
                                   text_states=functools.partial(self.text_states, state.params),
                                   match=functools.partial(self.match_logits, state.params))

    def text_states(self, params, ids):
        """(hidden (N, L, W), mask (N, L)) of the captions' token ids (N, L) in text mode, the re-ranking's query
        side, in padded batches of MATCH_BATCH."""
        ids = np.asarray(ids)
        return in_batches(lambda i: self._text_hidden(params, i), ids), ids != self.model.pad_id

    @functools.cached_property
    def _text_hidden(self):
        return jax.jit(lambda params, ids: self.model.apply({"params": params}, ids, method=VideoTextAlign.text_hidden))

    def match_logits(self, params, hidden, text_mask, context):
        """The `itm_head` match logit of each (caption, video context) pair, in padded batches of MATCH_BATCH."""
        if self._match is None:
            self._match = jax.jit(lambda p, h, m, c: self.model.apply({"params": p}, h, m, c,
                                                                      method=VideoTextAlign.match)[:, 1])
        return in_batches(lambda *x: self._match(params, *x), hidden, text_mask, context)

    # ---------------------------------------------------------------- inference (invideo_jax/inference.py)
    def encode_video(self, params, model_state, video) -> dict:
        """The unit projected video embedding of `vision_encoder`'s attention-pooled feature; its tokens
        (B, t, h*w, D) without CLS."""
        del model_state
        kw = dict(dtype=self.model.dtype, param_dtype=self.model.param_dtype)
        encoder = InternVideo2(**dict(kw, **self.model.vision_config))
        out = clip_features.internvideo2(encoder, {"params": params["vision_encoder"]}, video)
        out["features"] = self.model.apply({"params": params}, out["features"], method=VideoTextAlign.video_features)
        return out

    def logit_scale(self, params) -> float:
        """The factor on cosine similarities before a softmax: 1 / temp, clamped as the loss clamps it."""
        cfg = self.config.loss
        return float(1 / np.clip(np.asarray(params["temp"], np.float32), cfg.temp_min, cfg.temp_max))


def in_batches(fn, *arrays, size: int = MATCH_BATCH):
    """fn(*arrays) computed in batches of `size` rows (the last padded with copies of its last row, so a jitted
    `fn` compiles once), as one numpy array."""
    outputs = []
    for start in range(0, len(arrays[0]), size):
        chunk = [x[start:start + size] for x in arrays]
        count = len(chunk[0])
        padded = [np.concatenate([x, np.repeat(x[-1:], size - count, axis=0)]) for x in chunk]
        outputs.append(np.asarray(fn(*padded))[:count])
    return np.concatenate(outputs)

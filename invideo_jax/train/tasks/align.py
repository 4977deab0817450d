"""InternVideo2 stage 2: video-text alignment (model `invideo_jax.models.align.VideoTextAlign`), optionally with audio.

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
unmasked encoder. Not done: the official's re-ranking of the top-k (k_test 128) candidates with the ITM head.

Captions need a tokenizer with a mask token and a padding id equal to `model.kwargs.pad_id`: 'bert' (the official
BERT-large-uncased WordPiece vocabulary) or 'words' (the demo's).

Audio (`model.kwargs.audio_config` set, as the 6B model): the batches carry 'audio' and 'audio_mask' (`data.audio`);
the audio joins the video side of every loss and of the evaluation features (models/align.py). Examples without an
audio track skip the branch; the audio encoder is frozen (`optim.frozen`, configs/internvideo2_align.py).
"""
import jax
import jax.numpy as jnp
import optax

from invideo_jax import losses, masking, sharding
from invideo_jax.data.tokenizer import load_tokenizer
from invideo_jax.models.align import VideoTextAlign
from invideo_jax.models.audio import AudioTransformer
from invideo_jax.train.tasks.videotext import evaluate_video_text

TOKENIZERS = ("bert", "words")
WEIGHTS = ("con", "vtm", "mlm")


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


def matching_loss(logits, num_parts: int = 3):
    """2-way cross-entropy of interleaved (positive, negative, negative) pairs' ITM logits: (loss, accuracy)."""
    labels = jnp.tile(jnp.arange(num_parts) == 0, logits.shape[0] // num_parts).astype(jnp.int32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()
    return loss, jnp.mean(jnp.argmax(logits, axis=-1) == labels)


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
        vision = self.model.vision_config
        patch, tubelet = vision.get("patch_size", 14), vision.get("tubelet_size", 1)
        self.num_tokens = (vision.get("num_frames", 8) // tubelet) * (vision.get("image_size", 224) // patch) ** 2
        self.init_from_mapping = {"": "params"}  # the whole model (a converted stage-2 checkpoint or an earlier run)
        self._tokenizer = None
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
        vocab = self.model.text_config["vocab_size"]
        if tokenizer.vocab_size > vocab:
            raise ValueError(f"the {d.tokenizer} tokenizer has {tokenizer.vocab_size} ids but "
                             f"model.kwargs.text_config.vocab_size is {vocab}")
        if tokenizer.pad_id != self.model.pad_id:
            raise ValueError(f"the {d.tokenizer} tokenizer pads with id {tokenizer.pad_id} but model.kwargs.pad_id "
                             f"is {self.model.pad_id}")
        if d.text_length > self.model.text_config.get("max_len", 512):
            raise ValueError(f"data.text_length={d.text_length} exceeds model.kwargs.text_config.max_len")

    # ---------------------------------------------------------------- training
    def visible_indices(self, rng, batch: int):
        """(B, N_vis) patch tokens kept in training (random masking, fixed count), or None without masking."""
        ratio = self.config.mask.ratio
        if not ratio:
            return None
        mask = masking.random_mask(rng, batch, self.num_tokens, ratio)
        return masking.split_indices(mask, int(ratio * self.num_tokens))[0]

    def init_variables(self, rng, batch):
        return self.model.init({"params": rng, "dropout": rng}, batch["video"], batch["text"],
                               audio=batch.get("audio"), audio_mask=batch.get("audio_mask"))

    def loss(self, params, model_state, batch, rng):
        cfg, model = self.config.loss, VideoTextAlign
        keys = dict(zip(("mask", "negatives", "mlm", "vision", "text", "match", "mlm_dropout"),
                        jax.random.split(rng, 7)))
        variables = {"params": params}

        def run(method, *args, key):
            return self.model.apply(variables, *args, method=method, train=True, rngs={"dropout": key})

        video, ids = batch["video"], batch["text"]
        text_mask = ids != self.model.pad_id
        tokens, pooled, context_mask = run(model.encode_vision, video,
                                           self.visible_indices(keys["mask"], video.shape[0]), batch.get("audio"),
                                           batch.get("audio_mask"), key=keys["vision"])
        hidden = run(model.text_hidden, ids, text_mask, key=keys["text"])
        video_features = self.model.apply(variables, pooled, method=model.video_features)
        text_features = self.model.apply(variables, hidden, method=model.text_features)
        temp = losses.clamp_temperature(params["temp"], cfg.temp_min, cfg.temp_max)
        total = jnp.zeros((), jnp.float32)
        metrics = {"temperature": temp}

        if cfg.con:
            con, con_metrics = losses.temperature_contrastive_loss(video_features, text_features, temp)
            total += cfg.con * con
            metrics.update(con_metrics, con_loss=con)
        if cfg.vtm:
            groups = batch_groups(cfg.vtm_groups, ids.shape[0])
            neg_text, neg_video = losses.sample_hard_negatives(keys["negatives"], video_features, text_features,
                                                               temp, groups)
            # pairs (video i, text i), (negative video of text i, text i), (video i, negative text of video i)
            logits = run(model.match,
                         interleave(hidden, hidden, gather_in_groups(hidden, neg_text, groups)),
                         interleave(text_mask, text_mask, gather_in_groups(text_mask, neg_text, groups)),
                         interleave(tokens, gather_in_groups(tokens, neg_video, groups), tokens),
                         interleave(context_mask, gather_in_groups(context_mask, neg_video, groups), context_mask),
                         key=keys["match"])
            vtm, vtm_accuracy = matching_loss(logits)
            total += cfg.vtm * vtm
            metrics.update(vtm_loss=vtm, vtm_accuracy=vtm_accuracy)
        if cfg.mlm:
            tokenizer = self.tokenizer()
            corrupted, selected = losses.mlm_inputs(
                keys["mlm"], ids, mask_prob=cfg.mlm_prob, mask_id=tokenizer.mask_id,
                vocab_size=self.model.text_config["vocab_size"],
                special_ids=(tokenizer.pad_id, tokenizer.start_id, tokenizer.end_id))
            logits = run(model.mlm_logits, corrupted, text_mask, tokens, context_mask, key=keys["mlm_dropout"])
            mlm, mlm_accuracy = losses.caption_loss(logits, ids, selected)
            total += cfg.mlm * mlm
            metrics.update(mlm_loss=mlm, mlm_accuracy=mlm_accuracy)
        return total, (dict(metrics, loss=total), model_state)

    # ---------------------------------------------------------------- evaluation
    def predict(self, params, model_state, batch):
        variables = {"params": params}
        video = self.model.apply(variables, batch["video"], batch.get("audio"), batch.get("audio_mask"),
                                 method=VideoTextAlign.encode_video)
        text = self.model.apply(variables, batch["text"], method=VideoTextAlign.encode_text)
        return {"video_features": video, "text_features": text}

    def encode_text(self, params, batch_stats, ids):
        """Unit text features (N, E) of token ids (zero-shot prompts)."""
        del batch_stats
        return self.model.apply({"params": params}, ids, method=VideoTextAlign.encode_text)

    def evaluate(self, state, predict, mesh) -> dict:
        return evaluate_video_text(state, predict, mesh, self.config, self.encode_text, self.tokenizer)

"""VideoChat2 stage 1 as the task 'videochat2_qformer': the Q-Former aligned with a frozen video encoder.

`QFormerAlign` (models/videochat_qformer.py); loss = loss.vtc * VTC + loss.vtm * VTM + loss.cap * CAP:
  VTC  symmetric InfoNCE of the query-mean similarity / temp (temp clamped to [0.001, 0.5])
  VTM  for each video one hard-negative text and for each text one hard-negative video, drawn from the softmax of the
       similarities without the positive; `itm_head` on the B positive and 2B negative pairs, 2-way cross-entropy
  CAP  the caption, [DEC] first, through the Q-Former under the UniLM mask; the next-token cross-entropy over the
       caption's tokens (padding excluded)
Captions come from the data pipeline ('json' annotations, `data.tokenizer` 'bert' or 'words': [CLS]-first ids).
The encoder runs in evaluation mode without gradient, and the config freezes it (`optim.frozen`).
"""
import jax
import jax.numpy as jnp

from invideo_jax import losses
from invideo_jax.data.tokenizer import load_tokenizer
from invideo_jax.models.videochat_qformer import QFormerAlign
from invideo_jax.train.tasks import apply_model


def vtm_logits_and_labels(rng, similarity, match, vision, text, text_mask):
    """VTM over B positives and 2B hard negatives: (logits (3B, 2), labels (3B,)). `similarity` (B, B) video x
    text / temp; `match(vision, text, text_mask)` -> (n, 2)."""
    text_key, video_key = jax.random.split(rng)
    sim = jax.lax.stop_gradient(similarity)
    neg_text = jax.random.categorical(text_key, losses.hard_negative_logits(sim), axis=-1)
    neg_video = jax.random.categorical(video_key, losses.hard_negative_logits(sim.T), axis=-1)
    logits = match(jnp.concatenate([vision, vision, vision[neg_video]]),
                   jnp.concatenate([text, text[neg_text], text]),
                   jnp.concatenate([text_mask, text_mask[neg_text], text_mask]))
    batch = similarity.shape[0]
    return logits, jnp.concatenate([jnp.ones(batch, jnp.int32), jnp.zeros(2 * batch, jnp.int32)])


class Task:
    def __init__(self, config):
        self.config = config
        if config.data.tokenizer not in ("bert", "words"):
            raise ValueError(f"data.tokenizer={config.data.tokenizer!r}: stage 1 needs 'bert' or 'words' "
                             "([CLS]-first captions)")
        self.model = QFormerAlign(**config.model.kwargs)
        self.init_from_mapping = {"vision_encoder": "params/vision_encoder"}
        self._pad = self._dec = None

    def special_ids(self) -> tuple:
        """(pad id, [DEC] id): [DEC] is the Q-Former vocabulary's last id (bert-base-uncased + [DEC])."""
        if self._pad is None:
            d = self.config.data
            self._pad = load_tokenizer(d.tokenizer, d.tokenizer_path, context_length=d.text_length).pad_id
            self._dec = self.model.qformer_config.get("vocab_size", 30523) - 1
        return self._pad, self._dec

    def init_variables(self, rng, batch):
        text = jnp.ones((batch["video"].shape[0], 4), jnp.int32)
        return self.model.init({"params": rng, "dropout": rng}, batch["video"], text, text, text)

    def loss(self, params, model_state, batch, rng):
        pad, dec = self.special_ids()
        cfg = self.config.loss
        text = batch["text"]
        text_mask = (text != pad).astype(jnp.int32)
        caption_ids = text.at[:, 0].set(dec)
        forward_key, vtm_key, match_key = jax.random.split(rng, 3)
        out, _ = apply_model(self.model, params, {}, batch["video"], text, text_mask, caption_ids, rng=forward_key)
        temp = losses.clamp_temperature(out["temp"])
        similarity = jnp.einsum("bqd,cd->bcq", out["query_features"], out["text_features"]).mean(-1) / temp
        vtc, metrics = losses.symmetric_info_nce(similarity)
        match = lambda v, t, m: apply_model(self.model, params, {}, v, t, m, rng=match_key,
                                            method=QFormerAlign.match)[0]
        logits, labels = vtm_logits_and_labels(vtm_key, similarity, match, out["vision"], text, text_mask)
        vtm = losses.softmax_cross_entropy(logits, jax.nn.one_hot(labels, 2))
        cap, cap_accuracy = losses.caption_loss(out["caption_logits"][:, :-1], text[:, 1:], text_mask[:, 1:])
        loss = cfg.vtc * vtc + cfg.vtm * vtm + cfg.cap * cap
        metrics = dict(metrics, loss=loss, vtc_loss=vtc, vtm_loss=vtm, cap_loss=cap, cap_accuracy=cap_accuracy,
                       vtm_accuracy=jnp.mean(jnp.argmax(logits, -1) == labels), temp=temp)
        return loss, (metrics, model_state)

    def predict(self, params, model_state, batch):
        del model_state
        pad, dec = self.special_ids()
        text = batch["text"]
        out = self.model.apply({"params": params}, batch["video"], text, (text != pad).astype(jnp.int32),
                               text.at[:, 0].set(dec))
        return {"query_features": out["query_features"], "text_features": out["text_features"]}


"""A causal language model trained on plain text (the task 'language_model'): the demo's LLM learns the captions
before the VideoChat2 stages use it.

`CausalLM` (models/llm.py) from `config.model.kwargs`, its parameters under `llm/` (the VideoChat layout, so that
stage 2's `init_from.llm` restores `params/llm` from this stage's checkpoint). Texts: every caption of
`data.train_annotations` ('json' annotations). A row is [BOS] text [EOS] in the LLM tokenizer
(`language_model.tokenizer`, a directory data/llm_tokenizer.py reads), right-padded or cut to
`language_model.length` tokens; the loss is the next-token cross-entropy over the tokens after BOS (EOS included),
averaged over the batch's tokens. Step i's rows are texts drawn at random by a generator seeded with (seed, host,
i), so a restored run continues with the same batches.
"""
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from invideo_jax.data import llm_tokenizer
from invideo_jax.data.annotations import read_annotations
from invideo_jax.models.llm import CausalLM
from invideo_jax.train.tasks.videochat import lm_loss, mean_nll


def default_language_model_config() -> ml_collections.ConfigDict:
    """`config.language_model`: the tokenizer directory and the row length in tokens."""
    return ml_collections.ConfigDict(dict(tokenizer="", length=16))


def encode_texts(tokenizer, texts, length: int) -> dict:
    """int32 `ids` (N, length): [BOS] text [EOS] then padding; int32 `mask` (N, length): 1 = token."""
    ids = np.full((len(texts), length), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(texts), length), np.int32)
    for row, text in enumerate(texts):
        tokens = (tokenizer.encode(text, bos=True) + [tokenizer.eos_id])[:length]
        ids[row, :len(tokens)], mask[row, :len(tokens)] = tokens, 1
    return {"ids": ids, "mask": mask}


class TextBatches:
    """Step index -> a batch of random texts (a grain random-access map)."""

    def __init__(self, texts, tokenizer, length: int, batch_size: int, seed: int):
        self.texts, self.tokenizer, self.length, self.batch_size, self.seed = texts, tokenizer, length, batch_size, seed

    def __call__(self, step: int) -> dict:
        picked = np.random.default_rng([self.seed, step]).integers(len(self.texts), size=self.batch_size)
        return encode_texts(self.tokenizer, [self.texts[k] for k in picked], self.length)


class Task:
    def __init__(self, config):
        self.config, self.lm = config, config.language_model
        self.model = CausalLM(**config.model.kwargs)
        self.init_from_mapping = {"llm": "params/llm"}

    def tokenizer(self):
        if not self.lm.tokenizer:
            raise ValueError("config.language_model.tokenizer is empty: name the LLM tokenizer's directory")
        tokenizer = llm_tokenizer.load(self.lm.tokenizer)
        if tokenizer.vocab_size > self.model.vocab_size:
            raise ValueError(f"config.language_model.tokenizer {self.lm.tokenizer} has {tokenizer.vocab_size} tokens, "
                             f"more than the model's vocab_size {self.model.vocab_size}")
        return tokenizer

    def texts(self) -> list:
        path = self.config.data.train_annotations
        texts = [c for video in read_annotations(path, "json", self.config.data.root) for c in video.captions]
        if not texts:
            raise ValueError(f"data.train_annotations {path}: no captions to train the language model on")
        return texts

    def train_iterator(self, *, seed, batch_size, process_index=None, process_count=None):
        process_index = jax.process_index() if process_index is None else process_index
        batches = TextBatches(self.texts(), self.tokenizer(), self.lm.length, batch_size,
                              int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0]))
        return iter(grain.MapDataset.range(2 ** 62).map(batches).to_iter_dataset())

    def stored_batch_shapes(self, batch_size: int) -> dict:
        shape = jax.ShapeDtypeStruct((batch_size, self.lm.length), jnp.int32)
        return {"ids": shape, "mask": shape}

    def init_variables(self, rng, batch):
        del batch
        variables = self.model.init(rng, jnp.zeros((1, 2), jnp.int32))
        return {"params": {"llm": variables["params"]}}

    def _logits(self, params, batch):
        return self.model.apply({"params": params["llm"]}, batch["ids"], mask=batch["mask"])["logits"]

    def loss(self, params, model_state, batch, rng):
        del rng
        loss, accuracy = lm_loss(self._logits(params, batch), batch["ids"], batch["mask"])
        return loss, ({"loss": loss, "accuracy": accuracy}, model_state)

    def predict(self, params, model_state, batch):
        """Per-row mean negative log-likelihood of the tokens after BOS."""
        del model_state
        return {"nll": mean_nll(self._logits(params, batch), batch["ids"], batch["mask"])}

"""LLaMA / Mistral tokenizers from a local model directory (no network), and prompts tokenized piece by piece.

`load(DIR)` reads DIR/tokenizer.json with `tokenizers` (what transformers' fast tokenizers use); the BOS / EOS / PAD
tokens come from tokenizer_config.json or special_tokens_map.json (defaults `<s>`, `</s>`; PAD = EOS as VideoChat2
sets it). A directory with only a SentencePiece `tokenizer.model` is read through transformers, which needs the
`sentencepiece` package for that file (not a dependency of this project): the error says so.

VideoChat2 tokenizes the pieces of a prompt separately, without special tokens (pitfall P8): each piece starts a new
SentencePiece "sentence", so it gets its own leading-space marker, and the ids differ from tokenizing the joined
string. `encode_pieces` reproduces that; `prompt_with_placeholder` splits a prompt at its video placeholder and
leaves `num_visual` slots for the visual tokens (models/videochat.py splices them in).
"""
import dataclasses
import json
import os
from typing import Sequence

import numpy as np
import tokenizers

DEFAULT_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>"}


@dataclasses.dataclass(frozen=True)
class LlmTokenizer:
    backend: tokenizers.Tokenizer
    bos_id: int
    eos_id: int
    pad_id: int

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, bos: bool = False) -> list:
        """Token ids of `text` without special tokens ([BOS] first with `bos`)."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if bos else list(ids)

    def encode_pieces(self, pieces: Sequence[str], bos: bool = True) -> list:
        """Each piece tokenized on its own, concatenated; one [BOS] before the first with `bos`."""
        ids = [self.bos_id] if bos else []
        for piece in pieces:
            ids += self.encode(piece)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def prompt_with_placeholder(self, text: str, placeholder: str, num_visual: int, bos: bool = True) -> tuple:
        """(ids, visual_mask) numpy: `text` split at `placeholder` (exactly once), the parts tokenized separately
        (one [BOS] first), `num_visual` PAD slots where the placeholder was, marked True in `visual_mask`."""
        parts = text.split(placeholder)
        if len(parts) != 2:
            raise ValueError(f"the prompt must hold the placeholder {placeholder!r} exactly once: {text!r}")
        before, after = self.encode_pieces(parts[:1], bos=bos), self.encode(parts[1])
        ids = np.asarray([*before, *[self.pad_id] * num_visual, *after], np.int32)
        visual = np.zeros(len(ids), bool)
        visual[len(before):len(before) + num_visual] = True
        return ids, visual


def load(model_dir: str) -> LlmTokenizer:
    """The tokenizer of a transformers LLaMA / Mistral directory; see the module docstring."""
    specials = dict(DEFAULT_SPECIALS)
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                found = json.load(f)
            specials.update({k: _content(v) for k, v in found.items()
                             if k in ("bos_token", "eos_token", "pad_token") and v})
    json_file, sp_file = os.path.join(model_dir, "tokenizer.json"), os.path.join(model_dir, "tokenizer.model")
    if os.path.isfile(json_file):
        backend = tokenizers.Tokenizer.from_file(json_file)
    elif os.path.isfile(sp_file):
        backend = _from_sentencepiece(model_dir)
    else:
        raise FileNotFoundError(f"no tokenizer in {model_dir}: expected tokenizer.json (or a SentencePiece "
                                f"tokenizer.model)")
    ids = {}
    for key in ("bos_token", "eos_token", "pad_token"):
        token = specials.get(key, specials["eos_token"])
        ids[key] = backend.token_to_id(token)
        if ids[key] is None:
            raise ValueError(f"{model_dir}: the {key} {token!r} is not in the tokenizer's vocabulary")
    return LlmTokenizer(backend, ids["bos_token"], ids["eos_token"], ids["pad_token"])


def _content(value):
    return value["content"] if isinstance(value, dict) else value


def _from_sentencepiece(model_dir: str) -> tokenizers.Tokenizer:
    import importlib.util

    if importlib.util.find_spec("sentencepiece") is None:
        raise ImportError(f"{model_dir} has a SentencePiece tokenizer.model but no tokenizer.json: reading it needs "
                          f"`pip install sentencepiece` (or save the tokenizer once as tokenizer.json)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True).backend_tokenizer

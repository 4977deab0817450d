"""LLaMA-style tokenizers from a local directory: ids as transformers' tokenizer gives them, pieces apart (P8)."""
import numpy as np
import pytest
import transformers

from invideo_jax.data import llm_tokenizer
from tests import hf_tiny


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    hf_tiny.train_tokenizer(str(path))
    return str(path)


def test_ids_equal_transformers_tokenizer(model_dir):
    ours = llm_tokenizer.load(model_dir)
    reference = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (1, 2, 2)  # pad = eos, as VideoChat2 sets it
    for text in ["a video of a cat", " the dog runs", "[INST] What happens? [/INST]", "zebra-42 ünï"]:
        assert ours.encode(text) == reference(text, add_special_tokens=False)["input_ids"]
        assert ours.encode(text, bos=True) == [reference.bos_token_id] + ours.encode(text)
    ids = ours.encode("a video of a cat")
    assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True) == "a video of a cat"


def test_pieces_are_tokenized_apart(model_dir):
    tok = llm_tokenizer.load(model_dir)
    pieces = ["[INST] <Video>", "</Video> [/INST]"]
    separate = tok.encode_pieces(pieces)
    assert separate == [1] + tok.encode(pieces[0]) + tok.encode(pieces[1])
    assert separate[1:] != tok.encode("".join(pieces))  # each piece gets its own leading-space marker


def test_prompt_with_placeholder_marks_the_visual_slots(model_dir):
    tok = llm_tokenizer.load(model_dir)
    ids, visual = tok.prompt_with_placeholder("[INST] <Video><VideoHere></Video> [/INST]", "<VideoHere>", 5)
    before, after = tok.encode_pieces(["[INST] <Video>"]), tok.encode("</Video> [/INST]")
    np.testing.assert_array_equal(ids, before + [tok.pad_id] * 5 + after)
    assert visual.sum() == 5 and visual[len(before):len(before) + 5].all()
    with pytest.raises(ValueError, match="exactly once"):
        tok.prompt_with_placeholder("no placeholder", "<VideoHere>", 5)


def test_missing_tokenizer_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        llm_tokenizer.load(str(tmp_path))
    (tmp_path / "tokenizer.model").write_bytes(b"")
    if not __import__("importlib").util.find_spec("sentencepiece"):
        with pytest.raises(ImportError, match="sentencepiece"):
            llm_tokenizer.load(str(tmp_path))

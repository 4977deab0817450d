"""VideoChat2 instruction data: label masks per template against hand-built token sequences and against the official
masking arithmetic (split the joined string, measure rstripped parts); records; single-kind batches."""
import json

import ml_collections
import numpy as np
import pytest
from PIL import Image

from invideo_jax.data import instruction, llm_tokenizer
from invideo_jax.data.instruction import QA, InstructionRecord
from invideo_jax.data.video import write_video
from tests import hf_tiny

Q = 3  # visual slots
CONVERSATION = (QA("Answer well.", "What happens?", "a cat plays"), QA("", "the dog runs?", "the ball"))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    hf_tiny.train_tokenizer(str(path))
    return llm_tokenizer.load(str(path))


@pytest.fixture(scope="module")
def word_tok(tmp_path_factory):
    """Merges never span a space, as SentencePiece: the official masking's length assertion holds."""
    path = tmp_path_factory.mktemp("word_tok")
    hf_tiny.train_tokenizer(str(path), split_words=True)
    return llm_tokenizer.load(str(path))


def encode(tok, template, qa, length=120, msg=""):
    before, pieces = instruction.conversation(template, qa, msg)
    return instruction.encode_conversation(tok, before, pieces, Q, length, instruction.bos_after_visual(template))


def layout(tok, before, after, length=120, bos_after=False):
    """Hand-built ids and label mask: [BOS] before [PAD]*Q ([BOS]) then (text, supervised) pieces, right-padded."""
    ids = [tok.bos_id] + tok.encode(before) + [tok.pad_id] * Q + ([tok.bos_id] if bos_after else [])
    labels = [False] * len(ids)
    for text, supervised in after:
        ids += tok.encode(text)
        labels += [supervised] * len(tok.encode(text))
    pad = length - len(ids)
    return np.asarray(ids + [tok.pad_id] * pad), np.asarray(labels + [False] * pad), len(ids)


HAND_BUILT = {
    "mistral": ("Answer well. [INST] <Video>",
                [("</Video> [/INST]", False), ("[INST] What happens? [/INST]", False), ("a cat plays </s>", True),
                 ("[INST] the dog runs? [/INST]", False), ("the ball </s>", True)]),
    "vicuna": ("Answer well. ###Human: <Video>",
               [("</Video>", False), ("###Human:", True), ("What happens?", False), ("###Assistant: a cat plays", True),
                ("###Human:", True), ("the dog runs?", False), ("###Assistant: the ball", True), ("###", True)]),
    "internvideo2": ("Answer well.[INST] <Video>",
                     [("</Video>[/INST]", False), ("[INST] What happens? [/INST]", False), ("a cat plays</s>", True),
                      ("[INST] the dog runs? [/INST]", False), ("the ball</s>", True)]),
}


@pytest.mark.parametrize("template", instruction.TEMPLATES)
def test_label_mask_equals_hand_built_sequence(tok, template):
    out = encode(tok, template, CONVERSATION)
    before, after = HAND_BUILT[template]
    ids, labels, used = layout(tok, before, after, bos_after=template == "internvideo2")
    np.testing.assert_array_equal(out["ids"], ids)
    np.testing.assert_array_equal(out["label_mask"], labels)
    np.testing.assert_array_equal(out["mask"], np.arange(len(ids)) < used)  # tokens and visual slots, right padding
    visual = np.flatnonzero(out["visual_mask"])
    np.testing.assert_array_equal(visual, 1 + len(tok.encode(before)) + np.arange(Q))
    supervised = tok.decode(out["ids"][out["label_mask"]], skip_special_tokens=False)
    assert "a cat plays" in supervised and "the ball" in supervised
    assert "What happens" not in supervised and "Answer" not in supervised


def official_string(template, qa):
    """The official `process_qa` conversation strings (it_dataset_mistral.py / it_dataset.py, msg empty)."""
    system = qa[0].i + " " if qa[0].i else ""
    if template == "mistral":
        text = system + "[INST] <Video></Video> [/INST]"
        for t in qa:
            text += (" [INST] " + t.q + " [/INST]" if t.q else "") + " " + t.a + " </s>"
        return text.strip()
    text = system + "###Human: <Video></Video> "
    for t in qa:
        text += ("###Human: " + t.q + " " if t.q else "") + "###Assistant: " + t.a + " "
    return text + "###"


def official_targets(tok, template, text):
    """The supervised flags of p_after's tokens by the official forward()'s arithmetic (videochat2_it_*.py)."""
    n = lambda s: len(tok.encode(s))
    p_after = "</Video>" + text.split("</Video>")[1]
    keep = np.ones(n(p_after), bool)
    if template == "mistral":
        sep1, sep2 = "[INST] ", " [/INST] "
        raw = p_after.split(sep2)
        raw = [r + sep2 for r in raw[:-1]] + raw[-1:]
        cur = n(raw[0].rstrip())
        keep[:cur] = False
        for part in raw[1:-1]:
            total, answer = n(part.rstrip()), n(part.split(sep1)[0].rstrip())
            keep[cur + answer:cur + total] = False
            cur += total
    else:
        sep1, sep2 = "###Human: ", "###Assistant: "
        raw = p_after.split(sep2)
        raw = raw[:1] + [sep2 + r for r in raw[1:]]
        system_len, sep_len, cur = n(raw[0].split(sep1)[0].rstrip()), n(sep1.rstrip()), n(raw[0].rstrip())
        keep[:system_len] = False
        keep[system_len + sep_len:cur] = False
        for part in raw[1:-1]:
            total, answer = n(part.rstrip()), n((part.split(sep1)[0] + sep1).rstrip())
            keep[cur + answer:cur + total] = False
            cur += total
    return keep


@pytest.mark.parametrize("template", ["mistral", "vicuna"])
@pytest.mark.parametrize("qa", [CONVERSATION, (QA("", "", "a red ball rolls"),),
                                (QA("", "why?", "because"), QA("", "", "the end"))])
def test_label_mask_equals_official_arithmetic(word_tok, template, qa):
    tok = word_tok
    out = encode(tok, template, qa)
    start = 1 + len(tok.encode(instruction.conversation(template, qa)[0])) + Q
    expected = official_targets(tok, template, official_string(template, qa))
    assert out["mask"].sum() == start + len(expected)  # the official assertion: pieces add up to the joined text
    np.testing.assert_array_equal(out["label_mask"][start:start + len(expected)], expected)
    assert not out["label_mask"][:start].any() and not out["label_mask"][start + len(expected):].any()


def test_qformer_instruction_per_template():
    assert instruction.qformer_instruction("mistral", CONVERSATION) == "Answer well."
    assert instruction.qformer_instruction("vicuna", CONVERSATION) == "Answer well. What happens?"
    assert instruction.qformer_instruction("internvideo2", CONVERSATION) == ""
    assert instruction.qformer_instruction("vicuna", (QA("", "q", "a"),)) == ""


def test_truncation_keeps_supervised_tokens_or_raises(tok):
    full = encode(tok, "mistral", CONVERSATION)
    length = int(full["mask"].sum()) - 2
    cut = encode(tok, "mistral", CONVERSATION, length=length)
    np.testing.assert_array_equal(cut["ids"], full["ids"][:length])
    np.testing.assert_array_equal(cut["label_mask"], full["label_mask"][:length])
    with pytest.raises(instruction.TooLong):
        encode(tok, "mistral", CONVERSATION, length=1 + len(tok.encode("Answer well. [INST] <Video>")) + Q + 2)
    with pytest.raises(ValueError, match="template"):
        instruction.conversation("llama3", CONVERSATION)


def test_read_instruction_json(tmp_path):
    path = tmp_path / "it.json"
    path.write_text(json.dumps([
        {"video": "a.mp4", "QA": [{"i": "x", "q": "q", "a": "a"}], "start": 1, "end": 2.5},
        {"image": "b.jpg", "QA": [{"q": "", "a": "cap"}]},
        {"video": "c.mp4", "QA": []},
    ]))
    records, skipped = instruction.read_instruction_json(str(path), "/data")
    assert skipped == 1 and len(records) == 2
    assert records[0] == InstructionRecord("/data/a.mp4", False, (QA("x", "q", "a"),), 1.0, 2.5)
    assert records[1].is_image and records[1].qa == (QA("", "", "cap"),)
    for bad, match in [([{"QA": [{"a": "x"}]}], "entry 0: needs a 'video' or 'image'"),
                       ([{"video": "a", "QA": [{"q": "x"}]}], "entry 0: QA 0: .* string 'a'"),
                       ([{"video": "a", "QA": [{"a": "x"}], "start": 3}], "entry 0: 'start' and 'end'"),
                       ([{"video": "a", "QA": "x"}], "'QA' must be a list")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            instruction.read_instruction_json(str(path))


def media_records(tmp_path, tok, **cfg_fields):
    """(records, data config, encode): 3 videos (one with bounds), 2 images and a missing video."""
    rng = np.random.default_rng(0)
    records = []
    for k in range(3):
        write_video(str(tmp_path / f"v{k}.mp4"), rng.integers(0, 255, (12, 32, 32, 3), np.uint8), fps=4)
        records.append(InstructionRecord(str(tmp_path / f"v{k}.mp4"), False, (QA("", "q?", "cat"),),
                                         *((0.5, 2.0) if k == 0 else (None, None))))
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(tmp_path / f"i{k}.png")
        records.append(InstructionRecord(str(tmp_path / f"i{k}.png"), True, (QA("", "", "dog"),)))
    records.append(InstructionRecord(str(tmp_path / "missing.mp4"), False, (QA("", "", "gone"),)))
    cfg = ml_collections.ConfigDict(dict(num_frames=4, crop_size=16, rrc_scale=(0.5, 1.0), rrc_ratio=(0.75, 1.33),
                                         flip=True, normalize="imagenet", threads=1, prefetch=1, **cfg_fields))

    def encode_record(record, rng, length):
        return encode(tok, "mistral", record.qa, length=length or 40)

    return records, cfg, encode_record


def test_batches_keep_images_and_videos_apart(tmp_path, tok):
    records, cfg, encode_record = media_records(tmp_path, tok)
    it = instruction.train_iterator(records, cfg, encode_record, seed=0, batch_size=2, process_index=0,
                                    process_count=1)
    kinds, bad = set(), 0
    for _ in range(12):
        batch = next(it)
        assert batch["video"].shape == (2, 4, 16, 16, 3) and batch["ids"].shape == (2, 40)
        answers = [tok.decode(ids[labels]) for ids, labels in zip(batch["ids"], batch["label_mask"])]
        kind = {a.split()[0] for a in answers}  # "cat": a video, "dog": an image
        assert len(kind) == 1, answers  # never a mixed batch
        kinds |= kind
        bad += batch["bad"].sum()
    assert kinds == {"cat", "dog"} and bad >= 1  # the missing video was replaced and counted


def test_cached_videos_give_identical_batches_and_decode_each_file_once(tmp_path, tok, monkeypatch):
    whole = []  # the videos decoded whole (the cache's reads); the plain iterator decodes clips
    decode = instruction.decode_frames

    def counting_decode(path, indices_for, **kwargs):
        if indices_for is np.arange:
            whole.append(path)
        return decode(path, indices_for, **kwargs)

    monkeypatch.setattr(instruction, "decode_frames", counting_decode)
    iterators = {}
    for cache in (False, True):
        records, cfg, encode_record = media_records(tmp_path, tok, cache_videos=cache)
        iterators[cache] = instruction.train_iterator(records, cfg, encode_record, seed=0, batch_size=2,
                                                      process_index=0, process_count=1)
    for _ in range(8):  # about 3 epochs of each kind
        plain, cached = next(iterators[False]), next(iterators[True])
        for key in plain:
            np.testing.assert_array_equal(cached[key], plain[key], err_msg=key)
    readable = [path for path in whole if "missing" not in path]
    assert len(readable) == len(set(readable)) == 5, whole


def test_length_groups_give_batches_of_one_length(tmp_path, tok):
    records, cfg, encode_record = media_records(tmp_path, tok)
    lengths = [40, 40, 60, 40, 40, 60]  # v0 v1 | v2 | i0 i1 | missing (replaced by v2, its group's other record)
    it = instruction.train_iterator(records, cfg, encode_record, seed=0, batch_size=2, lengths=lengths,
                                    process_index=0, process_count=1)
    seen = set()
    for _ in range(12):
        batch = next(it)
        length = batch["ids"].shape[1]
        assert all(batch[key].shape == (2, length) for key in ("ids", "mask", "label_mask", "visual_mask"))
        answers = {tok.decode(ids[labels]).split()[0] for ids, labels in zip(batch["ids"], batch["label_mask"])}
        assert len(answers) == 1 and (length == 40 or answers == {"cat"}), (length, answers)
        seen.add(length)
    assert seen == {40, 60}

"""The demo's chat branch: questions that agree with the rendered videos, its LLM tokenizer, the language-model
stage restoring into VideoChat2 stage 2, the held-out question scoring and the report's chat section."""
import json
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import demo
from invideo_jax import report, stages
from invideo_jax.data import instruction, llm_tokenizer, synthetic, synthetic_chat
from invideo_jax.data.video import write_video
from invideo_jax.evaluate import mvbench, question_set
from invideo_jax.train import init_from, trainer
from invideo_jax.train.tasks import get_task
from invideo_jax.train.tasks import videochat as videochat_task
from tests.compiling import quick_compiles

SPLITS = {"train": 16, "val": 8}  # the `synthetic_videos` fixture (conftest.py): 8 frames of 16 px, seed 0


def _chat(root, split):
    with open(os.path.join(root, f"chat_{split}.json")) as f:
        return json.load(f)


def _rendered_truth(split, index):
    """(colour, shape, class name) drawn again from the video's rendering seed."""
    rng = np.random.default_rng([0, ("train", "val").index(split), index])
    label = index % len(synthetic.CLASSES)
    _, color, shape = synthetic.render_clip(label, rng, num_frames=8, size=16)
    return {"colour": color, "shape": shape, "direction": synthetic.CLASSES[label]}


def _asked(entry):
    """(type, question, answer, candidates or None) of a chat_train record or a chat_val question."""
    if "QA" in entry:
        qa = entry["QA"][0]
        if not qa["i"]:
            return None, qa["q"], qa["a"], None
        assert qa["i"] == mvbench.SYSTEM and qa["q"].startswith(mvbench.SYSTEM + "Question: ")
        assert qa["q"].endswith(mvbench.QUESTION_PROMPT) and qa["a"].startswith(mvbench.ANSWER_PROMPT)
        lines = qa["q"][len(mvbench.SYSTEM + "Question: "):-len(mvbench.QUESTION_PROMPT)].split("\n")
        assert lines[1] == "Options:"
        candidates = [line[4:] for line in lines[2:]]
        assert [line[:4] for line in lines[2:]] == ["(A) ", "(B) ", "(C) ", "(D) "]
        letter, answer = qa["a"][len(mvbench.ANSWER_PROMPT)], qa["a"][len(mvbench.ANSWER_PROMPT) + 3:]
        assert candidates["ABCD".index(letter)] == answer
        return None, lines[0], answer, candidates
    return entry["task"], entry["question"], entry["answer"], entry.get("candidates")


@pytest.mark.parametrize("split", SPLITS)
def test_questions_agree_with_the_rendered_videos_and_the_captions(synthetic_videos, split):
    entries = _chat(synthetic_videos, split)
    with open(os.path.join(synthetic_videos, f"{split}.json")) as f:
        captions = {e["video"]: e["caption"] for e in json.load(f)}
    assert len(entries) == 6 * SPLITS[split]  # 3 types x (multiple choice, open-ended) per video
    seen = {}
    for entry in entries:
        index = int(os.path.basename(entry["video"]).split(".")[0])
        assert entry["video"] == f"videos/{split}/{index:05d}.mp4"
        truth = _rendered_truth(split, index)
        task, question, answer, candidates = _asked(entry)
        kind = next(k for k, wordings in synthetic_chat.PARAPHRASES.items() if question in wordings)
        assert answer == truth[kind]
        if task is not None:
            assert task == f"{kind}_{'open' if candidates is None else 'mc'}"
        if candidates is not None:
            assert len(set(candidates)) == 4 and candidates.count(answer) == 1
            pool = {"colour": synthetic.COLORS, "shape": synthetic.SHAPES, "direction": synthetic.CLASSES}[kind]
            assert set(candidates) <= set(pool)
        caption = captions[entry["video"]][0]  # "a red square moves to the left"
        if kind != "direction":
            assert f" {answer} " in f" {caption} "
        seen.setdefault(entry["video"], []).append((kind, candidates is None))
    assert all(sorted(v) == sorted((k, o) for k in synthetic_chat.TYPES for o in (False, True))
               for v in seen.values())


def test_llm_tokenizer_has_the_template_tags_and_tokenizes_pieces_as_the_whole(synthetic_videos):
    tok = llm_tokenizer.load(os.path.join(synthetic_videos, "llm_tokenizer"))
    assert tok.vocab_size <= synthetic_chat.LLM_VOCAB_SIZE and tok.pad_id == tok.eos_id
    for tag in ("[INST]", "[/INST]", "<Video>", "</Video>", "</s>"):
        assert len(tok.encode(tag)) == 1, tag
    for text in ("rotating counter-clockwise", "Best option:(C) magenta", synthetic.captions(5, "red", "star")[0]):
        assert tok.decode(tok.encode(text)).strip() == text
        assert tok.backend.token_to_id("<unk>") not in tok.encode(text)
    pieces = ["[INST] <Video>", "</Video> [/INST]", "[INST] What colour is the shape? [/INST]", "Best option:("]
    assert tok.encode(" ".join(pieces)) == [i for p in pieces for i in tok.encode(p)]
    prompt = tok.encode(mvbench.ANSWER_PROMPT)  # the evaluation's answer prefix: the trained answer continues it
    assert tok.encode(mvbench.ANSWER_PROMPT + "B) red")[:len(prompt)] == prompt


def test_every_training_conversation_fits_the_demo_length(synthetic_videos):
    tok = llm_tokenizer.load(os.path.join(synthetic_videos, "llm_tokenizer"))
    records, _ = instruction.read_instruction_json(os.path.join(synthetic_videos, "chat_train.json"))
    for record in records:
        before, pieces = instruction.conversation("mistral", record.qa)
        out = instruction.encode_conversation(tok, before, pieces, 16, demo.CHAT_TEXT_TOKENS[3] + 16)
        assert out["mask"][-1] == 0  # room to spare: nothing was cut


def _config(stage_config, root):
    stages._fill(stage_config, root)
    stage_config.data.root = os.path.join(root, "data")
    return stage_config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, synthetic_videos):
    root = str(tmp_path_factory.mktemp("chat"))
    os.symlink(synthetic_videos, os.path.join(root, "data"))
    return root


def test_stage3_batches_are_of_one_bucket_length_and_cut_nothing(workdir):
    task = get_task(_config(demo.get_config("smoke,batch=4").stages.chat_stage3, workdir))
    assert len(task.lengths) == 2  # open-ended questions and multiple choice
    it = task.train_iterator(seed=0, batch_size=4)
    seen = set()
    for _ in range(8):
        batch = next(it)
        seen.add(batch["ids"].shape[1])
        assert not batch["mask"][:, -1].any()  # every conversation ends before its bucket does
    assert seen == set(task.lengths)


@pytest.mark.parametrize("buckets", [(168,), (24, 24), (-1,)])
def test_bad_length_buckets_are_named(workdir, buckets):
    config = _config(demo.get_config("smoke,batch=4").stages.chat_stage3, workdir)
    config.videochat.length_buckets = buckets
    with pytest.raises(ValueError, match="length_buckets"):
        get_task(config)


def abstract_params(config):
    """The model's parameters as shapes (ShapeDtypeStructs on one device): a leaf that a restore does not fill stays
    one, and equals no array."""
    boxed = jax.eval_shape(get_task(config).init_variables, jax.random.PRNGKey(0), None)["params"]
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), nn.unbox(boxed))


def test_language_model_trains_and_its_checkpoint_restores_into_stage2s_llm(workdir):
    arg = demo.get_config("smoke,batch=4")
    lm_config = _config(arg.stages.chat_lm, workdir)
    lm_config.total_steps = 2
    lm_dir = os.path.join(workdir, "chat_lm")
    with quick_compiles(os.path.join(workdir, "xla_cache")):
        summary = trainer.train(lm_config, lm_dir)
    assert summary["steps"] == 2 and np.isfinite(summary["train"]["loss"])
    assert summary["train"]["loss"] < np.log(synthetic_chat.LLM_VOCAB_SIZE) + 1  # near-uniform start, no blow-up
    checkpoints = os.path.join(lm_dir, "checkpoints")
    lm_params = init_from.restore_subtrees(abstract_params(lm_config), {"checkpoint": checkpoints,
                                                                        "mapping": {"": "params"}})
    stage2 = _config(arg.stages.chat_stage2, workdir)
    restored = init_from.restore_subtrees(abstract_params(stage2), dict(stage2.init_from.llm, checkpoint=checkpoints))
    flat = lambda tree: {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}
    ours, trained = flat(restored["llm"]), flat(lm_params["llm"])
    assert ours.keys() == trained.keys()
    assert all(np.array_equal(ours[k], trained[k]) for k in ours)


def test_stage3_without_qformer_text_restores_only_from_stage2():
    kwargs = demo._chat_model(3)
    sources = videochat_task.stage_init_from(3, kwargs, stage1="a", stage2="b")
    assert list(sources.keys()) == ["stage2"] and "qformer/word" not in sources.stage2.mapping
    assert "qformer/query_tokens" in sources.stage2.mapping and "llm/embed_tokens" in sources.stage2.mapping


def test_workdir_is_filled_inside_tuples():
    node = ml_collections.ConfigDict(dict(files=(("{workdir}/a.json", "{workdir}"),), n=3))
    stages._fill(node, "/w")
    assert node.files == (("/w/a.json", "/w"),) and node.n == 3


class ScriptedChat:
    """Replies from a script: {question text: reply}; no model."""
    template = "mistral"

    def __init__(self, replies):
        self.replies = replies

    def read_clip(self, path, bounds=None):
        return np.zeros((1,))

    def encode(self, clips, instructions):
        return clips

    def answers(self, visual, texts, max_new_tokens=100):
        return [next(reply for key, reply in self.replies.items() if key in text) for text in texts]


def test_question_set_scores_by_hand(tmp_path):
    entries = [
        {"video": "a.mp4", "question": "Colour one?", "answer": "red", "candidates": ["blue", "red", "green", "cyan"],
         "task": "colour_mc"},
        {"video": "b.mp4", "question": "Colour two?", "answer": "cyan", "candidates": ["cyan", "red", "green",
                                                                                       "blue"], "task": "colour_mc"},
        {"video": "a.mp4", "question": "Which colour?", "answer": "red", "task": "colour_open"},
        {"video": "c.mp4", "question": "Colour three?", "answer": "red", "candidates": ["blue", "red"],
         "task": "colour_mc"},
        {"video": "b.mp4", "question": "What colour?", "answer": "cyan", "task": "colour_open"},
    ]
    path = tmp_path / "q.json"
    path.write_text(json.dumps(entries))
    replies = {"Colour one?": "B) red", "Colour two?": "", "Colour three?": "A) blue", "Which colour?": "Red.",
               "What colour?": "blue"}
    out = question_set.evaluate(ScriptedChat(replies), mvbench.read_questions(str(path), str(tmp_path)))
    assert out["chat/colour_mc"] == pytest.approx(1 / 3)  # B right; the empty reply and A wrong
    assert out["chat/mc_official"] == pytest.approx(2 / 3)  # the official rule counts the empty reply
    assert out["chat/colour_mc/questions"] == 3
    assert out["chat/colour_mc/chance"] == pytest.approx((1 / 4 + 1 / 4 + 1 / 2) / 3)
    assert out["chat/colour_open"] == 0.5 and out["chat/open"] == 0.5 and out["bad_videos"] == 0
    assert out["predictions"]["correct"].tolist() == [True, False, True, False, False]  # in the list's order
    assert out["predictions"]["ground_truth"].tolist() == ["(B) red", "(A) cyan", "", "(B) red", ""]
    # in batches of 2 (each of one kind, the last one padded): the same records in the same order
    pairs = question_set.evaluate(ScriptedChat(replies), mvbench.read_questions(str(path), str(tmp_path)),
                                  batch_size=2)
    for field, values in out["predictions"].items():
        assert pairs["predictions"][field].tolist() == values.tolist()


def test_report_chat_section_from_a_hand_made_summary(tmp_path):
    video = str(tmp_path / "v.mp4")
    frames = np.zeros((5, 16, 16, 3), np.uint8)
    frames[2] = 200  # the middle frame, bright
    write_video(video, frames, fps=8)
    ev = {"chat/colour_mc": 0.9, "chat/colour_mc/questions": 100, "chat/colour_mc/chance": 0.25,
          "chat/colour_open": 0.8, "chat/colour_open/questions": 100,
          "chat/direction_mc": 0.3, "chat/direction_mc/questions": 100, "chat/direction_mc/chance": 0.25,
          "chat/direction_open": 0.0, "chat/direction_open/questions": 100, "chat/mc": 0.6, "chat/mc_official": 0.61}
    os.makedirs(tmp_path / "chat_stage3")
    np.savez(tmp_path / "chat_stage3" / "predictions.npz", task=np.asarray(["colour_mc", "colour_open"]),
             video=np.asarray([video, video]), question=np.asarray(["Q1", "What colour is the shape?"]),
             answer=np.asarray(["red", "red"]), prediction=np.asarray(["(A) red", "blue"]),
             correct=np.asarray([True, False]))
    config = ml_collections.ConfigDict(dict(report_title="t"))
    text = open(report.write(str(tmp_path), config, {"chat_stage3": {"steps": 4, "eval": ev}})).read()
    assert "## Chat: held-out questions" in text
    assert "| colour | 90.0 ± 3.0 | 25.0 | 80.0 ± 4.0 | 100 / 100 |" in text  # sqrt(.9 * .1 / 100) = 3.0 points
    assert "| direction | 30.0 ± 4.6 | 25.0 | 0.0 ± 0.0 | 100 / 100 |" in text
    assert "- colour multiple choice beats chance by 65.0 ± 6.0 points." in text
    assert "- direction multiple choice and chance are not distinguishable (+5.0 ± 9.2 points)." in text
    assert "61.0% overall against 60.0% strict" in text
    assert "| ![v.mp4](chat_sample_1.png) | What colour is the shape? | blue | red |" in text
    image = np.asarray(Image.open(tmp_path / "chat_sample_1.png"))
    assert image.shape == (64, 64, 3) and image.mean() > 150  # the middle frame, 4x

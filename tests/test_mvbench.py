"""MVBench-style evaluation: the official question text, prompts, frame indices and answer checking against
hand-worked examples (written from the official notebook's rules, not from our output), then a run of the command
on a tiny random VideoChat model and generated videos, its accuracies recounted from the written predictions."""
import json

import numpy as np
import pytest

from invideo_jax.evaluate import mvbench, videochat
from tests import videochat_tiny

SYSTEM = ("Carefully watch the video and pay attention to the cause and sequence of events, the detail and movement "
          "of objects, and the action and pose of persons. Based on your observations, select the best option that "
          "accurately addresses the question.\n")


def test_question_text_and_ground_truth():
    text, truth = mvbench.format_question("What does the person hold?", ["the ball", "a cat", "the box"], "a cat")
    assert text == "Question: What does the person hold?\nOptions:\n(A) the ball\n(B) a cat\n(C) the box"
    assert truth == "(B) a cat"
    with pytest.raises(ValueError, match="'a dog' is not one of the candidates"):
        mvbench.format_question("q", ["a", "b"], "a dog")


def test_prompts_of_each_template():
    question = SYSTEM + "Question: Which way?\nOptions:\n(A) left\n(B) right" + "\nOnly give the best option."
    assert mvbench.SYSTEM == SYSTEM
    assert videochat.prompt("mistral", question, system=SYSTEM, answer_prefix="Best option:(") == (
        SYSTEM + "[INST] <Video><VideoHere></Video> [/INST] [INST] " + SYSTEM
        + "Question: Which way?\nOptions:\n(A) left\n(B) right\nOnly give the best option. [/INST] Best option:(")
    assert videochat.prompt("vicuna", question, system=SYSTEM, answer_prefix="Best option:(") == (
        SYSTEM + "###Human: <Video><VideoHere></Video>\n###Human: " + SYSTEM
        + "Question: Which way?\nOptions:\n(A) left\n(B) right\nOnly give the best option.\n###Assistant: "
          "Best option:(")
    history = [("What is it?", "A red ball.")]
    assert videochat.prompt("mistral", "Where does it go?", history) == (
        "[INST] <Video><VideoHere></Video> [/INST] [INST] What is it? [/INST] A red ball.</s> "
        "[INST] Where does it go? [/INST]")
    assert videochat.prompt("vicuna", "Where does it go?", history) == (
        "###Human: <Video><VideoHere></Video>\n###Human: What is it?\n###Assistant: A red ball.###"
        "Human: Where does it go?\n###Assistant:")
    assert videochat.prompt("internvideo2", "Where does it go?", history) == (
        "[INST] <Video><VideoHere></Video>[/INST] [INST] What is it? [/INST]A red ball.</s> "
        "[INST] Where does it go? [/INST]")


def test_replies_are_cut_as_the_official_answer_cuts_them():
    assert videochat.clean_answer("mistral", " (B) a cat</s> [INST] more") == "(B) a cat"
    assert videochat.clean_answer("vicuna", " Assistant: a red ball###Human: next") == "a red ball"
    assert videochat.clean_answer("vicuna", "(A) left\n###") == "(A) left"


def test_streamed_pieces_hold_back_and_cut_stop_texts():
    pieces = {1: "a", 2: " red", 3: " ball", 4: "#", 5: "#", 6: "#", 7: "Human", 8: "</", 9: "s>", 10: " x"}
    decode = lambda ids: "".join(pieces[i] for i in ids)
    assert list(videochat.reply_pieces([1, 2, 3, 4, 5, 6, 7], decode)) == ["a", " red", " ball"]
    assert list(videochat.reply_pieces([1, 4, 2, 8, 9, 10], decode)) == ["a", "# red"]  # "#" waits for " red"
    assert list(videochat.reply_pieces([1, 8, 2], decode)) == ["a", "</ red"]  # "</" then not "s>": shown late
    assert list(videochat.reply_pieces([4, 4], decode)) == []


def test_segment_centre_frames():
    # 100 frames, whole video: segment 99 / 16 = 6.1875, index k = int(3.09375 + round(6.1875 k))
    np.testing.assert_array_equal(videochat.segment_centres(100, 16),
                                  [3, 9, 15, 22, 28, 34, 40, 46, 53, 59, 65, 71, 77, 83, 90, 96])
    # 2 s to 5 s at 10 fps: frames 20..50, segment 30 / 16 = 1.875 (round half to even at 7.5 and 22.5)
    np.testing.assert_array_equal(videochat.segment_centres(100, 16, fps=10, bounds=(2.0, 5.0)),
                                  [20, 22, 24, 26, 28, 29, 31, 33, 35, 37, 39, 41, 42, 44, 46, 48])
    # an end past the video is clipped to its last frame: 40 frames, 1 s to 9 s at 10 fps -> 10..39, segment 7.25
    np.testing.assert_array_equal(videochat.segment_centres(40, 4, fps=10, bounds=(1.0, 9.0)), [13, 20, 27, 35])


@pytest.mark.parametrize("prediction,correct,letter", [
    ("(B) a cat", True, "B"),
    ("(b).", True, "B"),
    ("(B", True, "B"),
    ("(B)a cat", True, "B"),
    ("(A) the ball", False, "A"),
    ("(AB) cat", False, ""),
    ("(", True, ""),  # pitfall P13: the official rule counts an empty reply as correct
    ("(the cat", False, ""),
])
def test_official_answer_check_and_strict_letter(prediction, correct, letter):
    assert mvbench.official_correct(prediction, "(B) a cat") is correct
    assert mvbench.option_letter(prediction) == letter


def test_open_ended_exact_match_normalisation():
    assert mvbench.normalize_answer(" A  Red circle.") == mvbench.normalize_answer("a red circle")
    assert mvbench.normalize_answer("a red circle") != mvbench.normalize_answer("a red square")


def test_bad_question_files_are_named(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps([{"video": "a.mp4", "question": "q", "answer": "x", "candidates": ["x", "y"]},
                                {"video": "b.mp4", "question": "q", "answer": "z", "candidates": ["x", "y"]}]))
    with pytest.raises(ValueError, match="question 1: the answer 'z'"):
        mvbench.read_questions(str(path))
    path.write_text(json.dumps([{"video": "a.mp4", "answer": "x"}]))
    with pytest.raises(ValueError, match="question 0: needs string fields"):
        mvbench.read_questions(str(path))
    path.write_text(json.dumps([{"video": "a.mp4", "question": "q", "answer": "x", "start": 3, "end": 1}]))
    with pytest.raises(ValueError, match="question 0: 'start' and 'end'"):
        mvbench.read_questions(str(path))


def test_summary_counts_by_task():
    rows = [{"task": "a", "correct": True, "strict_correct": True},
            {"task": "a", "correct": True, "strict_correct": False},  # e.g. an empty reply (P13)
            {"task": "a", "correct": False, "strict_correct": False},
            {"task": "b", "correct": True, "strict_correct": True},
            {"task": "b", "correct": False, "strict_correct": False, "error": "video does not decode"}]
    summary = mvbench.summarize(rows)
    assert summary["per_task"] == {"a": {"correct": 2, "total": 3, "accuracy": 2 / 3},
                                   "b": {"correct": 1, "total": 2, "accuracy": 0.5}}
    assert summary["overall"] == {"correct": 3, "total": 5, "accuracy": 0.6}
    assert summary["strict_accuracy"] == 0.4 and summary["bad_videos"] == 1


@pytest.mark.slow
def test_run_writes_predictions_whose_counts_give_the_accuracies(tmp_path):
    files = videochat_tiny.build(str(tmp_path))
    videos = [p.rsplit("/", 1)[1] for p in files["videos"]]
    questions = [
        {"task": "colour", "video": videos[0], "question": "What colour is the shape?",
         "candidates": ["red", "blue", "green"], "answer": "blue"},
        {"task": "colour", "video": videos[1], "question": "What colour is the shape?",
         "candidates": ["red", "blue"], "answer": "red", "start": 0.5, "end": 2.5},
        {"task": "motion", "video": videos[2], "question": "Where does it move?", "candidates": ["left", "right"],
         "answer": "left"},
        {"task": "motion", "video": videos[2], "question": "Describe the video.", "answer": "a shape moves"},
        {"task": "motion", "video": "../bad.mp4", "question": "Where?", "candidates": ["up", "down"], "answer": "up"},
    ]
    (tmp_path / "questions.json").write_text(json.dumps(questions))
    output = tmp_path / "out" / "predictions.json"
    run = lambda out, *flags: mvbench.main([
        f"--model={videochat_tiny.NAME}", f"--checkpoint={files['checkpoint']}", f"--tokenizer={files['tokenizer']}",
        f"--questions={tmp_path / 'questions.json'}", f"--video_root={tmp_path / 'videos'}", f"--output={out}",
        "--max_new_tokens=6", *flags])
    assert run(output) == 0
    written = json.loads(output.read_text())
    rows, summary = written["predictions"], written["summary"]
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["kind"] for r in rows] == ["multiple_choice"] * 3 + ["open_ended", "multiple_choice"]
    assert [r.get("ground_truth") for r in rows] == ["(B) blue", "(A) red", "(A) left", None, "(A) up"]
    for row in rows[:3]:
        assert row["prediction"].startswith("(") and "\n" not in row["prediction"]
        assert row["correct"] == mvbench.official_correct(row["prediction"], row["ground_truth"])
        assert row["strict_correct"] == (row["letter"] == row["ground_truth"][1])
    assert rows[3]["correct"] == (mvbench.normalize_answer(rows[3]["prediction"]) == "a shape moves")
    assert rows[4]["prediction"] is None and not rows[4]["correct"] and "does not decode" in rows[4]["error"]
    assert summary["bad_videos"] == 1
    for task in ("colour", "motion"):
        mine = [r for r in rows if r["task"] == task]
        count = sum(r["correct"] for r in mine)
        assert summary["per_task"][task] == {"correct": count, "total": len(mine), "accuracy": count / len(mine)}
    assert summary["overall"]["correct"] == sum(r["correct"] for r in rows)
    assert summary["overall"]["accuracy"] == sum(r["correct"] for r in rows) / 5
    assert summary["strict_accuracy"] == sum(r["strict_correct"] for r in rows) / 5
    assert summary["settings"]["frames"] == 16 and summary["settings"]["batch_size"] == mvbench.BATCH_SIZE
    # one question at a time: every record as in the batch (greedy replies do not depend on the batch)
    alone = tmp_path / "out" / "alone.json"
    assert run(alone, "--batch_size=1") == 0
    assert json.loads(alone.read_text())["predictions"] == rows


@pytest.mark.slow
def test_the_qformer_reads_the_instruction_and_its_padding_changes_nothing(tmp_path):
    """A tiny VideoChat whose Q-Former reads text: the instruction changes the visual tokens; padding the instruction
    to a longer row (inference uses the Q-Former's whole position table) leaves them unchanged."""
    import dataclasses

    import jax

    from configs import videochat2 as recipes
    from invideo_jax.data import tokenizer as text_tokenizer
    from invideo_jax.models.videochat import VideoChat

    kwargs = recipes.model_kwargs("tiny", frames=4, scan=False, remat="none", dtype=np.float32, lora=False)
    kwargs["qformer_config"]["text_input"] = True
    model = VideoChat(**kwargs)
    params = model.init(jax.random.PRNGKey(0), *model.dummy_inputs())["params"]
    words = text_tokenizer.train_word_tokenizer([mvbench.SYSTEM, videochat.CHAT_INSTRUCTION], str(tmp_path), 16)
    chat = videochat.ChatModel(model, params, "mistral", None, words, 4, 28, "clip")
    clip = np.random.default_rng(0).normal(size=(4, 28, 28, 3)).astype(np.float32)
    short = np.asarray(chat.visual_tokens(clip, videochat.CHAT_INSTRUCTION))
    assert not np.allclose(short, np.asarray(chat.visual_tokens(clip, "")), atol=1e-4)
    padded = dataclasses.replace(chat, qformer_tokenizer=dataclasses.replace(words, context_length=32))
    np.testing.assert_allclose(np.asarray(padded.visual_tokens(clip, videochat.CHAT_INSTRUCTION)), short, atol=1e-5)

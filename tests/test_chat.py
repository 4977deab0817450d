"""`python -m invideo_jax.chat` as a subprocess on a tiny random VideoChat checkpoint and generated videos: one
question (streamed), a scripted multi-turn session whose history reaches the prompt, a folder, --json, bad input.
The expected replies come from the same model driven in-process through the official prompt layout."""
import json
import os
import subprocess
import sys

import pytest

from invideo_jax.evaluate import videochat
from tests import videochat_tiny

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return videochat_tiny.build(str(tmp_path_factory.mktemp("chat")))


@pytest.fixture(scope="module")
def chat(files):
    return videochat.load(videochat_tiny.NAME, files["checkpoint"], tokenizer=files["tokenizer"])


def run(files, *args, stdin=None, checkpoint=None):
    command = [sys.executable, "-m", "invideo_jax.chat", f"--model={videochat_tiny.NAME}",
               f"--checkpoint={checkpoint or files['checkpoint']}", f"--tokenizer={files['tokenizer']}", *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


def greedy(chat, video, question, history=()):
    visual = chat.visual_tokens(chat.read_clip(video), videochat.CHAT_INSTRUCTION)
    return chat.answer(visual, videochat.prompt(chat.template, question, history), max_new_tokens=8)


def test_one_question_is_streamed(files, chat):
    result = run(files, f"--video={files['videos'][0]}", "--question=What is in the video?", "--greedy",
                 "--max_new_tokens=8")
    assert result.returncode == 0, result.stderr[-2000:]
    expected = greedy(chat, files["videos"][0], "What is in the video?")
    assert expected and result.stdout.splitlines()[-1].strip() == expected


def test_scripted_conversation_keeps_the_history(files, chat):
    video = files["videos"][1]
    result = run(files, f"--video={video}", "--greedy", "--max_new_tokens=8", "--json",
                 stdin="What is in the video?\n\nWhere does it go?\n")
    assert result.returncode == 0, result.stderr[-2000:]
    turns = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(t["turn"], t["question"], t["video"]) for t in turns] == [
        (0, "What is in the video?", video), (1, "Where does it go?", video)]
    first = greedy(chat, video, "What is in the video?")
    assert turns[0]["answer"] == first
    with_history = greedy(chat, video, "Where does it go?", [("What is in the video?", first)])
    assert turns[1]["answer"] == with_history
    assert with_history != greedy(chat, video, "Where does it go?")  # the history changes this reply


def test_a_folder_answers_every_video(files, chat):
    result = run(files, f"--video={os.path.dirname(files['videos'][0])}", "--question=What is it?", "--greedy",
                 "--max_new_tokens=8", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["video"] for r in rows] == sorted(files["videos"])
    assert [r["answer"] for r in rows] == [greedy(chat, v, "What is it?") for v in sorted(files["videos"])]


@pytest.mark.parametrize("case,code,message", [
    ("bad_video", 1, "does not decode"),
    ("missing_checkpoint", 2, "checkpoint not found"),
    ("missing_part", 2, "project_up"),
    ("beams", 2, "--num_beams=2"),
    ("no_question_for_a_folder", 2, "give --question"),
])
def test_bad_input_is_one_line_without_traceback(files, case, code, message):
    args, checkpoint = [f"--video={files['videos'][0]}", "--question=What?"], None
    if case == "bad_video":
        args[0] = f"--video={files['bad_video']}"
    elif case == "missing_checkpoint":
        checkpoint = files["checkpoint"] + "_nowhere"
    elif case == "missing_part":
        checkpoint = files["no_project_up"]
    elif case == "beams":
        args.append("--num_beams=2")
    else:
        args = [f"--video={os.path.dirname(files['videos'][0])}"]
    result = run(files, *args, checkpoint=checkpoint)
    assert result.returncode == code, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_official_layout_files_load_to_the_same_model(files, chat, tmp_path):
    """Our params written in InternVideo2-Chat's key layout (a safetensors directory with the tokenizer, as the
    Hugging Face release) load through the converter to the same weights and replies; at 16 frames the learned
    pos_embed is resampled (1 + 8 x 4 -> 1 + 16 x 4 positions)."""
    import shutil

    import jax
    import numpy as np
    import safetensors.numpy

    from invideo_jax.convert import videochat2

    state = videochat2.to_state_dict(jax.tree.map(np.asarray, chat.params), "internvideo2")
    safetensors.numpy.save_file({k: np.ascontiguousarray(v, np.float32) for k, v in state.items()},
                                str(tmp_path / "model.safetensors"))
    shutil.copy(os.path.join(files["tokenizer"], "tokenizer.json"), tmp_path)
    shutil.copy(os.path.join(files["tokenizer"], "tokenizer_config.json"), tmp_path)
    official = videochat.load(videochat_tiny.NAME, str(tmp_path))
    for (path, mine), theirs in zip(jax.tree_util.tree_leaves_with_path(chat.params),
                                    jax.tree.leaves(official.params)):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs), err_msg=jax.tree_util.keystr(path))
    video = files["videos"][0]
    assert greedy(official, video, "What is it?") == greedy(chat, video, "What is it?")
    longer = videochat.load(videochat_tiny.NAME, str(tmp_path), frames=16)
    assert longer.params["vision_encoder"]["pos_embed"].shape[-2] == 1 + 16 * 4
    assert longer.read_clip(video).shape == (16, 28, 28, 3)

"""The zero-shot CLI: labels ranked for each video and videos ranked for a query, as a direct computation with the
tiny video-text model gives them; too-long text is cut with a warning; corrupt videos are reported and left out."""
import json
import logging
import os

import jax
import numpy as np
import pytest

from invideo_jax import inference, presets, zero_shot_cli
from invideo_jax.train.tasks import get_task
from invideo_jax.convert.api import save
from invideo_jax.data import synthetic, transforms
from invideo_jax.data.tokenizer import train_word_tokenizer
from invideo_jax.data.video import decode_frames, segment_indices, write_video
from invideo_jax.evaluate.zero_shot import DEFAULT_TEMPLATES
from invideo_jax.models.align import VideoTextAlign
from invideo_jax.models.multimodal import VideoTextModel
from tests.tiny_models import random_variables, tiny

LABELS = ["moves up", "moves down", "grows", "shrinks"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero_shot")
    captions = [c for label in range(8) for c in synthetic.captions(label, "red", "square")]
    train_word_tokenizer(captions + [t.format("") for t in DEFAULT_TEMPLATES], str(root / "tokenizer"), 16)
    os.makedirs(root / "videos")
    for i, label in enumerate((2, 3, 6)):
        frames, _, _ = synthetic.render_clip(label, np.random.default_rng(i), num_frames=10 + 3 * i, size=32)
        write_video(str(root / "videos" / f"v{i}.mp4"), frames, fps=8)
    (root / "videos" / "broken.mp4").write_bytes(b"\x00" * 100)
    variables = random_variables(tiny("videotext"), seed=3)
    save(variables, str(root / "checkpoint"))
    model = inference.load(tiny("videotext"), str(root / "checkpoint"),
                          overrides={"data.tokenizer_path": str(root / "tokenizer")})
    paths = [str(root / "videos" / f"v{i}.mp4") for i in range(3)]
    direct = {"video": jax.jit(lambda v, x: model.model.apply(v, x, method=VideoTextModel.encode_video)[0]),
              "text": jax.jit(lambda v, i: model.model.apply(v, i, method=VideoTextModel.encode_text)["features"])}
    return root, model, variables, paths, direct


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def direct_videos(setup):
    """The model on one view per video, made here: 4 frames, one per equal segment, short side 32, centre crop,
    CLIP mean/std."""
    _, _, variables, paths, direct = setup
    clips = []
    for path in paths:
        frames = decode_frames(path, lambda n: segment_indices(n, 4))
        clips.append(transforms.resize_box(frames, transforms.short_side_crop_box(32, 32, 32, 32), 32))
    return unit(direct["video"](variables, transforms.normalize(np.stack(clips), "clip")))


def direct_texts(setup, texts):
    _, model, variables, _, direct = setup
    return unit(direct["text"](variables, model.tokenizer().encode(texts)))


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_labels_ranked_as_the_model_computes(setup, tmp_path, capsys):
    root, model, variables, paths, _ = setup
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(LABELS) + "\n\n")
    rc = zero_shot_cli.main([f"--model={tiny('videotext')}", f"--checkpoint={root / 'checkpoint'}",
                             f"--videos={root / 'videos'}", f"--labels={labels_file}", "--templates=default",
                             f"--tokenizer_path={root / 'tokenizer'}", "--json"])
    assert rc == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert list(result["failed"]) == [str(root / "videos" / "broken.mp4")] and "broken.mp4" in captured.err
    assert [v["video"] for v in result["videos"]] == paths

    videos = direct_videos(setup)
    prompts = direct_texts(setup, [t.format(label) for label in LABELS for t in DEFAULT_TEMPLATES])
    classes = unit(prompts.reshape(len(LABELS), len(DEFAULT_TEMPLATES), -1).mean(axis=1))  # prompt ensemble
    scale = float(np.exp(variables["params"]["logit_scale"]))
    cosine = videos @ classes.T
    probability = softmax(scale * cosine)
    assert result["logit_scale"] == pytest.approx(scale, rel=1e-6)
    for i, video in enumerate(result["videos"]):
        order = np.argsort(-probability[i])
        assert [row["label"] for row in video["labels"]] == [LABELS[c] for c in order]
        np.testing.assert_allclose([row["probability"] for row in video["labels"]], probability[i, order], atol=1e-5)
        np.testing.assert_allclose([row["cosine"] for row in video["labels"]], cosine[i, order], atol=1e-5)

    assert zero_shot_cli.main([f"--model={tiny('videotext')}", f"--checkpoint={root / 'checkpoint'}",
                               f"--videos={root / 'videos'}", "--labels=a,b"]) == 2  # no vocabulary given
    assert "--tokenizer_path" in capsys.readouterr().err


def test_query_ranks_videos_and_long_text_is_cut_with_a_warning(setup, caplog):
    root, model, variables, paths, _ = setup
    query = "a red square moves up " * 4  # 20 words: more than the 14 the 16-token context leaves
    with caplog.at_level(logging.WARNING):
        result = zero_shot_cli.search(model, paths, query)
    assert any("cut to the model's context of 16" in r.getMessage() for r in caplog.records)
    cosine = direct_videos(setup) @ direct_texts(setup, [query])[0]
    order = np.argsort(-cosine)
    assert [v["video"] for v in result["videos"]] == [paths[i] for i in order]
    np.testing.assert_allclose([v["cosine"] for v in result["videos"]], cosine[order], atol=1e-5)
    probability = softmax(model.logit_scale * cosine)  # over the videos
    np.testing.assert_allclose([v["probability"] for v in result["videos"]], probability[order], atol=1e-5)
    # the cut text is the first 14 words between the start and end tokens
    ids = model.tokenizer().encode([query])[0]
    assert ids[0] == model.tokenizer().start_id and ids[-1] == model.tokenizer().end_id


def test_internvideo2_stage2_labels_ranked_as_the_model_computes(setup, tmp_path, capsys):
    """The tiny InternVideo2 video-text model: unit video and text features (the text's attention mask from its pad
    ids), scores softmax(x cosine / temp)."""
    root, _, _, paths, _ = setup
    variables = random_variables(tiny("internvideo2_stage2"), seed=4)
    variables["params"]["temp"] = np.float32(0.05)
    save(variables, str(tmp_path / "checkpoint"))
    rc = zero_shot_cli.main([f"--model={tiny('internvideo2_stage2')}", f"--checkpoint={tmp_path / 'checkpoint'}",
                             f"--videos={root / 'videos'}", f"--labels={','.join(LABELS)}", "--templates=default",
                             f"--tokenizer_path={root / 'tokenizer'}", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert [v["video"] for v in result["videos"]] == paths and result["logit_scale"] == pytest.approx(20.0)

    task = get_task(presets.build_config(presets.get(tiny("internvideo2_stage2")),
                                                     overrides={"data.tokenizer_path": str(root / "tokenizer")}))
    clips = [transforms.resize_box(decode_frames(path, lambda n: segment_indices(n, 4)),
                                   transforms.short_side_crop_box(32, 32, 32, 32), 32) for path in paths]
    ids = task.tokenizer().encode([t.format(label) for label in LABELS for t in DEFAULT_TEMPLATES])
    assert (ids == 0).any()  # padded: the mask matters
    encode = jax.jit(lambda v, video, ids: (task.model.apply(v, video, method=VideoTextAlign.encode_video),
                                            task.model.apply(v, ids, ids != 0, method=VideoTextAlign.encode_text)))
    videos, prompts = map(unit, encode(variables, transforms.normalize(np.stack(clips), "imagenet"), ids))
    classes = unit(prompts.reshape(len(LABELS), len(DEFAULT_TEMPLATES), -1).mean(axis=1))
    cosine = videos @ classes.T
    probability = softmax(cosine / 0.05)
    for i, video in enumerate(result["videos"]):
        order = np.argsort(-probability[i])
        assert [row["label"] for row in video["labels"]] == [LABELS[c] for c in order]
        np.testing.assert_allclose([row["probability"] for row in video["labels"]], probability[i, order], atol=1e-5)
        np.testing.assert_allclose([row["cosine"] for row in video["labels"]], cosine[i, order], atol=1e-5)


def test_labels_and_templates_parsing(tmp_path):
    assert zero_shot_cli.read_labels(" a, b c ,,d ") == ["a", "b c", "d"]
    with pytest.raises(ValueError, match="given twice"):
        zero_shot_cli.read_labels("a,b,a")
    assert zero_shot_cli.read_templates("none") == ("{}",)
    path = tmp_path / "templates.txt"
    path.write_text("a clip of {}\nno placeholder\n")
    with pytest.raises(ValueError, match="exactly one"):
        zero_shot_cli.read_templates(str(path))

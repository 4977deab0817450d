import numpy as np
import pytest

from invideo_jax.data.tokenizer import train_word_tokenizer
from invideo_jax.evaluate.zero_shot import (DEFAULT_TEMPLATES, KINETICS_TEMPLATES, class_embeddings,
                                            zero_shot_logits)

CLASSES = ["running", "jumping", "swimming", "juggling balls"]
TEMPLATES = ("a video of {}.", "a photo of a person {}.", "a demonstration of {}.")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = [t.format(c) for c in CLASSES for t in TEMPLATES]
    return train_word_tokenizer(texts, str(tmp_path_factory.mktemp("words")), context_length=10)


def test_kinetics_templates_as_published():
    assert len(KINETICS_TEMPLATES) == 28 and len(set(KINETICS_TEMPLATES)) == 28
    assert KINETICS_TEMPLATES[:3] == ("a photo of {}.", "a photo of a person {}.", "a photo of a person using {}.")
    assert KINETICS_TEMPLATES[14] == "a example of {}."
    assert KINETICS_TEMPLATES[-1] == "a demonstration of a person practicing {}."
    assert all(t.count("{}") == 1 for t in KINETICS_TEMPLATES + DEFAULT_TEMPLATES)


def test_ensemble_matches_direct_numpy(tokenizer):
    table = np.random.default_rng(0).normal(size=(tokenizer.vocab_size, 16))
    shapes = []

    def encode_text(ids):
        shapes.append(ids.shape)
        return table[ids].sum(axis=1)

    result = class_embeddings(encode_text, tokenizer, CLASSES, TEMPLATES, batch_size=5)
    assert result.shape == (4, 16) and result.dtype == np.float32
    assert set(shapes) == {(5, 10)} and len(shapes) == 3  # 12 prompts, last batch padded
    for c, name in enumerate(CLASSES):
        prompts = [table[tokenizer.encode(t.format(name))[0]].sum(axis=0) for t in TEMPLATES]
        mean = np.mean([p / np.linalg.norm(p) for p in prompts], axis=0)
        np.testing.assert_allclose(result[c], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)


def test_right_class_wins(tokenizer):
    # bag-of-words text features; a video "feature" is its class word's direction plus noise
    vocab = tokenizer.vocab_size

    def encode_text(ids):
        return np.stack([np.bincount(row, minlength=vocab) for row in ids]).astype(np.float32)

    embeds = class_embeddings(encode_text, tokenizer, CLASSES, TEMPLATES)
    word = [tokenizer.backend.token_to_id(name.split()[0]) for name in CLASSES]
    rng = np.random.default_rng(1)
    videos = np.eye(vocab)[word] * 3 + rng.uniform(0, 0.3, (4, vocab))
    logits = zero_shot_logits(videos, embeds)
    assert logits.shape == (4, 4)
    np.testing.assert_array_equal(logits.argmax(axis=1), np.arange(4))
    unit = videos / np.linalg.norm(videos, axis=1, keepdims=True)
    np.testing.assert_allclose(logits, 100 * unit @ embeds.T, rtol=1e-5)
    np.testing.assert_allclose(zero_shot_logits(videos, embeds, scale=1.0), logits / 100, rtol=1e-5)

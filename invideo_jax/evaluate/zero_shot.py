"""Zero-shot classification with prompt ensembles, as CLIP does it: each prompt's text feature is
L2-normalised, the features are averaged over a class's templates and the mean is normalised again
(openai/CLIP notebooks/Prompt_Engineering_for_ImageNet.ipynb; open_clip zero_shot_classifier.py).
Logits are scale * cosine(video, class), scale 100 = CLIP's exp(logit_scale)."""
from typing import Callable, Sequence

import numpy as np

from invideo_jax.data.tokenizer import Tokenizer
from invideo_jax import losses

DEFAULT_TEMPLATES = ("a video of {}.", "a video of a person {}.", "a demonstration of a person {}.")

# The Kinetics-700 templates of the CLIP paper: openai/CLIP data/prompts.md, section Kinetics700.
KINETICS_TEMPLATES = tuple(
    f"{prefix} {middle}{{}}."
    for prefix in ("a photo of", "a video of", "a example of", "a demonstration of")
    for middle in ("", "a person ", "a person using ", "a person doing ", "a person during ",
                   "a person performing ", "a person practicing "))


def class_embeddings(encode_text: Callable, tokenizer: Tokenizer, class_names: Sequence[str],
                     templates: Sequence[str] = DEFAULT_TEMPLATES, batch_size: int = 256) -> np.ndarray:
    """float32 (C, E) unit class embeddings. `encode_text` maps int32 ids (N, L) to features (N, E);
    it sees every prompt of every class in batches of one shape (the last one padded), so a jitted
    function compiles once."""
    prompts = [t.format(name) for name in class_names for t in templates]
    features = losses.l2_normalize(encode_texts(encode_text, tokenizer, prompts, batch_size))
    return losses.l2_normalize(features.reshape(len(class_names), len(templates), -1).mean(axis=1))


def encode_texts(encode_text: Callable, tokenizer: Tokenizer, texts: Sequence[str], batch_size: int = 256):
    """float32 (N, E) features of `texts`, encoded in batches of one shape (the last one padded), so a jitted
    `encode_text` compiles once."""
    ids = tokenizer.encode(list(texts))
    batch_size = min(batch_size, len(ids))
    features = []
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size]
        padded = np.pad(batch, ((0, batch_size - len(batch)), (0, 0)), mode="edge")
        features.append(np.asarray(encode_text(padded), np.float32)[:len(batch)])
    return np.concatenate(features)


def zero_shot_logits(video_features, class_embeddings: np.ndarray, scale: float = 100.0) -> np.ndarray:
    """(N, C) logits: scale * cosine similarity of each video feature (N, E) with each class."""
    return scale * losses.l2_normalize(np.asarray(video_features, np.float32)) @ class_embeddings.T

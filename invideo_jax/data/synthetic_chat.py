"""The demo's chat data: questions about each synthetic video, generated from its ground truth, and the LLM tokenizer.

Three question types per video, from what data/synthetic.py rendered: `colour` (7 colour names), `shape` (4 shape
names) and `direction` (the motion, its class name: "moving left", "rotating clockwise", "growing", ...; 8 classes).
Each type is asked open-ended (the answer is the value alone) and as multiple choice (the value among NUM_OPTIONS
options, the others drawn from the remaining values, the order shuffled); the wording is drawn from PARAPHRASES.
Written beside the videos by `write_split` (data/synthetic.py calls it):
  chat_train.json  the training videos' VideoChat2-IT records (data/instruction.py), one question each; the
                   multiple-choice ones in the MVBench prompt of evaluate/mvbench.py (its system prompt as the
                   system prefix and again before the question, "Only give the best option.", the answer
                   "Best option:(X) value"), so that instruction tuning sees what the evaluation asks
  chat_val.json    the held-out videos' questions in evaluate/mvbench.py's format, "task" = TYPE_mc or TYPE_open
`write_tokenizer` writes llm_tokenizer/: a byte-level BPE (as LLaMA-family tokenizers, every text is encodable and
decodes back exactly) trained on the captions, questions, answers and prompts, with the chat templates' tags
([INST], [/INST], <Video>, </Video>) and <s>, </s>, <unk> as special tokens; each piece of text between special
tokens is stripped of surrounding spaces, so that a prompt tokenizes the same whether its pieces are tokenized
apart (training, pitfall P8) or together (inference).
 data/llm_tokenizer.py reads it.
Every draw comes from a generator seeded by (seed, split, video index): the files are identical on every write.
"""
import json
import os

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from invideo_jax.evaluate import mvbench

NUM_OPTIONS = 4
LLM_VOCAB_SIZE = 640  # the tokenizer's size at most; the demo's LLM has this many rows
PARAPHRASES = {
    "colour": ("What colour is the shape?", "Which colour does the moving object have?",
               "What is the colour of the shape in the video?", "Name the colour of the object."),
    "shape": ("What shape is the object?", "Which shape moves in the video?",
              "What kind of shape is shown?", "Name the shape you see."),
    "direction": ("How does the shape move?", "What motion does the object make?",
                  "Describe the movement of the shape.", "Which way is the object moving?"),
}
TYPES = tuple(PARAPHRASES)
CHAT_SPECIALS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "<Video>", "</Video>")
LLM_TOKENIZER_CONFIG = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def values(classes, colors, shapes) -> dict:
    """The answer values of each question type."""
    return {"colour": tuple(colors), "shape": tuple(shapes), "direction": tuple(classes)}


def questions(truth: dict, choices: dict, rng: np.random.Generator) -> list:
    """Every question about one video: dicts {type, question, answer, candidates (None: open-ended)}; `truth` maps
    each type to the video's value, `choices` each type to its values."""
    out = []
    for kind in TYPES:
        for multiple_choice in (True, False):
            question = str(rng.choice(PARAPHRASES[kind]))
            candidates = None
            if multiple_choice:
                others = [v for v in choices[kind] if v != truth[kind]]
                options = [others[k] for k in rng.choice(len(others), NUM_OPTIONS - 1, replace=False)]
                options.append(truth[kind])
                candidates = [str(options[k]) for k in rng.permutation(NUM_OPTIONS)]
            out.append({"type": kind, "question": question, "answer": truth[kind], "candidates": candidates})
    return out


def instruction_qa(q: dict) -> dict:
    """The VideoChat2-IT QA entry {i, q, a} of a question: multiple choice in the MVBench prompt (module docstring)."""
    if q["candidates"] is None:
        return {"i": "", "q": q["question"], "a": q["answer"]}
    text, truth = mvbench.format_question(q["question"], q["candidates"], q["answer"])
    return {"i": mvbench.SYSTEM, "q": mvbench.SYSTEM + text + mvbench.QUESTION_PROMPT,
            "a": mvbench.ANSWER_PROMPT + truth[1:]}


def write_split(root: str, split: str, videos: list, choices: dict, seed: int) -> str:
    """Writes chat_{split}.json for `videos` [(path, truth {type: value})]; returns its path."""
    entries = []
    for index, (path, truth) in enumerate(videos):
        rng = np.random.default_rng([seed, ("train", "val").index(split), index, 1])
        for q in questions(truth, choices, rng):
            if split == "train":
                entries.append({"video": path, "QA": [instruction_qa(q)]})
            else:
                task = f"{q['type']}_{'open' if q['candidates'] is None else 'mc'}"
                entry = {"video": path, "question": q["question"], "answer": q["answer"], "task": task}
                entries.append(entry if q["candidates"] is None else dict(entry, candidates=q["candidates"]))
    file = os.path.join(root, f"chat_{split}.json")
    with open(file, "w") as f:
        json.dump(entries, f, indent=0)
    return file


def tokenizer_corpus(captions, train_file: str, choices: dict) -> list:
    """The texts the LLM tokenizer is trained on: `captions`, the training questions and answers, every question
    wording and answer value, and the prompts (held-out questions are not read)."""
    from invideo_jax.evaluate import videochat
    from invideo_jax.train.tasks import videochat as videochat_task

    texts = list(captions) + [mvbench.SYSTEM, mvbench.QUESTION_PROMPT, mvbench.ANSWER_PROMPT,
                              videochat.CHAT_INSTRUCTION, videochat_task.STAGE2_PROMPT]
    texts += [text for kind in TYPES for text in (*PARAPHRASES[kind], *choices[kind])]
    with open(train_file) as f:
        texts += [qa[key] for entry in json.load(f) for qa in entry["QA"] for key in ("q", "a")]
    return texts


def write_tokenizer(path: str, texts, vocab_size: int) -> None:
    """Trains the byte-level BPE of the module docstring on `texts` (at most `vocab_size` tokens) into `path`."""
    backend = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    backend.normalizer = normalizers.Strip()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(CHAT_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    os.makedirs(path, exist_ok=True)
    backend.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(LLM_TOKENIZER_CONFIG, f)

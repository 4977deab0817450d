"""MVBench-style evaluation of a VideoChat model over a JSON list of questions, per-question predictions written.

  python -m invideo_jax.evaluate.mvbench --model NAME --checkpoint PATH --questions QUESTIONS.json \
      --video_root DIR --output PREDICTIONS.json [--tokenizer DIR] [--frames 16] [--normalize clip] \
      [--batch_size 8]

QUESTIONS.json: a list of {"video": path (relative to --video_root), "question": str, "answer": str,
"candidates": [str, ...] (multiple choice; without it the question is open-ended), "task": str (default "default"),
optional "start" / "end" seconds}. MVBench's per-task files hold these fields (add "task").

The official protocol (Ask-Anything mvbench.ipynb; evaluate/videochat.py loads, prompts and decodes):
  frames       16 segment centres of [start, end] (the whole video without bounds), short side + centre crop;
               mean/std: CLIP's by default, as the notebook (pitfall P2)
  question     "Question: {question}\\nOptions:\\n(A) {c0}\\n(B) {c1}..." (trailing newline stripped); the ground
               truth "({letter}) {answer}"
  prompts      SYSTEM is the Q-Former's instruction, the conversation's system prefix, and again before the question
               (system_llm); the question ends with "\\nOnly give the best option."; the reply starts after
               "Best option:(" (the assistant turn left open)
  decoding     greedy, 100 new tokens; the prediction is "(" + the reply's first line
  correct      (official check_ans) the prediction's first space-separated word, lower-cased, dots removed, is a
               substring of the ground truth's "(x)", or "(x)" is a substring of that word
Pitfall P13, our documented choice: the official rule counts an empty reply ("(") as correct, since "(" is in every
"(x)". `correct` and `accuracy` keep the official rule, so numbers compare with the published ones; `letter` is the
strictly parsed option ("(" + one letter + ")", space, dot or end) and `strict_accuracy` counts a question correct
only when that letter is the ground truth's.
Open-ended questions: the question alone with the chat prompt, greedy decoding, no answer prefix; the prediction is
the reply's first line, correct when it equals the answer after lower-casing, trimming, collapsing spaces and
dropping a final dot (exact match).
A video that does not decode counts as wrong (its record says why; `bad_videos` counts them).
Questions are answered in batches (`--batch_size` of one kind: multiple choice or open-ended): their clips encoded
together, their prompts left-padded together, greedy decoding for the batch; each reply is the one the question gets
alone.

The output (written atomically): {"summary": {"overall", "per_task": {task: {"correct", "total", "accuracy"}},
"strict_accuracy", "bad_videos", "settings"}, "predictions": [one record per question, in order]}.
"""
import argparse
import json
import os
import re
import sys

import numpy as np

from invideo_jax.data.annotations import read_json_file

SYSTEM = ("Carefully watch the video and pay attention to the cause and sequence of events, the detail and movement "
          "of objects, and the action and pose of persons. Based on your observations, select the best option that "
          "accurately addresses the question.\n")
QUESTION_PROMPT = "\nOnly give the best option."
ANSWER_PROMPT = "Best option:("
RETURN_PROMPT = "("
FRAMES = 16
MAX_NEW_TOKENS = 100
BATCH_SIZE = 8


def format_question(question: str, candidates, answer: str) -> tuple:
    """(question text, ground truth "(x) answer") of a multiple-choice question."""
    if answer not in candidates:
        raise ValueError(f"the answer {answer!r} is not one of the candidates {list(candidates)!r}")
    text = f"Question: {question}\nOptions:\n" + "".join(
        f"({chr(ord('A') + k)}) {c}\n" for k, c in enumerate(candidates))
    return text.rstrip(), f"({chr(ord('A') + list(candidates).index(answer))}) {answer}"


def official_correct(prediction: str, ground_truth: str) -> bool:
    """MVBench's check_ans (see the module docstring; an empty reply "(" is correct, pitfall P13)."""
    option = prediction.lower().split(" ")[0].replace(".", "")
    truth = ground_truth.lower().split(" ")[0]
    return option in truth or truth in option


def option_letter(prediction: str) -> str:
    """The option letter of a prediction "(x)..." parsed strictly (upper case), or '' when there is none."""
    match = re.match(r"\(([A-Za-z])(\)|\s|\.|$)", prediction)
    return match.group(1).upper() if match else ""


def normalize_answer(text: str) -> str:
    return " ".join(text.lower().split()).removesuffix(".").strip()


def read_questions(path: str, root: str = "") -> list:
    """The question records of a JSON list, checked (module docstring); video paths joined to `root`."""
    entries = read_json_file(path)
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty JSON list of questions")
    questions = []
    for k, entry in enumerate(entries):
        where = f"{path}: question {k}"
        if not isinstance(entry, dict) or not all(isinstance(entry.get(f), str) for f in ("video", "question",
                                                                                          "answer")):
            raise ValueError(f"{where}: needs string fields 'video', 'question' and 'answer'")
        candidates = entry.get("candidates")
        if candidates is not None and (not isinstance(candidates, list) or not candidates
                                       or not all(isinstance(c, str) for c in candidates)):
            raise ValueError(f"{where}: 'candidates' must be a non-empty list of strings")
        bounds = None
        if "start" in entry or "end" in entry:
            start, end = entry.get("start"), entry.get("end")
            if not (isinstance(start, (int, float)) and isinstance(end, (int, float)) and 0 <= start < end):
                raise ValueError(f"{where}: 'start' and 'end' must both be seconds with 0 <= start < end")
            bounds = (float(start), float(end))
        record = {"index": k, "task": str(entry.get("task", "default")), "video": os.path.join(root, entry["video"]),
                  "question": entry["question"], "answer": entry["answer"], "candidates": candidates,
                  "bounds": bounds}
        if candidates is not None:
            try:
                record["text"], record["ground_truth"] = format_question(entry["question"], candidates,
                                                                         entry["answer"])
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        questions.append(record)
    return questions


def _prompt(chat, question: dict) -> tuple:
    """(the Q-Former's instruction, the LLM prompt) of a question (see the module docstring)."""
    from invideo_jax.evaluate import videochat

    if question["candidates"] is None:
        return videochat.CHAT_INSTRUCTION, videochat.prompt(chat.template, question["question"])
    return SYSTEM, videochat.prompt(chat.template, SYSTEM + question["text"] + QUESTION_PROMPT, system=SYSTEM,
                                    answer_prefix=ANSWER_PROMPT)


def _scored(record: dict, question: dict, reply: str) -> dict:
    first_line = reply.strip().split("\n")[0]
    if question["candidates"] is None:
        correct = normalize_answer(first_line) == normalize_answer(question["answer"])
        return dict(record, prediction=first_line, letter="", correct=correct, strict_correct=correct)
    prediction = RETURN_PROMPT + first_line
    letter = option_letter(prediction)
    return dict(record, prediction=prediction, letter=letter,
                correct=official_correct(prediction, question["ground_truth"]),
                strict_correct=letter == question["ground_truth"][1])


def answer_questions(chat, questions: list, max_new_tokens: int = MAX_NEW_TOKENS, rows: int = 0) -> list:
    """The prediction records (module docstring) of questions answered together: each clip read once, the clips
    encoded in one batch and the replies decoded in one (greedy: each the reply it gets alone). The model runs on
    `rows` rows (the last question's repeated; 0: one per question whose video decodes), so that batches of one size
    compile once."""
    from invideo_jax.data.video import BadVideo

    records, clips, asked = [], {}, []
    for question in questions:
        record = {k: question[k] for k in ("index", "task", "video", "question", "answer")}
        choice = question["candidates"] is not None
        record["kind"] = "multiple_choice" if choice else "open_ended"
        if choice:
            record["ground_truth"] = question["ground_truth"]
        key = (question["video"], question["bounds"])
        if key not in clips:
            try:
                clips[key] = chat.read_clip(*key)
            except BadVideo as e:
                clips[key] = e
        if isinstance(clips[key], BadVideo):
            record.update(prediction=None, letter="", correct=False, strict_correct=False,
                          error=f"video does not decode: {clips[key]}")
        else:
            asked.append(len(records))
        records.append(record)
    if asked:
        run = asked + asked[-1:] * (rows - len(asked))
        instructions, prompts = zip(*(_prompt(chat, questions[k]) for k in run))
        visual = chat.encode(np.stack([clips[questions[k]["video"], questions[k]["bounds"]] for k in run]),
                             instructions)
        for k, reply in zip(asked, chat.answers(visual, prompts, max_new_tokens=max_new_tokens)):
            records[k] = _scored(records[k], questions[k], reply)
    return records


def answer_all(chat, questions: list, max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = BATCH_SIZE,
               on_answer=None) -> list:
    """`answer_questions` over the whole list in batches of `batch_size` questions of one kind (multiple choice or
    open-ended: similar prompt lengths pad little); the records in the questions' order. `on_answer(record)` is called
    as each is ready."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected >= 1")
    records = [None] * len(questions)
    for choice in (True, False):
        picked = [k for k, q in enumerate(questions) if (q["candidates"] is not None) == choice]
        for first in range(0, len(picked), batch_size):
            batch = picked[first:first + batch_size]
            answered = answer_questions(chat, [questions[k] for k in batch], max_new_tokens, rows=batch_size)
            for k, record in zip(batch, answered):
                records[k] = record
                if on_answer:
                    on_answer(record)
    return records


def summarize(predictions: list) -> dict:
    """Per-task and overall accuracy (total correct / total), the strict accuracy, and the bad videos."""
    def score(rows, key="correct"):
        correct = sum(bool(r[key]) for r in rows)
        return {"correct": correct, "total": len(rows), "accuracy": correct / len(rows) if rows else 0.0}

    tasks = sorted({r["task"] for r in predictions})
    return {"overall": score(predictions),
            "per_task": {t: score([r for r in predictions if r["task"] == t]) for t in tasks},
            "strict_accuracy": score(predictions, "strict_correct")["accuracy"],
            "bad_videos": sum("error" in r for r in predictions)}


def write(path: str, summary: dict, predictions: list) -> None:
    from invideo_jax import files

    text = json.dumps({"summary": summary, "predictions": predictions}, indent=1, ensure_ascii=False)
    files.atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def parse_args(argv):
    from invideo_jax.evaluate import videochat

    parser = argparse.ArgumentParser(prog="python -m invideo_jax.evaluate.mvbench", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    videochat.add_model_flags(parser)
    parser.add_argument("--questions", required=True, help="JSON list of questions (module docstring)")
    parser.add_argument("--video_root", default="", help="folder of the questions' video paths")
    parser.add_argument("--output", required=True, help="the JSON file written (summary + predictions)")
    parser.add_argument("--frames", type=int, default=FRAMES, help="frames per video (official: 16)")
    parser.add_argument("--normalize", default="clip", help="mean/std: clip (the official notebook) or imagenet")
    parser.add_argument("--max_new_tokens", type=int, default=MAX_NEW_TOKENS)
    parser.add_argument("--batch_size", type=int, default=BATCH_SIZE,
                        help="questions answered together (greedy replies do not depend on it)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size={args.batch_size}: expected >= 1")
    return args


def main(argv) -> int:
    args = parse_args(argv)
    from invideo_jax import console, paths
    from invideo_jax.evaluate import videochat

    console.drop_restore_notes()
    try:
        questions = read_questions(paths.resolve(args.questions), paths.resolve(args.video_root))
        chat = videochat.load(args.model, args.checkpoint, tokenizer=args.tokenizer, llm_dir=args.llm_dir,
                              frames=args.frames, normalize=args.normalize,
                              qformer_tokenizer_path=args.qformer_tokenizer)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())[:1000]}", file=sys.stderr)
        return 2
    done = []

    def show(row):
        done.append(row)
        print(f"[{len(done)}/{len(questions)}] {row['task']}: {row['prediction']!r} "
              f"({'correct' if row['correct'] else 'wrong'})", flush=True)

    predictions = answer_all(chat, questions, args.max_new_tokens, args.batch_size, on_answer=show)
    summary = summarize(predictions)
    summary["settings"] = {"model": args.model, "checkpoint": args.checkpoint, "frames": args.frames,
                           "normalize": args.normalize, "max_new_tokens": args.max_new_tokens,
                           "batch_size": args.batch_size,
                           "questions": paths.resolve(args.questions)}
    write(paths.resolve(args.output), summary, predictions)
    for task, s in summary["per_task"].items():
        print(f"{task}: {s['accuracy']:.4f} ({s['correct']}/{s['total']})")
    o = summary["overall"]
    print(f"overall: {o['accuracy']:.4f} ({o['correct']}/{o['total']}); strict letter accuracy "
          f"{summary['strict_accuracy']:.4f}; bad videos {summary['bad_videos']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

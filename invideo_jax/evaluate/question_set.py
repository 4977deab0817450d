"""A chat model's accuracy on a question list (evaluate/mvbench.py's format and protocol), as flat metrics and
per-question arrays: the final evaluation of a VideoChat2 stage-3 run that names `videochat.eval_questions`.

Metrics (each a number, so that the training log can hold them), for every question `task` t:
  chat/t             multiple choice: the strict accuracy (the reply's parsed option letter is the ground truth's;
                     mvbench.py's official rule also counts an empty reply correct, pitfall P13); open-ended: the
                     exact match
  chat/t/questions   how many questions
  chat/t/chance      multiple choice: the mean of 1 / number of options
and chat/mc, chat/open (all multiple-choice / open-ended questions together), chat/mc_official (the official rule),
bad_videos. Predictions (one entry per question, in order): task, video, question, answer, ground_truth ("(x)
value"; '' when open-ended), prediction (the reply as scored; '' when the video did not decode), correct (as in
chat/t).
"""
import numpy as np

from invideo_jax.evaluate import mvbench

PREDICTION_FIELDS = ("task", "video", "question", "answer", "ground_truth", "prediction")


def evaluate(chat, questions: list, max_new_tokens: int = mvbench.MAX_NEW_TOKENS,
             batch_size: int = mvbench.BATCH_SIZE) -> dict:
    """The metrics of the module docstring, with `predictions` (a dict of per-question numpy arrays); the questions
    answered `batch_size` at a time (mvbench.answer_all)."""
    rows = mvbench.answer_all(chat, questions, max_new_tokens, batch_size)
    metrics = {}
    for task in sorted({r["task"] for r in rows}):
        picked = [(r, q) for r, q in zip(rows, questions) if r["task"] == task]
        metrics[f"chat/{task}"] = float(np.mean([r["strict_correct"] for r, _ in picked]))
        metrics[f"chat/{task}/questions"] = len(picked)
        if picked[0][1]["candidates"] is not None:
            metrics[f"chat/{task}/chance"] = float(np.mean([1 / len(q["candidates"]) for _, q in picked]))
    for kind, name in (("multiple_choice", "mc"), ("open_ended", "open")):
        scored = [r for r in rows if r["kind"] == kind]
        if scored:
            metrics[f"chat/{name}"] = float(np.mean([r["strict_correct"] for r in scored]))
            if kind == "multiple_choice":
                metrics["chat/mc_official"] = float(np.mean([r["correct"] for r in scored]))
    metrics["bad_videos"] = sum("error" in r for r in rows)
    predictions = {field: np.asarray([r.get(field) or "" for r in rows]) for field in PREDICTION_FIELDS}
    predictions["correct"] = np.asarray([r["strict_correct"] for r in rows])
    return dict(metrics, predictions=predictions)

"""The pipeline report: report.md with results tables whose accuracies carry standard errors, comparison sentences
generated from the numbers, one loss plot per stage, the held-out accuracies as bars with their intervals, and for
a chat stage (evaluate/question_set.py metrics) its accuracy per question type against chance with sample answers
beside each video's middle frame."""
import math
import os
from typing import NamedTuple

import matplotlib
import numpy as np
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from invideo_jax.data.video import decode_frames  # noqa: E402
from invideo_jax.evaluate import multiview  # noqa: E402
from invideo_jax.train import metrics as metrics_lib  # noqa: E402
from invideo_jax.train.trainer import PREDICTIONS  # noqa: E402

LOSS_PLOT = "plot_losses.png"
ACCURACY_PLOT = "plot_accuracy.png"
CHAT_FRAME = "chat_sample_{}.png"
CHAT_FRAME_SCALE = 4  # the demo's 32-pixel frames shown 4x larger (nearest neighbour)
# A difference counts when it exceeds this many standard errors of the difference (about a 95% interval).
CONFIDENCE_SE = 2


class Estimate(NamedTuple):
    """A measured fraction and its standard error (0 for an exact value such as chance)."""
    value: float
    se: float = 0.0


def binomial(p: float, n: int) -> Estimate:
    """A fraction measured on n independent examples: standard error sqrt(p (1 - p) / n)."""
    return Estimate(p, math.sqrt(p * (1 - p) / n) if n else float("nan"))


def independent_difference(a: Estimate, b: Estimate) -> Estimate:
    """a - b for two estimates with independent errors."""
    return Estimate(a.value - b.value, math.hypot(a.se, b.se))


def paired_difference(hits_a: np.ndarray, hits_b: np.ndarray) -> Estimate:
    """The difference of two accuracies on the same examples (per-example hits, in one order): the mean per-example
    difference and its standard error (a paired test; only the examples where the two disagree carry it)."""
    diff = np.asarray(hits_a, np.float64) - np.asarray(hits_b, np.float64)
    return Estimate(float(diff.mean()), float(diff.std() / math.sqrt(len(diff))))


def compare(name_a: str, name_b: str, diff: Estimate) -> str:
    """A sentence on `diff` = a - b in points, with CONFIDENCE_SE standard errors of it, both to 0.1 point: "A beats
    B by x ± y points" when the difference exceeds that, else "not distinguishable"."""
    value, margin = round(100 * diff.value, 1), round(100 * CONFIDENCE_SE * diff.se, 1)
    if abs(value) > margin:  # decided on the printed numbers, so that the sentence agrees with them
        winner, loser = (name_a, name_b) if value > 0 else (name_b, name_a)
        return f"{winner} beats {loser} by {abs(value):.1f} ± {margin:.1f} points"
    return f"{name_a} and {name_b} are not distinguishable ({value:+.1f} ± {margin:.1f} points)"


def _percent(e: Estimate) -> str:
    return f"{100 * e.value:.1f} ± {100 * e.se:.1f}"


def _fmt(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def measured(results: dict, ref) -> Estimate:
    """The estimate that `ref` names: a number (exact, e.g. chance), a result name (its held-out top-1) or
    'name:metric' (an evaluation metric; retrieval R@K are stored in percent), on the result's videos."""
    if isinstance(ref, (int, float)):
        return Estimate(float(ref))
    name, _, key = ref.partition(":")
    ev = results[name]["eval"]
    key = key or "top1"
    value = ev[key] / 100 if key.startswith("retrieval") else ev[key]
    return binomial(value, ev["num_videos"])


def results_table(results: dict) -> str:
    """Markdown table: one row per stage with its steps, wall time, final train loss and held-out accuracy (% ± one
    standard error)."""
    columns = ["steps", "wall_s", "train loss", "held-out top-1 %", "held-out top-5 %", "held-out videos"]
    lines = ["| stage | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, r in results.items():
        ev = r.get("eval", {})
        accuracy = [_percent(measured(results, f"{name}:{k}")) if k in ev else None for k in ("top1", "top5")]
        values = [r.get("steps"), r.get("wall_s"), r.get("train", {}).get("loss"), *accuracy, ev.get("num_videos")]
        lines.append(f"| {name} | " + " | ".join("" if v is None else _fmt(v) for v in values) + " |")
    return "\n".join(lines)


VIDEOTEXT_COLUMNS = {"zero-shot top1": "zero_shot/top1", "zero-shot top5": "zero_shot/top5",
                     "t2v R@1": "retrieval/t2v_r1", "t2v R@5": "retrieval/t2v_r5", "t2v R@10": "retrieval/t2v_r10",
                     "v2t R@1": "retrieval/v2t_r1", "v2t R@5": "retrieval/v2t_r5",
                     "t2v R@1 DSL": "retrieval_dsl/t2v_r1", "v2t R@1 DSL": "retrieval_dsl/v2t_r1",
                     "t2v R@1 match": "retrieval_match/t2v_r1", "v2t R@1 match": "retrieval_match/v2t_r1"}


def videotext_table(results: dict) -> str:
    """Markdown table of the video-text stages' zero-shot accuracy and retrieval (% ± one standard error), or ''."""
    rows = [name for name, r in results.items() if "retrieval/t2v_r1" in r.get("eval", {})]
    if not rows:
        return ""
    lines = ["| stage | " + " | ".join(VIDEOTEXT_COLUMNS) + " | videos |", "|---" * (len(VIDEOTEXT_COLUMNS) + 2) + "|"]
    for name in rows:
        ev = results[name]["eval"]
        cells = [_percent(measured(results, f"{name}:{k}")) if k in ev else "" for k in VIDEOTEXT_COLUMNS.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ev['num_videos']} |")
    note = ("In % ± one binomial standard error. R@K: plain cosine ranking, with dual-softmax re-ranking (DSL), and "
            "(InternVideo2) with each query's top k re-scored by the matching head (match).")
    return "\n".join(lines + ["", note])


def comparison_table(results: dict, rows) -> str:
    """Markdown table of held-out accuracy for `rows`, (label, result name) pairs, e.g. an ablation."""
    lines = ["| model | from | held-out top-1 % | held-out top-5 % | videos |", "|---|---|---|---|---|"]
    for label, name in rows:
        ev = results.get(name, {}).get("eval", {})
        values = [_percent(measured(results, f"{name}:{k}")) if k in ev else None for k in ("top1", "top5")]
        values.append(ev.get("num_videos"))
        lines.append(f"| {label} | {name} | " + " | ".join("" if v is None else _fmt(v) for v in values) + " |")
    return "\n".join(lines)


def class_predictions(workdir: str, name: str):
    """The per-video class probabilities (`MultiViewAccumulator.predictions`) that classifier stage `name` wrote
    into its PREDICTIONS file, or None."""
    path = os.path.join(workdir, name, PREDICTIONS)
    if not os.path.exists(path):
        return None
    with np.load(path) as f:
        return {k: f[k] for k in f.files} if "probs" in f.files else None


def _class_predictions_of(workdir: str, results: dict, ref):
    """The per-video class probabilities of the result `ref` names (a classifier stage, or an ensemble of them:
    its members' averaged; not a metric), or None."""
    if not isinstance(ref, str) or ":" in ref or ref not in results:
        return None
    members = [class_predictions(workdir, m) for m in results[ref].get("members", [ref])]
    return None if any(m is None for m in members) else multiview.ensemble(members)


def difference(results: dict, a, b, workdir: str = "") -> Estimate:
    """a - b for refs as in `measured`: paired over the videos (`paired_difference`) when both are classifiers whose
    per-video predictions in `workdir` cover the same videos, otherwise with the two errors taken as independent."""
    pa, pb = (_class_predictions_of(workdir, results, ref) if workdir else None for ref in (a, b))
    if pa is not None and pb is not None and np.array_equal(pa["video_index"], pb["video_index"]):
        return paired_difference(multiview.top1_hits(pa), multiview.top1_hits(pb))
    return independent_difference(measured(results, a), measured(results, b))


def claims(results: dict, pairs, workdir: str = "") -> str:
    """One generated sentence per (ref A, ref B) pair of `config.claims` (refs as in `measured`; a number is labelled
    'chance'), each difference as `difference` measures it."""
    label = lambda ref: "chance" if isinstance(ref, (int, float)) else ref
    lines = [f"- {compare(label(a), label(b), difference(results, a, b, workdir))}." for a, b in pairs]
    note = (f"Each difference is given ± {CONFIDENCE_SE} standard errors. Two classifiers are compared video by video "
            "on the same held-out videos (a paired test: the standard error of the mean per-video difference in "
            "correctness, carried by the videos on which they disagree); an accuracy against chance or another "
            "stage's metric takes the binomial standard errors as independent. A difference inside its interval is "
            "reported as not distinguishable. The intervals cover the draw of the held-out videos, not the "
            "randomness of training (seeds, the CPU's rounding).")
    return "\n".join(lines + ["", note])


def loss_plot(workdir: str, stage_names):
    """One PNG with a small panel per stage that logged a loss (each with its own y-axis); its file name or None."""
    curves = {name: [r for r in metrics_lib.read(os.path.join(workdir, name)) if "loss" in r] for name in stage_names}
    curves = {name: rows for name, rows in curves.items() if rows}
    if not curves:
        return None
    columns = min(3, len(curves))
    rows = math.ceil(len(curves) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.3 * columns, 2.4 * rows), squeeze=False)
    for ax, (name, points) in zip(axes.flat, curves.items()):
        ax.plot([r["step"] for r in points], [r["loss"] for r in points], marker="." if len(points) < 30 else None)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.supxlabel("step", fontsize=8)
    fig.supylabel("training loss (each stage its own)", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, LOSS_PLOT), dpi=100)
    plt.close(fig)
    return LOSS_PLOT


def accuracy_plot(workdir: str, results: dict, chance=None):
    """Bars of each result's held-out top-1 (zero-shot top-1 for video-text stages) with ± CONFIDENCE_SE standard
    errors; its file name or None."""
    bars = {}
    for name, r in results.items():
        for key, label in (("top1", name), ("zero_shot/top1", f"{name} (zero-shot)")):
            if key in r.get("eval", {}):
                bars[label] = measured(results, f"{name}:{key}")
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(bars) + 1.5), 3.5))
    ax.bar(range(len(bars)), [100 * e.value for e in bars.values()],
           yerr=[100 * CONFIDENCE_SE * e.se for e in bars.values()], capsize=4, color="tab:blue", alpha=0.8)
    if chance is not None:
        ax.axhline(100 * chance, color="gray", linestyle="--", linewidth=1, label="chance")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(bars)), list(bars), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"held-out top-1 % (± {CONFIDENCE_SE} SE)", fontsize=8)
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, ACCURACY_PLOT), dpi=100)
    plt.close(fig)
    return ACCURACY_PLOT


def chat_stage(results: dict):
    """The name of the (last) result with chat question metrics (evaluate/question_set.py), or None."""
    names = [name for name, r in results.items() if any(k.startswith("chat/") for k in r.get("eval", {}))]
    return names[-1] if names else None


def _chat_types(ev: dict) -> list:
    """The question types of chat metrics ('colour' of 'chat/colour_mc'), in the order they come."""
    tasks = [k.split("/")[1] for k in ev if k.startswith("chat/") and k.count("/") == 1]
    return list(dict.fromkeys(t.rsplit("_", 1)[0] for t in tasks if t.endswith(("_mc", "_open"))))


def _chat_estimate(ev: dict, task: str):
    """The accuracy of a question task with its binomial standard error, or None."""
    key = f"chat/{task}"
    return binomial(ev[key], int(ev[f"{key}/questions"])) if key in ev else None


def chat_table(results: dict, name: str) -> str:
    """Markdown table: per question type, multiple-choice accuracy and its chance, and open-ended exact match (% ±
    one standard error)."""
    ev = results[name]["eval"]
    lines = ["| question type | multiple choice % | chance % | open-ended exact match % | questions (mc / open) |",
             "|---|---|---|---|---|"]
    for kind in _chat_types(ev):
        mc, open_ = _chat_estimate(ev, f"{kind}_mc"), _chat_estimate(ev, f"{kind}_open")
        chance = ev.get(f"chat/{kind}_mc/chance")
        counts = [str(int(ev.get(f"chat/{kind}_{k}/questions", 0))) for k in ("mc", "open")]
        cells = [_percent(mc) if mc else "", f"{100 * chance:.1f}" if chance else "", _percent(open_) if open_ else "",
                 " / ".join(counts)]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    note = ("Multiple choice: the reply's option letter parsed strictly (evaluate/mvbench.py's official rule, which "
            f"also counts an empty reply correct, gives {100 * ev['chat/mc_official']:.1f}% overall against "
            f"{100 * ev['chat/mc']:.1f}% strict)." if "chat/mc_official" in ev else "")
    return "\n".join(lines + ["", note])


def chat_claims(results: dict, name: str) -> str:
    """One generated sentence per question type: its multiple-choice accuracy against chance."""
    ev = results[name]["eval"]
    lines = []
    for kind in _chat_types(ev):
        mc = _chat_estimate(ev, f"{kind}_mc")
        if mc and f"chat/{kind}_mc/chance" in ev:
            chance = Estimate(ev[f"chat/{kind}_mc/chance"])
            lines.append(f"- {compare(f'{kind} multiple choice', 'chance', independent_difference(mc, chance))}.")
    return "\n".join(lines)


def chat_samples(workdir: str, name: str, count: int = 3) -> str:
    """A markdown table of `count` held-out answers (the i-th video's open-ended question of the i-th type) with
    each video's middle frame, written as CHAT_FRAME png files; '' without the stage's predictions."""
    path = os.path.join(workdir, name, PREDICTIONS)
    if not os.path.exists(path):
        return ""
    with np.load(path) as f:
        rows = {k: f[k] for k in f.files}
    videos = list(dict.fromkeys(rows["video"].tolist()))
    types = list(dict.fromkeys(task.rsplit("_", 1)[0] for task in rows["task"].tolist()))
    lines = ["| video (middle frame) | question | model answer | ground truth |", "|---|---|---|---|"]
    for k in range(min(count, len(videos))):
        task = f"{types[k % len(types)]}_open"
        picked = [j for j in range(len(rows["task"])) if rows["video"][j] == videos[k] and rows["task"][j] == task]
        if not picked:
            continue
        j = picked[0]
        frames = decode_frames(videos[k], lambda n: [n // 2])
        image = Image.fromarray(frames[0])
        image = image.resize((image.width * CHAT_FRAME_SCALE, image.height * CHAT_FRAME_SCALE), Image.NEAREST)
        image.save(os.path.join(workdir, CHAT_FRAME.format(k + 1)))
        cells = [f"![{os.path.basename(videos[k])}]({CHAT_FRAME.format(k + 1)})", str(rows["question"][j]),
                 str(rows["prediction"][j]) or "(no reply)", str(rows["answer"][j])]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def chat_section(workdir: str, results: dict) -> list:
    """The report's chat part (its lines), or [] without a chat stage."""
    name = chat_stage(results)
    if name is None:
        return []
    parts = ["## Chat: held-out questions", "", f"`{name}`, on the held-out videos' questions:", "",
             chat_table(results, name), "", chat_claims(results, name), ""]
    samples = chat_samples(workdir, name)
    if samples:
        parts += ["Sample answers (open-ended questions):", "", samples, ""]
    return parts


def write(workdir: str, config, results: dict) -> str:
    title = config.get("report_title", "invideo_jax pipeline report")
    parts = [f"# {title}", "", config.get("report_intro", ""), "", "## Results", "", results_table(results), ""]
    if config.get("claims"):
        parts += ["## Comparisons", "", claims(results, config.claims, workdir), ""]
    if config.get("comparison"):
        parts += [f"## {config.get('comparison_title', 'Comparison')}", "",
                  comparison_table(results, config.comparison), ""]
    videotext = videotext_table(results)
    if videotext:
        parts += ["## Video-text evaluation", "", videotext, ""]
    parts += chat_section(workdir, results)
    for heading, fname in (("Training loss per stage", loss_plot(workdir, list(results))),
                           ("Held-out accuracy", accuracy_plot(workdir, results, config.get("chance")))):
        if fname:
            parts += [f"### {heading}", "", f"![{heading}]({fname})", ""]
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    return path

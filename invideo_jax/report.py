"""The pipeline report: report.md with a results table per stage and PNG plots of the logged curves."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from invideo_jax.train import metrics as metrics_lib  # noqa: E402

PLOTTED = ("loss", "eval/top1", "clips_per_s", "contrastive_loss")


def _fmt(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def results_table(results: dict) -> str:
    """Markdown table: one row per stage with its steps, wall time, final train metrics and evaluation."""
    columns = ["steps", "wall_s", "train loss", "train accuracy", "eval top1", "eval top5", "eval videos"]
    lines = ["| stage | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, r in results.items():
        train, ev = r.get("train", {}), r.get("eval", {})
        values = [r.get("steps"), r.get("wall_s"), train.get("loss"), train.get("accuracy"), ev.get("top1"),
                  ev.get("top5"), ev.get("num_videos")]
        lines.append(f"| {name} | " + " | ".join("" if v is None else _fmt(v) for v in values) + " |")
    return "\n".join(lines)


VIDEOTEXT_COLUMNS = {"zero-shot top1": "zero_shot/top1", "zero-shot top5": "zero_shot/top5",
                     "t2v R@1": "retrieval/t2v_r1", "t2v R@5": "retrieval/t2v_r5", "t2v R@10": "retrieval/t2v_r10",
                     "v2t R@1": "retrieval/v2t_r1", "v2t R@5": "retrieval/v2t_r5",
                     "t2v R@1 DSL": "retrieval_dsl/t2v_r1", "v2t R@1 DSL": "retrieval_dsl/v2t_r1",
                     "t2v R@1 match": "retrieval_match/t2v_r1", "v2t R@1 match": "retrieval_match/v2t_r1",
                     "videos": "num_videos"}


def videotext_table(results: dict) -> str:
    """Markdown table of the video-text stages' zero-shot accuracy and retrieval (R@K in %), or '' if none."""
    rows = {name: r["eval"] for name, r in results.items() if "retrieval/t2v_r1" in r.get("eval", {})}
    if not rows:
        return ""
    lines = ["| stage | " + " | ".join(VIDEOTEXT_COLUMNS) + " |", "|---" * (len(VIDEOTEXT_COLUMNS) + 1) + "|"]
    for name, ev in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(ev[k]) if k in ev else "" for k in VIDEOTEXT_COLUMNS.values())
                     + " |")
    note = ("Accuracies are fractions; R@K are percentages: plain cosine ranking, with dual-softmax re-ranking (DSL), "
            "and (InternVideo2) with each query's top k re-scored by the matching head (match).")
    return "\n".join(lines + ["", note])


def comparison_table(results: dict, rows) -> str:
    """Markdown table of held-out accuracy for `rows`, (label, result name) pairs, e.g. an ablation."""
    lines = ["| model | from | held-out top-1 | held-out top-5 | videos |", "|---|---|---|---|---|"]
    for label, name in rows:
        ev = results.get(name, {}).get("eval", {})
        values = [ev.get("top1"), ev.get("top5"), ev.get("num_videos")]
        lines.append(f"| {label} | {name} | " + " | ".join("" if v is None else _fmt(v) for v in values) + " |")
    return "\n".join(lines)


def plot(workdir: str, stage_names, key: str):
    """One PNG of `key` against step for every stage that logged it; returns its file name or None."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    drawn = False
    for name in stage_names:
        rows = [r for r in metrics_lib.read(os.path.join(workdir, name)) if key in r]
        if rows:
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker="." if len(rows) < 30 else None,
                    label=name)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend()
    fname = f"plot_{key.replace('/', '_')}.png"
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, fname), dpi=100)
    plt.close(fig)
    return fname


def write(workdir: str, config, results: dict) -> str:
    title = config.get("report_title", "invideo_jax pipeline report")
    parts = [f"# {title}", "", config.get("report_intro", ""), "", "## Results", "", results_table(results), ""]
    if config.get("comparison"):
        parts += [f"## {config.get('comparison_title', 'Comparison')}", "", comparison_table(results, config.comparison),
                  ""]
    videotext = videotext_table(results)
    if videotext:
        parts += ["## Video-text evaluation", "", videotext, ""]
    for key in PLOTTED:
        fname = plot(workdir, list(results), key)
        if fname:
            parts += [f"### {key}", "", f"![{key}]({fname})", ""]
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    return path

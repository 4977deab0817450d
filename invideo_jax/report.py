"""The pipeline report: report.md with a results table per stage and PNG plots of the logged curves."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from invideo_jax.train import metrics as metrics_lib  # noqa: E402

PLOTTED = ("loss", "eval/top1", "clips_per_s")


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
    for key in PLOTTED:
        fname = plot(workdir, list(results), key)
        if fname:
            parts += [f"### {key}", "", f"![{key}]({fname})", ""]
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    return path

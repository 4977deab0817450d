"""Metrics: JSONL + TensorBoard in the workdir, and a progress bar with loss, LR and clips/s (process 0 only)."""
import json
import os
import time

import jax
import numpy as np
import tqdm

METRICS_FILE = "metrics.jsonl"
SUMS = ("skipped", "bad_videos")  # counted, not averaged, over a logging interval


def reduce(step_metrics: list) -> dict:
    """Per-step metric dicts -> one dict: mean over the interval, except counts, which are summed."""
    keys = step_metrics[0].keys()
    return {k: float(np.sum([m[k] for m in step_metrics]) if k in SUMS else np.mean([m[k] for m in step_metrics]))
            for k in keys}


def read(workdir: str) -> list:
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricWriter:
    """Appends {'step': s, ...} rows, dropping rows past a resumed step; process 0 alone reads and writes files."""

    def __init__(self, workdir: str, resume_step: int = 0):
        self.path = os.path.join(workdir, METRICS_FILE)
        self.rows, self.tb = [], None
        if jax.process_index() == 0:
            self.rows = [r for r in read(workdir) if r["step"] <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.rows)
            from tensorboardX import SummaryWriter  # here: it imports torch, which inference tools need not pay for
            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, values: dict):
        row = {"step": int(step), **{k: float(v) for k, v in values.items()}}
        self.rows.append(row)
        if self.tb is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in values.items():
            self.tb.add_scalar(k, float(v), step)

    def last(self, *keys) -> dict:
        """The latest logged value of each key that was logged."""
        out = {}
        for row in self.rows:
            out.update({k: row[k] for k in keys if k in row})
        return out

    def close(self):
        if self.tb is not None:
            self.tb.close()


class Progress:
    """A tqdm bar over steps showing loss, LR and clips/s (measured on this process); shown by process 0 only."""

    def __init__(self, total_steps: int, start_step: int, batch_size: int):
        self.batch_size, self.start_step, self.start = batch_size, start_step, time.perf_counter()
        self.bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                             mininterval=1.0, disable=jax.process_index() != 0)

    def throughput(self, step: int) -> float:
        return (step - self.start_step) * self.batch_size / max(time.perf_counter() - self.start, 1e-9)

    def update(self, step: int, summary: dict):
        self.bar.set_postfix(loss=f"{summary['loss']:.4f}", lr=f"{summary['lr']:.2e}",
                             clips_s=f"{self.throughput(step):.1f}", refresh=False)
        self.bar.update(step - self.bar.n)

    def close(self):
        self.bar.close()

"""What the terminal shows: our own lines (stages, progress bar, results) and library warnings; INFO logs go to a file.

Orbax, grain and absl log every checkpoint step at INFO. `quiet()` keeps the terminal (absl's stderr handler) at
WARNING; `log_to_file(workdir)` writes every log line at the absl verbosity (INFO by default) to `workdir/log.txt`
(process i > 0: `log.i.txt`). absl's `--alsologtostderr` (or `--logtostderr`) brings the INFO lines back to the
terminal.
"""
import logging as py_logging
import os
from logging.handlers import MemoryHandler

import jax
from absl import flags, logging

LOG_FILE = "log.txt"
# Lines logged between `quiet()` and `log_to_file` (e.g. by distributed.initialize), kept for the log file.
_early = MemoryHandler(capacity=100_000, flushLevel=py_logging.CRITICAL + 1)
# Orbax warns when a restored directory has no step metadata file; `init_from` restores a step's `state` item, whose
# metadata sits one level up, so every restore would warn. The warning still goes to the log file.
LOG_FILE_ONLY = ("Metadata file does not exist",)


def _for_terminal(record) -> bool:
    return not str(record.msg).startswith(LOG_FILE_ONLY)


def drop_restore_notes() -> None:
    """For commands with no log file (chat, evaluation): Orbax's restore notes (`LOG_FILE_ONLY`) go nowhere."""
    py_logging.getLogger("absl").addFilter(_for_terminal)


def quiet() -> None:
    """The terminal shows warnings and errors only, unless --alsologtostderr / --logtostderr."""
    if not (flags.FLAGS.alsologtostderr or flags.FLAGS.logtostderr):
        logging.get_absl_handler().setLevel(py_logging.WARNING)
    logging.get_absl_handler().addFilter(_for_terminal)
    py_logging.getLogger().addHandler(_early)


def log_to_file(workdir: str) -> str:
    """Every log line from now on also goes to the workdir's log file (after `distributed.initialize`: the file is
    named by the process index); returns its path."""
    os.makedirs(workdir, exist_ok=True)
    index = jax.process_index()
    path = os.path.join(workdir, LOG_FILE if index == 0 else f"log.{index}.txt")
    handler = py_logging.FileHandler(path)
    handler.setFormatter(logging.PythonFormatter())
    py_logging.getLogger().removeHandler(_early)
    _early.setTarget(handler)
    _early.flush()
    py_logging.getLogger().addHandler(handler)
    return path


def summary(config) -> str:
    """A pipeline's stages, or a stage's task, model, steps and batch."""
    if "stages" in config:
        return f"{len(config.stage_order)} stages: {', '.join(config.stage_order)}"
    return (f"task {config.task}, model {config.model.name}, {config.total_steps} steps of batch {config.batch_size}")


def headline(result: dict) -> str:
    """One line of a stage's (or ensemble's) results: evaluation numbers, else the final training loss."""
    ev, train = result.get("eval", {}), result.get("train", {})
    formats = {"top1": "top-1 {:.3f}", "zero_shot/top1": "zero-shot top-1 {:.3f}",
               "retrieval/t2v_r1": "t2v R@1 {:.1f}%"}
    shown = [form.format(ev[key]) for key, form in formats.items() if key in ev]
    if not shown and "loss" in train:
        shown = [f"train loss {train['loss']:.4f}"]
    return ", ".join(shown) or "no metrics"

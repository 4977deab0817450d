"""What a run reports about itself besides metrics: the parameter overview and an opt-in profiler trace."""
import os

import jax
import numpy as np
from absl import logging

PROFILE_DIR = "profile"  # WORKDIR/profile: the trace of `config.profile_steps` steps


def log_param_overview(params, what: str):
    """Logs the parameter count in total and per top-level subtree (big_vision's parameter overview, in short)."""
    counts = {name: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree)) for name, tree in params.items()}
    logging.info("%s: %s in total; %s", what, f"{sum(counts.values()):,}",
                 ", ".join(f"{name} {count:,}" for name, count in counts.items()))


class Profiler:
    """A `jax.profiler` trace of `steps` train steps from step `first` into WORKDIR/profile (TensorBoard's profile
    plugin or Perfetto read it); off with steps = 0. The trainer starts at the second step of a run, after the
    compile."""

    def __init__(self, workdir: str, first: int, steps: int):
        self.directory = os.path.join(workdir, PROFILE_DIR)
        self.first, self.last = first, first + steps - 1
        self.running = False

    def before(self, step: int):
        if step == self.first and self.last >= self.first:
            jax.profiler.start_trace(self.directory)
            self.running = True

    def after(self, step: int, state):
        if self.running and step == self.last:
            self._stop(state)

    def _stop(self, state=None):
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        self.running = False
        logging.info("profile of train steps from %d written to %s", self.first, self.directory)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.running:  # the run ended (or failed) inside the traced steps
            self._stop()

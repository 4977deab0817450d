"""The absl flags of a run: --config (file, :ARG, --config.field overrides) and --workdir, shared by the commands
that take a training config (invideo_jax.main, invideo_jax.precompute_targets)."""
from absl import flags
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, optionally with :ARG.", lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the report.")
flags.mark_flags_as_required(["config", "workdir"])

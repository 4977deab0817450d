"""Entry point: python -m invideo_jax.main --config=configs/X.py:ARG --workdir=DIR [--config.field=value ...]

A config with `stages` runs as a pipeline (each stage in DIR/<stage>, finished stages skipped); any other
config trains one stage in DIR, resuming from its latest checkpoint. Launched as several processes (TPU pod,
Slurm, JAX_* variables: see invideo_jax/distributed.py), it connects them first; process 0 writes logs and reports.
"""
import os

from absl import app, flags, logging

from invideo_jax import run_flags

flags.adopt_module_key_flags(run_flags)  # --help lists --config and --workdir


def main(argv):
    del argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from invideo_jax import distributed, stages  # after flag parsing: keeps `--help` fast
    from invideo_jax.train import trainer
    distributed.initialize()
    config, workdir = run_flags.CONFIG.value, run_flags.WORKDIR.value
    logging.info("config:\n%s", config)
    if "stages" in config:
        stages.run_pipeline(config, workdir)
    else:
        trainer.train(config, workdir)


def run():
    app.run(main)


if __name__ == "__main__":
    run()

"""Entry point: python -m invideo_jax.main --config=configs/X.py:ARG --workdir=DIR [--config.field=value ...]

A config with `stages` runs as a pipeline (each stage in DIR/<stage>, finished stages skipped); any other
config trains one stage in DIR, resuming from its latest checkpoint. Launched as several processes (TPU pod,
Slurm, JAX_* variables: see invideo_jax/distributed.py), it connects them first; process 0 writes logs and reports.
Relative paths (DIR, data files, init_from checkpoints) are made absolute against the current directory; a config
file not found there is looked up in the repository (`configs/X.py` works from any directory).

The terminal shows a config summary, a line per stage, the progress bar, results and warnings; the full config and
INFO logs (ours, Orbax, grain) go to DIR/log.txt. `--alsologtostderr` shows them on the terminal too.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from invideo_jax import config_files, run_flags

flags.adopt_module_key_flags(run_flags)  # --help lists --config and --workdir


def main(argv):
    del argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from invideo_jax import console, distributed, paths, stages  # after flag parsing: keeps `--help` fast
    from invideo_jax.train import trainer
    console.quiet()
    distributed.initialize()
    config, workdir = run_flags.CONFIG.value, paths.resolve(run_flags.WORKDIR.value)
    log_file = console.log_to_file(workdir)
    logging.info("config:\n%s", config)
    if distributed.is_main():
        print(f"{config_flags.get_config_filename(flags.FLAGS['config'])}: {console.summary(config)}\n"
              f"workdir {workdir} (logs: {log_file})", flush=True)
    if "stages" in config:
        stages.run_pipeline(config, workdir)
    else:
        result = trainer.train(paths.resolve_config(config), workdir)
        if distributed.is_main():
            print(f"done: {console.headline(result)}; results in {workdir}", flush=True)


def run():
    app.run(main, argv=config_files.resolve_flag(sys.argv))


if __name__ == "__main__":
    run()

"""Staged runs: each stage trains in its own sub-workdir and is skipped once finished.

`config.stages` holds one config per stage and `config.stage_order` their order (ConfigDict sorts its keys).
A stage is finished when its workdir holds `summary.json`. Once a stage runs, every later stage runs again
(its inputs may have changed); a later stage's previous results are moved aside to `<stage>.stale-<time>`,
never deleted. String fields may use `{workdir}` (the pipeline's workdir); `init_from.checkpoint` may name an
earlier stage. In a multi-process run the workdir is shared and process 0 alone writes the data, moves stale
stages and writes the report.
"""
import copy
import json
import os
import time

import jax
from absl import logging

from invideo_jax import distributed, report
from invideo_jax.train import trainer


def run_stage(config, workdir: str) -> dict:
    return trainer.train(config, workdir)


def stage_config(pipeline, name: str, workdir: str):
    """The stage's config with `{workdir}` filled in and a stage name in `init_from.checkpoint` resolved."""
    config = copy.deepcopy(pipeline.stages[name])
    config.unlock()
    _fill(config, workdir)
    init_from = config.get("init_from")
    if init_from and init_from.checkpoint in pipeline.stages:
        init_from.checkpoint = os.path.join(workdir, init_from.checkpoint, "checkpoints")
    config.lock()
    return config


def _fill(node, workdir):
    for key, value in node.items():
        if isinstance(value, str) and "{workdir}" in value:
            node[key] = value.replace("{workdir}", workdir)
        elif hasattr(value, "items"):
            _fill(value, workdir)


def finished(stage_dir: str) -> bool:
    return os.path.exists(os.path.join(stage_dir, trainer.SUMMARY))


def run_pipeline(config, workdir: str) -> dict:
    if sorted(config.stage_order) != sorted(config.stages):
        raise ValueError(f"config.stage_order {tuple(config.stage_order)} must list each of config.stages "
                         f"{tuple(config.stages)} once")
    os.makedirs(workdir, exist_ok=True)
    # Stages often compile identical programs (e.g. fine-tuning from pre-trained vs from scratch).
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))
    existed = {name: os.path.exists(os.path.join(workdir, name)) for name in config.stage_order}
    if config.get("synthetic_data") and distributed.is_main():
        from invideo_jax.data import synthetic
        synthetic.write_dataset(os.path.join(workdir, "data"), **config.synthetic_data)
    distributed.barrier("pipeline_start")  # the data is written and every process saw the same stage dirs
    results, upstream_ran = {}, False
    for name in config.stage_order:
        stage_dir = os.path.join(workdir, name)
        if finished(stage_dir) and not upstream_ran:
            logging.info("stage %s: finished earlier, skipped", name)
            with open(os.path.join(stage_dir, trainer.SUMMARY)) as f:
                results[name] = json.load(f)
            continue
        if upstream_ran and existed[name]:
            stale = f"{stage_dir}.stale-{time.strftime('%Y%m%d-%H%M%S')}"
            logging.warning("stage %s: an earlier stage ran again; moving old results to %s", name, stale)
            if distributed.is_main():
                os.rename(stage_dir, stale)
            distributed.barrier(f"stale_{name}")
        if distributed.is_main():
            print(f"=== stage {name}", flush=True)
        results[name] = run_stage(stage_config(config, name, workdir), stage_dir)
        upstream_ran = True
    if distributed.is_main():
        print(f"report: {report.write(workdir, config, results)}", flush=True)
    return results

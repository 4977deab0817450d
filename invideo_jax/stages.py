"""Staged runs: each stage trains in its own sub-workdir and is skipped once finished.

`config.stages` holds one config per stage and `config.stage_order` their order (ConfigDict sorts its keys).
A stage is finished when its workdir holds `summary.json`. Once a stage runs, every later stage runs again
(its inputs may have changed); a later stage's previous results are moved aside to `<stage>.stale-<time>`,
never deleted. String fields, also inside tuples, may use `{workdir}` (the pipeline's workdir); an `init_from`
checkpoint may name an earlier stage, and every restore between stages is checked on the abstract models before the
first stage runs. `config.ensembles` ({name: stage names}, optional) adds late-fusion results: the stages' per-video
class probabilities (their predictions.npz) averaged. In a multi-process run the workdir is shared and process 0
alone writes the data, moves stale stages and writes the report.
"""
import copy
import json
import os
import time

import jax
from absl import logging

from invideo_jax import console, distributed, paths, report, sharding
from invideo_jax.evaluate import multiview
from invideo_jax.train import init_from, trainer
from invideo_jax.train.tasks import get_task


def stage_config(pipeline, name: str, workdir: str):
    """The stage's config with `{workdir}` filled in and stage names in `init_from` checkpoints resolved."""
    config = copy.deepcopy(pipeline.stages[name])
    config.unlock()
    _fill(config, workdir)
    for source in init_from.init_sources(config.get("init_from", {})).values():
        if source.checkpoint in pipeline.stages:
            source.checkpoint = os.path.join(workdir, source.checkpoint, "checkpoints")
    config.lock()
    return paths.resolve_config(config)


def check_init_from(pipeline, workdir: str) -> None:
    """Raises before any stage runs if a stage would restore a subtree that its source stage lacks or holds with
    another shape; compares abstract models only (`jax.eval_shape`), so a bad mapping costs seconds, not a run."""
    params, problems = {}, []
    stage_of = {os.path.join(workdir, name, "checkpoints"): name for name in pipeline.stage_order}
    for name in pipeline.stage_order:
        config = stage_config(pipeline, name, workdir)
        task = get_task(config)
        boxed = jax.eval_shape(task.init_variables, jax.random.PRNGKey(0), trainer.example_batch(config, 1))
        params[name] = sharding.strip_boxes(boxed["params"])
        for source in trainer.init_sources(config, task):
            source_stage = stage_of.get(source["checkpoint"])
            if source_stage is None:
                continue  # a checkpoint from outside the pipeline: checked when it is read
            saved = {jax.tree_util.keystr(path, simple=True, separator="/"): leaf.shape
                     for path, leaf in jax.tree_util.tree_leaves_with_path({"params": params[source_stage]})}
            _, lines = init_from.match_leaves(params[name], saved, source)
            problems += [f"{name} <- {source_stage}: {line}" for line in lines]
    if problems:
        raise ValueError("init_from does not fit the stages it restores from:\n  " + "\n  ".join(problems[:20])
                         + ("\n  ..." if len(problems) > 20 else ""))


def _predictions(workdir: str, stage: str) -> dict:
    predictions = report.class_predictions(workdir, stage)
    if predictions is None:
        raise FileNotFoundError(f"{os.path.join(workdir, stage, trainer.PREDICTIONS)} is missing or holds no class "
                                f"probabilities: stage {stage} gives no per-video predictions to ensemble (a "
                                "classification stage finished by an older version? delete its directory to re-run it)")
    return predictions


def _fill(node, workdir):
    for key, value in node.items():
        if hasattr(value, "items"):
            _fill(value, workdir)
        else:
            node[key] = _filled(value, workdir)


def _filled(value, workdir):
    """`value` with `{workdir}` filled in, in a string or in the strings of (nested) tuples and lists."""
    if isinstance(value, str):
        return value.replace("{workdir}", workdir)
    if isinstance(value, (tuple, list)):
        return type(value)(_filled(v, workdir) for v in value)
    return value


def finished(stage_dir: str) -> bool:
    return os.path.exists(os.path.join(stage_dir, trainer.SUMMARY))


def run_pipeline(config, workdir: str) -> dict:
    if sorted(config.stage_order) != sorted(config.stages):
        raise ValueError(f"config.stage_order {tuple(config.stage_order)} must list each of config.stages "
                         f"{tuple(config.stages)} once")
    ensembles = config.get("ensembles", {})
    for name, members in ensembles.items():
        if name in config.stages or not set(members) <= set(config.stages):
            raise ValueError(f"config.ensembles.{name}: the name must not be a stage's, and its members "
                             f"{tuple(members)} must be stages of {tuple(config.stages)}")
    os.makedirs(workdir, exist_ok=True)
    # Stages often compile identical programs (e.g. fine-tuning from pre-trained vs from scratch).
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))
    existed = {name: os.path.exists(os.path.join(workdir, name)) for name in config.stage_order}
    if config.get("synthetic_data") and distributed.is_main():
        from invideo_jax.data import synthetic
        synthetic.write_dataset(os.path.join(workdir, "data"), **config.synthetic_data)
    distributed.barrier("pipeline_start")  # the data is written and every process saw the same stage dirs
    check_init_from(config, workdir)
    results, upstream_ran = {}, False
    for name in config.stage_order:
        stage_dir = os.path.join(workdir, name)
        if finished(stage_dir) and not upstream_ran:
            with open(os.path.join(stage_dir, trainer.SUMMARY)) as f:
                results[name] = json.load(f)
            if distributed.is_main():
                print(f"stage {name}: finished earlier, skipped ({console.headline(results[name])})", flush=True)
            continue
        if upstream_ran and existed[name]:
            stale = f"{stage_dir}.stale-{time.strftime('%Y%m%d-%H%M%S')}"
            logging.warning("stage %s: an earlier stage ran again; moving old results to %s", name, stale)
            if distributed.is_main():
                os.rename(stage_dir, stale)
            distributed.barrier(f"stale_{name}")
        if distributed.is_main():
            print(f"=== stage {name}", flush=True)
        results[name] = trainer.train(stage_config(config, name, workdir), stage_dir)
        if distributed.is_main():
            print(f"    {name}: {console.headline(results[name])}", flush=True)
        upstream_ran = True
    for name, members in ensembles.items():
        results[name] = {"eval": multiview.accuracy(multiview.ensemble([_predictions(workdir, m) for m in members])),
                         "members": list(members)}
    if distributed.is_main():
        path = report.write(workdir, config, results)
        print("results:\n" + "\n".join(f"  {name}: {console.headline(r)}" for name, r in results.items())
              + f"\nreport: {path}", flush=True)
    return results

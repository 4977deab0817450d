"""The evaluation loop shared by every task: predictions over the whole eval split, gathered on every host."""
from jax.experimental import multihost_utils

from invideo_jax import sharding
from invideo_jax.data import pipeline

VIEW_KEYS = ("video_index", "mask", "label")


def predictions(state, predict, config, mesh):
    """Yields, per eval batch, `predict`'s outputs with the batch's VIEW_KEYS, as numpy over the global batch.

    Every host gathers the whole global batch, so all hosts compute the same metrics.
    """
    local = sharding.local_batch_size(config.eval_batch_size, mesh)
    for batch in pipeline.eval_iterator(config.data, batch_size=local):
        batch = pipeline.make_global(batch, sharding.batch_sharding(mesh))
        out = predict(state.params, state.batch_stats, batch)
        yield multihost_utils.process_allgather(dict(out, **{k: batch[k] for k in VIEW_KEYS}), tiled=True)

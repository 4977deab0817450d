"""bfloat16 compute against float32: the same tiny classifier trained for 300 steps from the same initialisation on
the same batches, once computing in bfloat16 (float32 parameters, optimiser state, norms, softmax and loss) and once in
float32. Stated tolerance: every 25-step window's mean loss agrees within 0.05 + 5% of the float32 value; both curves
fall to under half their starting loss. The paper-scale recipes compute in bfloat16 by default; the demo in float32.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common, demo, internvideo2_align, internvideo2_distill, internvideo_fusion, \
    internvideo_mm_pretrain, uniformerv2_finetune, videomae_finetune, videomae_pretrain
from invideo_jax.train import optim, trainer
from invideo_jax.train.state import TrainState
from invideo_jax.train.tasks import get_task
from tests.compiling import FAST_COMPILE

STEPS, BATCH, WINDOW = 300, 16, 25
MODEL = dict(width=16, depth=1, num_heads=2, mlp_dim=32, patch_size=8, tubelet_size=2, num_frames=4, image_size=16,
             final_norm=False, pool="mean", num_classes=4)


def dataset(size=64, seed=0):
    """Clips of a class-specific pattern under noise: learnable, so the loss curve has a shape to compare."""
    rng = np.random.default_rng(seed)
    patterns = rng.standard_normal((4, 4, 16, 16, 3)).astype(np.float32)
    labels = rng.integers(0, 4, size)
    video = patterns[labels] + rng.standard_normal((size, 4, 16, 16, 3)).astype(np.float32)
    return video, np.eye(4, dtype=np.float32)[labels]


def compiled(fn, *args):
    return jax.jit(fn).lower(*args).compile(FAST_COMPILE)


def task_config(dtype: str):
    config = common.train_config("classification", dict(MODEL, dtype=dtype))
    config.optim.update(dict(base_lr=1e-3, lr_batch_denom=0, warmup_steps=10))
    return config


def loss_curve(dtype: str, params, video, targets):
    """`STEPS` steps from `params` on the 4 batches of `video` and `targets` in turn: (losses, final state)."""
    config = task_config(dtype)
    task = get_task(config)
    tx, schedule = optim.make_optimizer(config.optim, params, total_steps=STEPS, global_batch=BATCH)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), batch_stats={},
                       rng=jax.random.PRNGKey(1))
    step = trainer.make_train_step(task, tx, schedule)

    def body(state, i):
        state, metrics = step(state, {"video": video[i % 4], "targets": targets[i % 4]})
        return state, metrics["loss"]

    state, losses = compiled(lambda state: jax.lax.scan(body, state, jnp.arange(STEPS)), state)(state)
    return np.asarray(losses), state


def test_bf16_loss_curve_follows_float32():
    video, targets = (jnp.asarray(x).reshape((4, BATCH) + x.shape[1:]) for x in dataset())  # 4 batches
    init = get_task(task_config("float32")).init_variables
    rng, example = jax.random.PRNGKey(0), {"video": video[0]}
    params = nn.unbox(compiled(init, rng, example)(rng, example))["params"]  # float32 in both runs
    fp32, _ = loss_curve("float32", params, video, targets)
    bf16, state = loss_curve("bfloat16", params, video, targets)
    windows = lambda x: x.reshape(-1, WINDOW).mean(1)
    np.testing.assert_array_less(np.abs(windows(bf16) - windows(fp32)), 0.05 + 0.05 * windows(fp32))
    assert windows(fp32)[-1] < 0.5 * windows(fp32)[0] and windows(bf16)[-1] < 0.5 * windows(bf16)[0]
    assert np.abs(bf16 - fp32).max() > 1e-4  # the bf16 run did compute in bf16
    floats = [x for x in jax.tree.leaves((state.params, state.opt_state)) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert {x.dtype for x in floats} == {jnp.dtype(jnp.float32)}


def model_dtypes(config) -> set:
    found = set()

    def visit(tree):
        for key, value in tree.items():
            if hasattr(value, "items"):
                visit(value)
            elif key == "dtype":
                found.add(jnp.dtype(value).name)  # a config holds the name or the jnp type

    visit(config.model.kwargs)
    return found


@pytest.mark.parametrize("module, arg", [
    (videomae_pretrain, "vit_b"), (videomae_finetune, "vit_b"), (uniformerv2_finetune, "L/14"),
    (internvideo_mm_pretrain, "L/14"), (internvideo_fusion, ""), (internvideo2_distill, "1B"),
    (internvideo2_align, "1B"), (internvideo2_align, "6B,audio=beats_iter3")])
def test_paper_scale_recipes_compute_in_bf16_by_default(module, arg):
    assert model_dtypes(module.get_config(arg)) == {"bfloat16"}


def test_the_demo_computes_in_float32():
    stages = demo.get_config().stages
    assert {dtype for name in stages for dtype in model_dtypes(stages[name])} <= {"float32"}

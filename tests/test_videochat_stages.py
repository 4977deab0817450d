"""VideoChat2's three stages (configs/videochat2.py:tiny): two train steps on real batches; the frozen parts stay
bitwise unchanged, the trained parts change; init_from chaining names the stage-1 text weights (P6)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import videochat2 as recipes
from invideo_jax.data import instruction, llm_tokenizer
from invideo_jax.data.instruction import QA
from invideo_jax.train import optim, trainer
from invideo_jax.train.state import TrainState
from invideo_jax.train.tasks import get_task
from tests import hf_tiny

B = 2


def flat(tree):
    return {jax.tree_util.keystr(k, simple=True, separator="/"): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def run_two_steps(config, batch):
    task = get_task(config)
    variables = nn.unbox(task.init_variables(jax.random.PRNGKey(0), batch))
    params = variables["params"]
    tx, schedule = optim.make_optimizer(config.optim, params, total_steps=config.total_steps, global_batch=B)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), batch_stats={},
                       rng=jax.random.PRNGKey(1))
    step = jax.jit(trainer.make_train_step(task, tx, schedule))
    new = state
    for _ in range(2):
        new, metrics = step(new, batch)
        assert np.isfinite(float(metrics["loss"])) and not int(metrics["skipped"])
    return flat(params), flat(new.params)


def video(frames, size=28):
    return np.random.default_rng(0).normal(size=(B, frames, size, size, 3)).astype(np.float32)


def check(before, after, frozen, may_stay=lambda path: False):
    """Frozen leaves unchanged, the others changed, except those `may_stay` allows (no gradient reaches them)."""
    for path in before:
        same = np.array_equal(before[path], after[path])
        assert same == frozen(path) or (not frozen(path) and may_stay(path)), path
    assert any(not np.array_equal(before[p], after[p]) for p in before if not frozen(p))


@pytest.mark.slow
def test_stage1_qformer_alignment_trains_with_the_encoder_frozen():
    config = recipes.get_config("tiny,stage=1,dtype=float32,remat=none,epoch_steps=10")
    config.batch_size = B
    text = np.zeros((B, 8), np.int32)
    text[:, 0] = 1
    text[0, 1:6], text[1, 1:4] = [5, 9, 12, 7, 2], [30, 8, 2]
    config.data.tokenizer_path = ""
    batch = {"video": video(4), "text": text}
    task = get_task(config)
    task._pad, task._dec = 0, task.model.qformer_config["vocab_size"] - 1  # no vocabulary file in this test
    variables = nn.unbox(task.init_variables(jax.random.PRNGKey(0), batch))
    params = variables["params"]
    tx, schedule = optim.make_optimizer(config.optim, params, total_steps=config.total_steps, global_batch=B)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), batch_stats={},
                       rng=jax.random.PRNGKey(1))
    step = jax.jit(trainer.make_train_step(task, tx, schedule))
    new = state
    for _ in range(2):
        new, metrics = step(new, batch)
        assert np.isfinite(float(metrics["loss"])) and not int(metrics["skipped"])
        for key in ("vtc_loss", "vtm_loss", "cap_loss"):
            assert float(metrics[key]) > 0, key
    before, after = flat(params), flat(new.params)
    frozen = lambda p: p.startswith("vision_encoder/")
    for path in before:
        assert np.array_equal(before[path], after[path]) == frozen(path), path


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    hf_tiny.train_tokenizer(str(path), split_words=True)
    return str(path)


def lm_batch(tok_dir, config, qa, instruction_ids=False):
    task = get_task(config)
    tok = llm_tokenizer.load(tok_dir)
    rows = []
    for k in range(B):
        before, pieces = instruction.conversation(config.videochat.template, qa[k:k + 1],
                                                  " Describe the following video concisely."
                                                  if config.videochat.stage == 2 else "")
        rows.append(instruction.encode_conversation(tok, before, pieces, task.num_visual, task.length))
    batch = {key: np.stack([r[key] for r in rows]) for key in rows[0]}
    batch["video"] = video(config.data.num_frames)
    if instruction_ids:
        batch["instruction"] = np.asarray([[1, 7, 9, 2, 0, 0], [1, 11, 2, 0, 0, 0]], np.int32)
        batch["instruction_mask"] = (batch["instruction"] != 0).astype(np.int32)
    return batch


@pytest.mark.slow
def test_stage2_captioning_trains_bridge_and_encoder_with_the_llm_frozen(tok_dir):
    config = recipes.get_config("tiny,stage=2,dtype=float32,remat=none,epoch_steps=10")
    config.videochat.update(llm_tokenizer=tok_dir, max_text_tokens=48)
    batch = lm_batch(tok_dir, config, [QA("", "", "a cat plays with a red ball"), QA("", "", "the dog runs")])
    assert "instruction" not in batch
    before, after = run_two_steps(config, batch)
    assert not any("lora" in p or p.startswith("qformer/word") for p in before)
    check(before, after, lambda p: p.startswith("llm/"))


@pytest.mark.slow
def test_stage3_instruction_tuning_trains_lora_and_reads_the_instruction(tok_dir):
    config = recipes.get_config("tiny,stage=3,dtype=float32,remat=none,epoch_steps=10")
    config.model.kwargs.qformer_config.text_input = True
    config.videochat.update(llm_tokenizer=tok_dir, max_text_tokens=48, instruction_length=6)
    batch = lm_batch(tok_dir, config, [QA("Answer well.", "What happens?", "a cat plays"),
                                       QA("", "the dog runs?", "the ball")], instruction_ids=True)
    before, after = run_two_steps(config, batch)
    frozen = lambda p: p.startswith("llm/") and not p.endswith(("lora_a", "lora_b"))
    last_text_ffn = lambda p: p.startswith(("qformer/layer_1/mlp/", "qformer/layer_1/mlp_norm/"))  # only queries leave
    check(before, after, frozen, last_text_ffn)
    assert not np.array_equal(before["qformer/word"], after["qformer/word"])  # the instruction reached the Q-Former
    assert not np.array_equal(before["llm/lm_head/lora_b"], after["llm/lm_head/lora_b"])


def test_stage3_init_from_restores_stage1_text_then_stage2():
    config = recipes.get_config("8b,stage=3")
    stage1, stage2 = config.init_from.stage1.mapping, config.init_from.stage2.mapping
    assert list(config.init_from.keys()) == ["stage1", "stage2"]  # restored in this order
    assert "qformer/word" in stage1 and "qformer/layer_11/mlp" in stage1 and "qformer/query_tokens" not in stage1
    assert "qformer/word" not in stage2 and "qformer/extra_query_tokens" in stage2
    assert "llm/blocks/self_attn/q_proj/kernel" in stage2 and not any("lora" in p for p in stage2)
    assert "qformer/layer_0/cross_attn" in stage2 and "qformer/layer_1/cross_attn" not in stage2

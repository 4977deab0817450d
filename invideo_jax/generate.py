"""Text generation from a `CausalLM`: a static-length KV cache, one prefill, then a jitted one-token decode loop.

  python -m invideo_jax.generate --model_dir=DIR --prompt="The capital of France is" [--prompt=...]
      [--max_new_tokens=64] [--temperature=0] [--top_p=1.0] [--seed=0] [--dtype=float32|bfloat16]

DIR is a `transformers` LLaMA / Mistral directory (config.json, safetensors or .bin weights, tokenizer.json):
convert/llama.py loads the weights, data/llm_tokenizer.py the tokenizer. Each prompt gets a BOS token; prompts are
left-padded into one batch; generation stops at the tokenizer's EOS (or `--stop` strings) or after max_new_tokens.
The completions are printed, one per prompt. Loading reads the weights into host memory as float32 first (a 7B
model: about 29 GB), then keeps them in `--dtype`. Temperature 0 is greedy decoding (token for token what transformers'
`generate(do_sample=False)` gives); otherwise tokens are sampled from softmax(logits / temperature) restricted to
the top-p nucleus (the smallest set of most likely tokens whose probability reaches top_p).

`generate()` takes token ids or input embeddings (visual tokens spliced into a prompt, models/videochat.py) with a
left-padding mask. The cache holds prompt + max_new_tokens slots; the whole loop is one compiled function per
(batch, prompt length, max_new_tokens, sampling settings). `stream()` gives the same tokens one step at a time (a chat
prints them as they come): the same prefill and decode step, driven from the host.
"""
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def top_p_filter(logits, top_p: float):
    """logits (B, V) with every token outside the top-p nucleus set to -inf (the most likely token always stays)."""
    probs = jax.nn.softmax(logits, axis=-1)
    ordered = jnp.sort(probs, axis=-1)[:, ::-1]
    kept = (jnp.cumsum(ordered, axis=-1) - ordered) < top_p
    threshold = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(probs >= threshold, logits, -jnp.inf)


def next_token(logits, key, temperature: float, top_p: float):
    """Greedy (temperature 0) or nucleus sampling from (B, V) float32 logits -> (B,) int32."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _ends_with_stop(buffer, t, stop_sequences):
    """(B,) bool: the tokens generated so far (buffer[:, :t+1]) end with one of the stop sequences."""
    hit = jnp.zeros(buffer.shape[0], bool)
    for seq in stop_sequences:
        k = len(seq)
        window = jax.lax.dynamic_slice_in_dim(buffer, jnp.maximum(t - k + 1, 0), k, axis=1)
        hit |= jnp.all(window == jnp.asarray(seq, buffer.dtype), axis=1) & (t + 1 >= k)
    return hit


def _prefill(model, params, ids, embeds, mask, rng, *, max_new_tokens, temperature, top_p, pad_id):
    """The prompt through the model: the decode state with the first new token drawn."""
    inputs = embeds if ids is None else ids
    batch, prompt_len = inputs.shape[:2]
    cache = model.init_cache(batch, prompt_len + max_new_tokens)
    slots = jnp.concatenate([mask.astype(bool), jnp.ones((batch, max_new_tokens), bool)], axis=1)
    positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)
    out = model.apply({"params": params}, ids, embeds=embeds, mask=slots, positions=positions, cache=cache)
    start = jnp.sum(mask.astype(jnp.int32), axis=1)  # the position of the first new token
    rng, key = jax.random.split(rng)
    first = next_token(out["logits"][:, -1], key, temperature, top_p)
    return dict(t=jnp.int32(0), token=first, cache=out["cache"], done=jnp.zeros(batch, bool),
                tokens=jnp.full((batch, max_new_tokens), pad_id, jnp.int32), lengths=jnp.zeros(batch, jnp.int32),
                rng=rng, slots=slots, start=start)


def _decode_step(model, params, state, *, temperature, top_p, stop_sequences, pad_id):
    """Records `state['token']` (pad_id in finished rows) as new token t, then runs it through the model and draws
    the next one."""
    t, token, done = state["t"], state["token"], state["done"]
    tokens = state["tokens"].at[:, t].set(jnp.where(done, pad_id, token))
    lengths = state["lengths"] + (~done).astype(jnp.int32)
    done = done | _ends_with_stop(tokens, t, stop_sequences)
    prompt_len = state["slots"].shape[1] - tokens.shape[1]
    step = model.apply({"params": params}, token[:, None], mask=state["slots"],
                       positions=(state["start"] + t)[:, None], cache=state["cache"], cache_index=prompt_len + t)
    rng, key = jax.random.split(state["rng"])
    token = next_token(step["logits"][:, 0], key, temperature, top_p)
    return dict(state, t=t + 1, token=token, cache=step["cache"], done=done, tokens=tokens, lengths=lengths, rng=rng)


_prefill_jit = jax.jit(_prefill, static_argnames=("model", "max_new_tokens", "temperature", "top_p", "pad_id"))
_decode_step_jit = jax.jit(_decode_step, static_argnames=("model", "temperature", "top_p", "stop_sequences", "pad_id"),
                           donate_argnames=("state",))


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_p", "stop_sequences",
                                             "pad_id"))
def _generate(model, params, ids, embeds, mask, rng, *, max_new_tokens, temperature, top_p, stop_sequences, pad_id):
    state = _prefill(model, params, ids, embeds, mask, rng, max_new_tokens=max_new_tokens, temperature=temperature,
                     top_p=top_p, pad_id=pad_id)
    running = lambda s: (s["t"] < max_new_tokens) & ~jnp.all(s["done"])
    step = functools.partial(_decode_step, model, params, temperature=temperature, top_p=top_p,
                             stop_sequences=stop_sequences, pad_id=pad_id)
    state = jax.lax.while_loop(running, step, state)
    return state["tokens"], state["lengths"]


def _checked(ids, embeds, mask, max_new_tokens, temperature, top_p, stop_sequences, pad_id, rng) -> tuple:
    """(positional arrays, static keywords) of a generation call, the arguments checked."""
    if (ids is None) == (embeds is None):
        raise ValueError("generate: give exactly one of `ids` and `embeds`")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: expected >= 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"temperature={temperature} must be >= 0 and top_p={top_p} in (0, 1]")
    stop_sequences = tuple(tuple(int(t) for t in seq) for seq in stop_sequences)
    if any(not seq for seq in stop_sequences):
        raise ValueError("generate: empty stop sequence")
    inputs = embeds if ids is None else ids
    mask = jnp.ones(inputs.shape[:2], bool) if mask is None else jnp.asarray(mask)
    if mask.shape != inputs.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match the prompts {inputs.shape[:2]}")
    rng = jax.random.PRNGKey(0) if rng is None else rng
    arrays = (None if ids is None else jnp.asarray(ids, jnp.int32), None if embeds is None else jnp.asarray(embeds),
              mask, rng)
    return arrays, dict(max_new_tokens=max_new_tokens, temperature=float(temperature), top_p=float(top_p),
                        stop_sequences=stop_sequences, pad_id=int(pad_id))


def generate(model, params, ids=None, *, embeds=None, mask=None, max_new_tokens: int = 32, temperature: float = 0.0,
             top_p: float = 1.0, stop_sequences: Sequence[Sequence[int]] = (), pad_id: int = 0,
             rng: Optional[jax.Array] = None) -> dict:
    """Continue left-padded prompts: `ids` (B, P) or `embeds` (B, P, D), `mask` (B, P) 1 = token (default all).

    Returns `tokens` (B, max_new_tokens) int32 (after a row stops: `pad_id`) and `lengths` (B,): the tokens each row
    generated, a completed stop sequence included. A row stops once its new tokens end with a stop sequence.
    """
    arrays, static = _checked(ids, embeds, mask, max_new_tokens, temperature, top_p, stop_sequences, pad_id, rng)
    tokens, lengths = _generate(model, params, *arrays, **static)
    return {"tokens": tokens, "lengths": lengths}


def stream(model, params, ids=None, *, embeds=None, mask=None, max_new_tokens: int = 32, temperature: float = 0.0,
           top_p: float = 1.0, stop_sequences: Sequence[Sequence[int]] = (), pad_id: int = 0,
           rng: Optional[jax.Array] = None):
    """`generate` one token at a time (same arguments, same tokens): yields numpy (B,) int32, the token each row adds
    at this step (`pad_id` in rows that have stopped), until every row has stopped or after max_new_tokens steps.
    The prefill and the decode step are compiled once each; the host checks the rows between steps."""
    arrays, static = _checked(ids, embeds, mask, max_new_tokens, temperature, top_p, stop_sequences, pad_id, rng)
    stopping = {k: static[k] for k in ("temperature", "top_p", "stop_sequences", "pad_id")}
    state = _prefill_jit(model, params, *arrays, **{k: v for k, v in static.items() if k != "stop_sequences"})
    for _ in range(max_new_tokens):
        yield np.where(np.asarray(state["done"]), static["pad_id"], np.asarray(state["token"])).astype(np.int32)
        state = _decode_step_jit(model, params, state, **stopping)
        if np.all(np.asarray(state["done"])):
            return


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple:
    """Token lists -> (ids (B, P), mask (B, P)) numpy, left-padded to the longest."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = True
    return ids, mask


def main(argv):
    del argv
    from absl import flags

    from invideo_jax.convert import llama
    from invideo_jax.data import llm_tokenizer

    f = flags.FLAGS
    if not f.prompt:
        raise flags.IllegalFlagValueError("give at least one --prompt")
    dtype = jnp.dtype(f.dtype)
    model, params, report = llama.load_model_dir(f.model_dir, dtype=dtype, param_dtype=dtype)
    print(report.summary())
    tokenizer = llm_tokenizer.load(f.model_dir)
    ids, mask = left_pad([tokenizer.encode(p, bos=True) for p in f.prompt], tokenizer.pad_id)
    stops = [[tokenizer.eos_id]] + [tokenizer.encode(s) for s in f.stop]
    out = generate(model, params, ids, mask=mask, max_new_tokens=f.max_new_tokens, temperature=f.temperature,
                   top_p=f.top_p, stop_sequences=stops, pad_id=tokenizer.pad_id, rng=jax.random.PRNGKey(f.seed))
    for prompt, row, n in zip(f.prompt, np.asarray(out["tokens"]), np.asarray(out["lengths"])):
        print(f"{prompt}{tokenizer.decode(row[:n].tolist())}")


def _define_flags():
    from absl import flags

    flags.DEFINE_string("model_dir", None, "transformers LLaMA / Mistral directory", required=True)
    flags.DEFINE_multi_string("prompt", [], "prompt text (repeat for a batch)")
    flags.DEFINE_integer("max_new_tokens", 64, "tokens to generate at most")
    flags.DEFINE_float("temperature", 0.0, "0: greedy; > 0: sampling temperature")
    flags.DEFINE_float("top_p", 1.0, "nucleus mass for sampling")
    flags.DEFINE_integer("seed", 0, "sampling seed")
    flags.DEFINE_string("dtype", "float32", "compute and parameter dtype (float32, bfloat16)")
    flags.DEFINE_multi_string("stop", [], "extra stop strings (besides the EOS token)")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)

"""Answering questions about a video with a VideoChat2 / InternVideo2-Chat model: loading, frames, prompts, decoding.

`load(NAME, CHECKPOINT)` builds NAME -- one of the chat models below, a preset (invideo_jax/presets.py) or a config
file of task 'videochat2' -- and reads its weights:
an Orbax directory of ours (a run's workdir, its `checkpoints/`, or what the converter wrote), or the official files
(VideoChat2 .pth stage files in order, with `llm_dir` for the base LLM they lack; the InternVideo2-Chat-8B
safetensors directory, which holds the LLM too) through convert/videochat2.py. `frames` other than the checkpoint's
count rebuilds the encoder for them: a learned pos_embed (InternVideo2) is resampled in time as the original does at
run time; UMT's table is computed for any count. The LLM tokenizer comes from `tokenizer`, else the config's
`videochat.llm_tokenizer`, else the checkpoint directory.

Chat models (`CHAT_MODELS`; configs/videochat2.py at stage 3; the presets are encoders and video-text
models, whose inference interface a chat model does not share):
  internvideo2_chat_8b   InternVideo2-Chat-8B; CHECKPOINT: the Hugging Face directory (safetensors, LLM included)
  videochat2_mistral_7b  VideoChat2-Mistral; CHECKPOINT: umt_l16_qformer.pth, then the stage-3 .pth; llm_dir:
                         Mistral-7B-Instruct-v0.2
  videochat2_vicuna_7b   VideoChat2-Vicuna; the same with the Vicuna files and Vicuna-7B v0

Frames (`segment_centres`, the MVBench loader's get_index): the clip [start, end] seconds (default the whole video)
in `num_frames` equal segments, the frame at the centre of each; Resize(short side) + CenterCrop, then mean/std
(`normalize`: the config's, ImageNet for training; the official MVBench notebooks use CLIP's, pitfall P2).

Prompts (`prompt`; `<VideoHere>` marks the visual tokens, split as the official inference does, pitfall P8):
  mistral       {system}[INST] <Video><VideoHere></Video> [/INST] [INST] q1 [/INST] a1</s> [INST] q [/INST]
  vicuna        {system}###Human: <Video><VideoHere></Video>\\n###Human: q1\\n###Assistant: a1###
                Human: q\\n###Assistant:   (one string; the official ask() ends each question with a newline)
  internvideo2  {system}[INST] <Video><VideoHere></Video>[/INST] [INST] q1 [/INST]a1</s> [INST] q [/INST]
                (InternVideo2-Chat-8B's `chat`; the text after the visual tokens starts with its own BOS)
An answer prefix (MVBench's `Best option:(`) follows the last tag after a space. Only the first text piece gets BOS
(but internvideo2, above). The Q-Former reads `instruction` (chat: "Watch the video and answer the question.";
MVBench: its system prompt; internvideo2 and models without Q-Former text: nothing), up to its max_len tokens.

Decoding: `generate.py` on the spliced embeddings, a batch's prompts left-padded to the longest's multiple of 64
tokens (one compile per batch size and bucket); stops at EOS (mistral, internvideo2) or `###` (vicuna); a leading
<unk> / BOS token is dropped and the text is cut at `</s>` / `###` (vicuna: after `Assistant:`), as the official
`answer` does.
"""
import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from invideo_jax import generate as gen
from invideo_jax import inference, paths, presets, sharding
from invideo_jax.data import instruction, llm_tokenizer, transforms
from invideo_jax.data.video import decode_frames, frame_rate
from invideo_jax.models import posembed
from invideo_jax.models.llm import CausalLM
from invideo_jax.models.videochat import VideoChat, splice
from invideo_jax.models.vit import VisionTransformer
from invideo_jax.train.tasks import get_task

PLACEHOLDER = "<VideoHere>"
CHAT_INSTRUCTION = "Watch the video and answer the question."
PROMPT_BUCKET = 64
STOP_TEXTS = ("</s>", "###")
OFFICIAL_FILES = (".pth", ".pt", ".bin", ".safetensors")
CHAT_MODELS = {"internvideo2_chat_8b": "configs/videochat2.py:8b",
               "videochat2_mistral_7b": "configs/videochat2.py:mistral",
               "videochat2_vicuna_7b": "configs/videochat2.py:vicuna"}


def add_model_flags(parser) -> None:
    """The command-line flags that name a chat model and its files (the chat and MVBench commands)."""
    parser.add_argument("--model", required=True, help="a chat model name or a config file PATH.py[:ARG]")
    parser.add_argument("--checkpoint", required=True, action="append",
                        help="a directory of ours, or official files in order (repeat the flag)")
    parser.add_argument("--llm_dir", default="", help="the base LLM directory official stage files lack")
    parser.add_argument("--tokenizer", default="", help="the LLM's model directory with tokenizer.json")
    parser.add_argument("--qformer_tokenizer", default="", help="the Q-Former's BERT vocabulary (text input)")


def segment_centres(frame_count: int, num_frames: int, fps: float = 0.0, bounds=None) -> np.ndarray:
    """MVBench's frame indices: start = max(0, round(start_s * fps)), end = min(round(end_s * fps), count - 1)
    (the whole video without bounds), segment = (end - start) / num_frames, index k = int(start + segment / 2 +
    round(segment * k))."""
    last = frame_count - 1
    start, end = (0, last) if bounds is None else (max(0, round(bounds[0] * fps)), min(round(bounds[1] * fps), last))
    segment = (end - start) / num_frames
    return np.asarray([int(start + segment / 2 + round(segment * k)) for k in range(num_frames)], np.int64)


def prompt(template: str, question: str, history=(), system: str = "", answer_prefix: str = "") -> str:
    """The conversation text of `template` (module docstring): `history` [(question, answer)], then `question`."""
    if template == "vicuna":
        text = f"{system}###Human: <Video>{PLACEHOLDER}</Video>\n###"
        text += "".join(f"Human: {q}\n###Assistant: {a}###" for q, a in history)
        text += f"Human: {question}\n###Assistant:"
    elif template == "mistral":
        text = f"{system}[INST] <Video>{PLACEHOLDER}</Video> [/INST] "
        text += "".join(f"[INST] {q} [/INST] {a}</s> " for q, a in history)
        text += f"[INST] {question} [/INST]"
    elif template == "internvideo2":
        text = f"{system}[INST] <Video>{PLACEHOLDER}</Video>[/INST]"
        text += "".join(f" [INST] {q} [/INST]{a}</s>" for q, a in history)
        text += f" [INST] {question} [/INST]"
    else:
        raise ValueError(f"template={template!r}: expected one of {instruction.TEMPLATES}")
    return f"{text} {answer_prefix}" if answer_prefix else text


def clean_answer(template: str, text: str) -> str:
    """The reply as the official post-processing leaves it: cut at `</s>` / `###`, vicuna after `Assistant:`."""
    for stop in STOP_TEXTS:
        text = text.split(stop)[0]
    if template == "vicuna":
        text = text.split("Assistant:")[-1]
    return text.strip()


def stop_sequences(template: str, tokenizer) -> list:
    """EOS, and for vicuna the official `###` ids: the single token `###`, or `##` + `#`, where the vocabulary has
    them."""
    stops = [[tokenizer.eos_id]]
    if template == "vicuna":
        pieces = [[tokenizer.backend.token_to_id("###")],
                  [tokenizer.backend.token_to_id("##"), tokenizer.backend.token_to_id("#")]]
        stops += [p for p in pieces if None not in p]
    return stops


@dataclasses.dataclass
class ChatModel:
    """A loaded VideoChat model with its tokenizers and clip settings (see the module docstring)."""

    model: VideoChat
    params: Any
    template: str
    tokenizer: llm_tokenizer.LlmTokenizer
    qformer_tokenizer: Any  # None: the Q-Former reads no text
    num_frames: int
    crop_size: int  # the frames are resized to this short side, then centre-cropped
    normalize: str

    def __post_init__(self):
        self.llm = CausalLM(**self.model.llm_config)
        model = self.model
        self._encode = jax.jit(lambda p, video, ids, mask: model.apply(
            {"params": p}, video, ids, mask, method=VideoChat.encode_video))
        llm = self.llm
        self._embed = jax.jit(lambda p, ids, visual, visual_mask: splice(
            llm.apply({"params": p}, ids, method=CausalLM.embed), visual, visual_mask))

    @property
    def num_visual(self) -> int:
        q = self.model.qformer_config
        return q.get("num_query", 32) + q.get("num_extra_query", 64)

    def read_clip(self, path: str, bounds=None) -> np.ndarray:
        """float32 (T, S, S, 3): the segment-centre frames of `path` (within `bounds` seconds), cropped and normalised.
        Raises BadVideo."""
        fps = frame_rate(path) if bounds is not None else 0.0
        frames = decode_frames(path, lambda n: segment_centres(n, self.num_frames, fps, bounds))
        box = transforms.short_side_crop_box(frames.shape[1], frames.shape[2], self.crop_size, self.crop_size)
        return transforms.normalize(transforms.resize_box(frames, box, self.crop_size), self.normalize)

    def encode(self, clips: np.ndarray, instructions) -> jax.Array:
        """(B, Q, D_llm): the projected Q-Former outputs of clips (B, T, S, S, 3), the Q-Former reading each clip's
        instruction text."""
        ids = mask = None
        if self.qformer_tokenizer is not None and self.template != "internvideo2":
            ids = np.asarray(self.qformer_tokenizer.encode(list(instructions)))
            mask = (ids != self.qformer_tokenizer.pad_id).astype(np.int32)
        return self._encode(self.params, jnp.asarray(clips), ids, mask)

    def visual_tokens(self, clip: np.ndarray, instruction_text: str = "") -> jax.Array:
        """(1, Q, D_llm): `encode` of one clip."""
        return self.encode(np.asarray(clip)[None], [instruction_text])

    def _inputs(self, visual, texts) -> tuple:
        """(embeds (B, P, D), mask (B, P)) of prompts, each left-padded to the longest's multiple of PROMPT_BUCKET."""
        tok = self.tokenizer
        bos_after = [tok.bos_id] if instruction.bos_after_visual(self.template) else []
        rows = []
        for text in texts:
            if text.count(PLACEHOLDER) != 1:
                raise ValueError(f"the prompt must hold {PLACEHOLDER} exactly once: {text!r}")
            before, after = text.split(PLACEHOLDER)
            rows.append((tok.encode(before, bos=True), bos_after + tok.encode(after)))
        longest = max(len(before) + len(after) for before, after in rows) + self.num_visual
        width = -(-longest // PROMPT_BUCKET) * PROMPT_BUCKET
        ids = np.full((len(rows), width), tok.pad_id, np.int32)
        mask, visual_mask = np.zeros((2, len(rows), width), bool)
        for row, (before, after) in enumerate(rows):
            start = width - len(before) - self.num_visual - len(after)
            visual_start = start + len(before)
            ids[row, start:visual_start] = before
            ids[row, visual_start + self.num_visual:] = after
            mask[row, start:] = True
            visual_mask[row, visual_start:visual_start + self.num_visual] = True
        return self._embed(self.params["llm"], ids, visual, visual_mask), mask

    def _sampling(self, max_new_tokens, temperature, top_p, seed) -> dict:
        return dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                    stop_sequences=stop_sequences(self.template, self.tokenizer), pad_id=self.tokenizer.pad_id,
                    rng=jax.random.PRNGKey(seed))

    def answers(self, visual, texts, *, max_new_tokens: int = 100, temperature: float = 0.0, top_p: float = 1.0,
                seed: int = 0) -> list:
        """The cleaned replies to prompts (`texts`, one per row of `visual`) decoded together; greedy by default
        (MVBench's do_sample=False), which gives each prompt the reply it gets alone. A sampled reply depends on the
        batch it is drawn in."""
        embeds, mask = self._inputs(visual, texts)
        out = gen.generate(self.llm, self.params["llm"], embeds=embeds, mask=mask,
                           **self._sampling(max_new_tokens, temperature, top_p, seed))
        tokens, lengths = np.asarray(out["tokens"]), np.asarray(out["lengths"])
        return [clean_answer(self.template, self.decode(row[:n])) for row, n in zip(tokens, lengths)]

    def answer(self, visual, text: str, **sampling) -> str:
        """The cleaned reply to one prompt (`answers`' keywords)."""
        return self.answers(visual, [text], **sampling)[0]

    def stream_answer(self, visual, text: str, *, max_new_tokens: int = 200, temperature: float = 1.0,
                      top_p: float = 0.9, seed: int = 0):
        """Yields the reply's text in pieces as the tokens come (`reply_pieces`); `clean_answer` of the joined pieces
        is `answer`'s reply for the same settings."""
        embeds, mask = self._inputs(visual, [text])
        steps = gen.stream(self.llm, self.params["llm"], embeds=embeds, mask=mask,
                           **self._sampling(max_new_tokens, temperature, top_p, seed))
        yield from reply_pieces((int(step[0]) for step in steps), self.decode)

    def decode(self, tokens) -> str:
        tokens = list(tokens)
        for drop in (0, self.tokenizer.bos_id):  # a leading <unk>, then BOS, as the official answer() drops
            if tokens and tokens[0] == drop:
                tokens = tokens[1:]
        return self.tokenizer.decode(tokens)


def reply_pieces(tokens, decode):
    """The text of a reply in pieces as its token ids come (`decode`: ids -> text): cut at the first stop text, and
    what may be the start of one held back until the next token tells."""
    ids, shown = [], 0
    for token in tokens:
        ids.append(token)
        reply = decode(ids)
        cut = min((reply.find(s) for s in STOP_TEXTS if s in reply), default=-1)
        if cut >= 0:
            reply = reply[:cut]
        else:
            reply = reply[:len(reply) - max((k for s in STOP_TEXTS for k in range(1, len(s))
                                              if reply.endswith(s[:k])), default=0)]
        if len(reply) > shown:
            yield reply[shown:]
            shown = len(reply)
        if cut >= 0:
            return


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def _official(checkpoint: str) -> bool:
    """A file of the original releases, or a directory of them (the Hugging Face safetensors), not ours."""
    if os.path.isfile(checkpoint):
        return True
    return os.path.isdir(checkpoint) and any(f.endswith(OFFICIAL_FILES) for f in os.listdir(checkpoint))


def _our_checkpoint_dir(path: str) -> str:
    return os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path


def _tokenizer_dir(tokenizer: str, config, checkpoints) -> str:
    """The LLM tokenizer's directory: `tokenizer`, else the config's, else a checkpoint directory holding one."""
    if tokenizer or config.videochat.llm_tokenizer:
        return paths.resolve(tokenizer or config.videochat.llm_tokenizer)
    for path in checkpoints:
        if os.path.isfile(os.path.join(path, "tokenizer.json")):
            return path
    raise ValueError("no LLM tokenizer: name the LLM's model directory (tokenizer.json), e.g. --tokenizer DIR")


def _read_params(model, abstract: dict, checkpoints, llm_dir: str) -> dict:
    """Parameters from our Orbax directory or the official files, as numpy / device arrays of `abstract`'s shapes."""
    from invideo_jax.convert import common, videochat2
    from invideo_jax.train import init_from

    if all(_official(c) for c in checkpoints):
        try:
            params, _ = videochat2.load_params(model, checkpoints, paths.resolve(llm_dir) if llm_dir else None)
        except common.ConversionError as e:
            raise ValueError(f"{', '.join(checkpoints)}: {e}") from None
        return params
    if len(checkpoints) != 1:
        raise ValueError("one checkpoint directory of ours, or official files (several allowed, in order)")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    placed = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
    return init_from.restore_subtrees(placed, {"checkpoint": _our_checkpoint_dir(checkpoints[0]),
                                               "mapping": {"": "params"}})


def _resample_frames(params: dict, model_from: VideoChat, model_to: VideoChat, abstract_to: dict) -> dict:
    """`params` of a model built for other frames, the learned pos_embed resampled in time to `model_to`'s."""
    grids = [VisionTransformer(**m.vision_config).grid if m.vision_kind == "internvideo2" else None
             for m in (model_from, model_to)]

    def fit(path, value, target):
        if value.shape == target.shape:
            return value
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        if grids[0] and posembed.resamplable(name, value.shape, target.shape, *grids):
            return posembed.resample_pos_embed(np.asarray(value), *grids).astype(target.dtype)
        raise ValueError(f"{name}: {value.shape} does not fit {target.shape} at {model_to.vision_config['num_frames']}"
                         " frames")

    return jax.tree_util.tree_map_with_path(fit, params, abstract_to)


def load(name: str, checkpoints, *, tokenizer: str = "", llm_dir: str = "", frames: int = 0, normalize: str = "",
         qformer_tokenizer_path: str = "") -> ChatModel:
    """The VideoChat model `name` with the weights of `checkpoints` (a path or a list; see the module docstring)."""
    checkpoints = [paths.resolve(c) for c in ([checkpoints] if isinstance(checkpoints, str) else checkpoints)]
    for path in checkpoints:
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        preset = presets.get(CHAT_MODELS.get(name, name))
    except ValueError:
        raise ValueError(f"unknown chat model {name!r}; known: {', '.join(CHAT_MODELS)}, or a config file "
                         "PATH.py[:ARG] of task 'videochat2'") from None
    config = presets.build_config(preset)
    if config.task != "videochat2":
        raise ValueError(f"{name} is not a VideoChat model (its task is {config.task!r}, expected 'videochat2')")
    # the Q-Former reads up to its position table (the official max_txt_len 512), not training's 32 tokens: MVBench's
    # system prompt is longer than that (padding is masked, so a longer row changes nothing else)
    overrides = {"videochat.llm_tokenizer": _tokenizer_dir(tokenizer, config, checkpoints),
                 "videochat.instruction_length": config.model.kwargs.qformer_config.get("max_len", 512)}
    if qformer_tokenizer_path:
        overrides["videochat.qformer_tokenizer_path"] = paths.resolve(qformer_tokenizer_path)
    saved = presets.build_config(preset, overrides=overrides)
    saved_frames = saved.model.kwargs.vision_config.num_frames
    frames = frames or saved_frames
    config = presets.build_config(preset, overrides={**overrides, "model.kwargs.vision_config.num_frames": frames,
                                                      "data.num_frames": frames})
    task_saved, task = get_task(saved), get_task(config)
    abstract = lambda t, c: sharding.strip_boxes(inference.abstract_variables(t, c)["params"])
    params = _read_params(task_saved.model, abstract(task_saved, saved), checkpoints, llm_dir)
    if frames != saved_frames:
        params = _resample_frames(params, task_saved.model, task.model, abstract(task, config))
    llm_tok, qformer_tok = task.tokenizers()
    params = jax.device_put(params)
    size = task.model.vision_config["image_size"]
    return ChatModel(task.model, params, config.videochat.template, llm_tok, qformer_tok, frames, size,
                     normalize or config.data.normalize)

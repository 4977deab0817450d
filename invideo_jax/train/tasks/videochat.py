"""VideoChat2's training stages 2 and 3 (InternVideo2 stage 3) as the task 'videochat2' (stage 1:
train/tasks/videochat_qformer.py).

  videochat2          stages 2 and 3, `VideoChat` (models/videochat.py): next-token cross-entropy over the
                      supervised tokens of instruction batches (data/instruction.py), averaged over the batch's
                      supervised tokens. Stage 2 (`videochat.stage` 2): captions (`data.train_annotations`) answer
                      a prompt drawn from `videochat.caption_prompts`; the Q-Former reads no text; the LLM is frozen.
                      Stage 3: VideoChat2-IT files (`videochat.instruction_files`: (json, media root) pairs); the
                      Q-Former reads the template's instruction (`videochat.qformer_tokenizer`); LoRA trains, the base
                      LLM is frozen. With `videochat.eval_questions` (a question list in evaluate/mvbench.py's format,
                      videos under `videochat.eval_video_root`) the run ends with evaluate/question_set.py's accuracies
                      on them (replies of at most `videochat.eval_max_new_tokens` tokens, `eval_batch_size` questions
                      at a time) and per-question predictions.
                      Sequences hold `videochat.max_text_tokens` text tokens besides the visual ones; with
                      `videochat.length_buckets` (increasing shorter text lengths) each record goes to the shortest
                      that holds it and every batch is of one length: less padding, one compile per length.

`stage_init_from(stage, model_kwargs, stage1=..., stage2=..., llm=...)` builds `config.init_from` for the chain:
stage 2 restores the encoder, vision_layernorm and the Q-Former's query side from stage 1 (the 64 extra queries
start at zero) and the LLM from a checkpoint of the VideoChat layout; stage 3 restores the Q-Former's text
embeddings and text FFNs from stage 1 first (stage 2 has none, pitfall P6), then everything stage 2 trained plus
the base LLM from stage 2 (a Q-Former that reads no text restores nothing from stage 1); LoRA starts fresh (B = 0).
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from invideo_jax import losses
from invideo_jax.data import instruction, llm_tokenizer
from invideo_jax.data.tokenizer import load_tokenizer
from invideo_jax.models.videochat import VideoChat
from invideo_jax.train.tasks import apply_model

STAGE2_PROMPT = "Describe the following video concisely."  # the first line of the official concise_description.txt


def default_videochat_config() -> ml_collections.ConfigDict:
    """`config.videochat`: the instruction data and tokenizers of stages 2 and 3."""
    return ml_collections.ConfigDict(dict(
        stage=3, template="mistral", llm_tokenizer="", instruction_files=(), caption_prompts=(STAGE2_PROMPT,),
        max_text_tokens=512, length_buckets=(), qformer_tokenizer="bert", qformer_tokenizer_path="",
        instruction_length=32, shuffle_qa=True, eval_questions="", eval_video_root="", eval_max_new_tokens=100))


# ----------------------------------------------------------------------------------------------------------
# init_from chaining
# ----------------------------------------------------------------------------------------------------------


def qformer_paths(qformer: dict, text: bool) -> list:
    """The Q-Former subtrees of the query side (text False) or of the text side (text True)."""
    depth, freq = qformer.get("depth", 12), qformer.get("cross_attention_freq", 2)
    if text:
        return ["qformer/word", "qformer/position"] + [f"qformer/layer_{i}/{n}" for i in range(depth)
                                                       for n in ("mlp", "mlp_norm")]
    names = lambda i: ("attn", "attn_norm", "query_mlp", "query_mlp_norm") + (
        ("cross_attn", "cross_norm") if i % freq == 0 else ())
    return ["qformer/query_tokens", "qformer/embeddings_norm"] + [f"qformer/layer_{i}/{n}" for i in range(depth)
                                                                  for n in names(i)]


def llm_base_paths(llm: dict) -> list:
    """The base (non-LoRA) parameters of the LLM."""
    blocks = ["llm/blocks"] if llm.get("scan", True) else [f"llm/blocks_{i}" for i in range(llm["depth"])]
    leaves = ["input_layernorm", "post_attention_layernorm", *[f"self_attn/{p}_proj/kernel" for p in "qkvo"],
              *[f"mlp/{p}_proj/kernel" for p in ("gate", "up", "down")]]
    head = [] if llm.get("tie_embeddings", False) else ["llm/lm_head/kernel"]
    return ["llm/embed_tokens", "llm/norm", *head] + [f"{b}/{leaf}" for b in blocks for leaf in leaves]


def stage_init_from(stage: int, model_kwargs: dict, stage1: str = "", stage2: str = "",
                    llm: str = "") -> ml_collections.ConfigDict:
    """`config.init_from` of stage 2 (from stage 1 and an LLM checkpoint) or stage 3 (stage 1, then stage 2)."""
    same = lambda paths: {p: f"params/{p}" for p in paths}
    qformer, llm_config = model_kwargs["qformer_config"], model_kwargs["llm_config"]
    if stage == 2:
        sources = {"stage1": (stage1, same(["vision_encoder", "vision_layernorm", *qformer_paths(qformer, False)])),
                   "llm": (llm, same(llm_base_paths(llm_config)))}
    elif stage == 3:
        trained = ["vision_encoder", "vision_layernorm", "project_up", "qformer/extra_query_tokens",
                   *qformer_paths(qformer, False), *llm_base_paths(llm_config)]
        sources = {"stage2": (stage2, same(trained))}
        if qformer.get("text_input", True):
            sources = {"stage1": (stage1, same(qformer_paths(qformer, True))), **sources}
    else:
        raise ValueError(f"stage={stage}: init_from chains stages 2 and 3")
    return ml_collections.ConfigDict({name: dict(checkpoint=path, mapping=mapping, pos_embed_grid_src=(),
                                                 pos_embed_grid_dst=()) for name, (path, mapping) in sources.items()})


# ----------------------------------------------------------------------------------------------------------
# Stages 2 and 3
# ----------------------------------------------------------------------------------------------------------


def lm_loss(logits, ids, label_mask):
    """(loss, accuracy): logits at t predict ids at t + 1, counted where label_mask[t + 1]."""
    return losses.caption_loss(logits[:, :-1], ids[:, 1:], label_mask[:, 1:])


def mean_nll(logits, ids, label_mask):
    """(B,) each row's mean negative log-likelihood of its ids at t + 1 where label_mask[t + 1] (as `lm_loss`)."""
    mask = label_mask[:, 1:].astype(jnp.float32)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), ids[:, 1:, None], axis=-1)[..., 0]
    return (nll * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)


class Task:
    def __init__(self, config):
        self.config, self.v = config, config.videochat
        if self.v.stage not in (2, 3):
            raise ValueError(f"config.videochat.stage={self.v.stage}: the videochat2 task runs stages 2 and 3")
        if self.v.template not in instruction.TEMPLATES:
            raise ValueError(f"config.videochat.template={self.v.template!r}: expected one of {instruction.TEMPLATES}")
        self.model = VideoChat(**config.model.kwargs)
        self.num_visual = self.model.qformer_config.get("num_query", 32) + self.model.qformer_config.get(
            "num_extra_query", 64)
        self.text_input = self.model.qformer_config.get("text_input", True)
        self.length = self.v.max_text_tokens + self.num_visual
        buckets = tuple(self.v.length_buckets)
        if list(buckets) != sorted(set(buckets)) or any(not 0 < b < self.v.max_text_tokens for b in buckets):
            raise ValueError(f"config.videochat.length_buckets={buckets}: expected increasing text lengths below "
                             f"max_text_tokens={self.v.max_text_tokens}")
        self.lengths = tuple(b + self.num_visual for b in buckets) + (self.length,)
        self.init_from_mapping = {"": "params"}
        self._tokenizers = None
        if self.v.get("eval_questions"):
            self.evaluate = self.evaluate_questions

    def tokenizers(self):
        """(LLM tokenizer, Q-Former tokenizer or None), loaded once."""
        if self._tokenizers is None:
            if not self.v.llm_tokenizer:
                raise ValueError("config.videochat.llm_tokenizer is empty: name the LLM's model directory")
            qformer = None
            if self.text_input:
                qformer = load_tokenizer(self.v.qformer_tokenizer, self.v.qformer_tokenizer_path,
                                         context_length=self.v.instruction_length)
            self._tokenizers = (llm_tokenizer.load(self.v.llm_tokenizer), qformer)
        return self._tokenizers

    def encode_record(self, record, rng, length=None) -> dict:
        """The token fields of one record, `length` positions long (default: all of them; QA order shuffled as the
        official, stage 2's prompt drawn)."""
        tok, qtok = self.tokenizers()
        qa = list(record.qa)
        if self.v.shuffle_qa and len(qa) > 1:
            qa = [qa[k] for k in rng.permutation(len(qa))]
        msg = " " + str(rng.choice(list(self.v.caption_prompts))) if self.v.stage == 2 else ""
        before, pieces = instruction.conversation(self.v.template, qa, msg)
        out = instruction.encode_conversation(tok, before, pieces, self.num_visual, length or self.length,
                                              instruction.bos_after_visual(self.v.template))
        if qtok is not None:
            ids = qtok.encode([instruction.qformer_instruction(self.v.template, qa)])[0]
            out.update(instruction=ids, instruction_mask=(ids != qtok.pad_id).astype(np.int32))
        return out

    def records(self) -> list:
        d = self.config.data
        if self.v.stage == 2:
            return instruction.caption_records(d.train_annotations, d.root)
        if not self.v.instruction_files:
            raise ValueError("config.videochat.instruction_files is empty: name (json, media root) pairs")
        return [r for path, root in self.v.instruction_files for r in instruction.read_instruction_json(path, root)[0]]

    def record_lengths(self, records) -> list | None:
        """Each record's sequence length: the shortest of `self.lengths` that holds it as one draw of `encode_record`
        tokenizes it (a later draw that is longer is cut at the end); None without `videochat.length_buckets`."""
        if len(self.lengths) == 1:
            return None
        rng = np.random.default_rng(0)
        tokens = [int(self.encode_record(r, rng)["mask"].sum()) for r in records]
        return [next((n for n in self.lengths if count <= n), self.length) for count in tokens]

    def train_iterator(self, *, seed, batch_size, process_index=None, process_count=None):
        records = self.records()
        return instruction.train_iterator(records, self.config.data, self.encode_record, seed=seed,
                                          batch_size=batch_size, lengths=self.record_lengths(records),
                                          process_index=process_index, process_count=process_count)

    def stored_batch_shapes(self, batch_size: int) -> dict:
        """The token fields of a batch (for the AOT compile)."""
        shape = (batch_size, self.length)
        shapes = {"ids": (shape, jnp.int32), "visual_mask": (shape, jnp.bool_), "mask": (shape, jnp.int32),
                  "label_mask": (shape, jnp.bool_)}
        if self.text_input:
            shapes.update(instruction=((batch_size, self.v.instruction_length), jnp.int32),
                          instruction_mask=((batch_size, self.v.instruction_length), jnp.int32))
        return {k: jax.ShapeDtypeStruct(*spec) for k, spec in shapes.items()}

    def init_variables(self, rng, batch):
        del batch
        return self.model.init({"params": rng, "dropout": rng}, *self.model.dummy_inputs())

    def _logits(self, params, batch, rng=None):
        args = (batch["video"], batch["ids"], batch["visual_mask"], batch["mask"], batch.get("instruction"),
                batch.get("instruction_mask"))
        if rng is None:
            return self.model.apply({"params": params}, *args)["logits"]
        return apply_model(self.model, params, {}, *args, rng=rng)[0]["logits"]

    def loss(self, params, model_state, batch, rng):
        loss, accuracy = lm_loss(self._logits(params, batch, rng), batch["ids"], batch["label_mask"])
        return loss, ({"loss": loss, "accuracy": accuracy}, model_state)

    def predict(self, params, model_state, batch):
        """Per-example mean negative log-likelihood of the supervised tokens."""
        del model_state
        return {"nll": mean_nll(self._logits(params, batch), batch["ids"], batch["label_mask"])}

    def evaluate_questions(self, state, predict, mesh) -> dict:
        """evaluate/question_set.py on `videochat.eval_questions` with the state's weights (module docstring)."""
        del predict, mesh
        from invideo_jax.evaluate import mvbench, question_set, videochat

        questions = mvbench.read_questions(self.v.eval_questions, self.v.eval_video_root)
        tok, qtok = self.tokenizers()
        d = self.config.data
        chat = videochat.ChatModel(self.model, state.params, self.v.template, tok, qtok, d.num_frames, d.crop_size,
                                   d.normalize)
        return question_set.evaluate(chat, questions, self.v.eval_max_new_tokens, self.config.eval_batch_size)

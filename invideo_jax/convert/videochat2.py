"""VideoChat2 (.pth, stages 1-3) and InternVideo2-Chat-8B (safetensors) files -> our `VideoChat` params.

`load_params(model, files, llm_dir)` reads the files in order (a later file's keys replace an earlier one's, as the
original loads stage 1, then stage 2 / 3 over it with strict=False) and, for the LLM, a transformers LLaMA / Mistral
directory: a VideoChat2 stage-2 / stage-3 file holds only the weights that trained (pitfall: no base LLM), so the
base weights come from `llm_dir`; the file's LoRA keys (peft, both naming generations) go on top. Loading says so
when either is missing. Files are .pth / .bin / .safetensors, or a directory of sharded safetensors with an index.

Layouts (theirs -> ours):
  vision_encoder.encoder.{patch_embed,blocks.{i}}.*  UMT-L/16 (VideoChat2) -> vision_encoder/{patch_embed,
                                                    transformer/blocks_{i}} (the VideoMAE block keys)
  vision_encoder.{cls_token,pos_embed,patch_embed,blocks.{i}}.*  InternVideo2-1B (InternVideo2-Chat-8B; layer-scale
                                                    `ls1` / `ls2` plain or `.gamma`) -> vision_encoder/...
  vision_layernorm                                  -> vision_layernorm
  qformer.bert.embeddings.{word,position}_embeddings, .LayerNorm -> qformer/{word,position,embeddings_norm}
  qformer.bert.encoder.layer.{i}.*                  -> qformer/layer_{i}/* (BERT keys of convert/bert.py, plus
                                                    intermediate_query / output_query -> query_mlp, query_mlp_norm)
  query_tokens, extra_query_tokens                  -> qformer/query_tokens, qformer/extra_query_tokens
  llama_proj | mistral_proj | project_up            -> project_up
  llama_model. | mistral_model. | lm. + (base_model.model.) LLaMA keys -> llm/ (convert/llama.py)
Dropped and listed: what no VideoChat part uses -- stage 1's `qformer.cls.*`, `vision_temp_embed`, `temp`,
`vision_proj`, `text_proj`, `itm_head`; InternVideo2-Chat's `project_down` and `img_pos_embed` (images are not
supported); position-id and rotary buffers. Left at init and listed: a stage-1 file's `extra_query_tokens` (zeros,
as the original creates them in stage 2) and `project_up`. A stage-2 file lacks the Q-Former's text embeddings and
FFNs (pitfall P6): give the stage-1 file before it.
"""
import dataclasses
import os
import re

import flax.linen as nn
import jax

from invideo_jax.convert import bert, common, internvideo2, llama, videomae
from invideo_jax.convert.common import ConversionError, Format, conv3d, linear, norm, rule, scoped
from invideo_jax.models.llm import CausalLM
from invideo_jax.models.videochat import VideoChat

LLM_PREFIXES = ("llama_model.", "mistral_model.", "lm.")
QFORMER_LAYER = [
    *bert.LAYER,
    *linear("query_mlp/fc1", "intermediate_query.dense"),
    *linear("query_mlp/fc2", "output_query.dense"),
    *norm("query_mlp_norm", "output_query.LayerNorm"),
]
QFORMER = [
    rule("word", "embeddings.word_embeddings.weight"),
    rule("position", "embeddings.position_embeddings.weight"),
    *norm("embeddings_norm", "embeddings.LayerNorm"),
    *scoped(QFORMER_LAYER, "layer_{i}/", "encoder.layer.{i}."),
]
UMT = [
    *conv3d("patch_embed/proj", "patch_embed.proj"),
    *scoped(videomae.OFFICIAL_BLOCK, "transformer/blocks_{i}/", "blocks.{i}."),
]
INTERNVIDEO2 = [
    *conv3d("patch_embed/proj", "patch_embed.proj"),
    rule("cls_token", "cls_token"),
    rule("pos_embed", "pos_embed"),
    *scoped(internvideo2.BLOCK, "transformer/blocks_{i}/", "blocks.{i}."),
]
BRIDGE = [
    *norm("vision_layernorm", "vision_layernorm"),
    *scoped(QFORMER, "qformer/", "qformer.bert."),
    rule("qformer/query_tokens", "query_tokens"),
    rule("qformer/extra_query_tokens", "extra_query_tokens"),
    *linear("project_up", "project_up"),
]
FORMATS = {
    "umt": Format(rules=(*scoped(UMT, "vision_encoder/", "vision_encoder.encoder."), *BRIDGE),
                  aliases=((r"^(llama|mistral)_proj\.", "project_up."),)),
    "internvideo2": Format(rules=(*scoped(INTERNVIDEO2, "vision_encoder/", "vision_encoder."), *BRIDGE),
                           aliases=((r"^(vision_encoder\.blocks\.\d+\.ls[12])$", r"\1.gamma"),)),
}
UNUSED = (r"^qformer\.cls\.", r"^(vision_temp_embed|temp)$", r"^(vision_proj|text_proj|itm_head|project_down)\.",
          r"^vision_encoder\.(img_pos_embed|clip_projector\.)", r"\.position_ids$")
AT_INIT = ((r"^qformer/extra_query_tokens$", r"^extra_query_tokens$"), (r"^project_up/", r"^project_up\."))
TEXT_PARTS = r"^qformer/(word|position|layer_\d+/(mlp|mlp_norm)/)"


def read(source) -> dict:
    """A file, a sharded-safetensors directory or a state dict -> the flat {key: numpy array}."""
    if isinstance(source, (str, os.PathLike)):
        source = os.fspath(source)
        state = llama.read_state(source) if os.path.isdir(source) else common.load_file(source)
    else:
        state = source
    return {k.removeprefix("module."): common.to_numpy(v) for k, v in common.unwrap(state).items()}


def split_llm(state: dict) -> tuple:
    """({bridge and vision keys}, {LLM keys without the VideoChat2 prefix})."""
    bridge, lm = {}, {}
    for key, value in state.items():
        prefix = next((p for p in LLM_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            bridge[key] = value
        else:
            lm[key[len(prefix):]] = value
    return bridge, lm


def load_params(model: VideoChat, files=(), llm_dir=None, drop=()):
    """VideoChat2 / InternVideo2-Chat files (in order) + a base LLM directory -> (params, common.Report)."""
    files = [files] if isinstance(files, (str, os.PathLike, dict)) else list(files)
    if not files:
        raise ConversionError("no VideoChat2 / InternVideo2-Chat file given: the vision encoder, Q-Former and "
                              "projection come from it (the LLM directory holds the language model only)")
    state = {}
    for source in files:
        state.update(read(source))
    bridge_state, llm_state = split_llm(state)
    llm_state = common.normalize_keys(llm_state, llama.FORMAT)
    if llm_dir is not None:
        llm_state = {**common.normalize_keys(llama.read_state(os.fspath(llm_dir)), llama.FORMAT), **llm_state}
    if "model.embed_tokens.weight" not in llm_state:
        raise ConversionError("the files hold no base LLM weights (a VideoChat2 stage-2 / stage-3 file keeps only the "
                              "weights that trained): give the base LLM's transformers directory (llm_dir), e.g. "
                              "Mistral-7B-Instruct-v0.2 or Vicuna-7B v0")
    llm_params, llm_report = llama.load_params(llm_state, CausalLM(**model.llm_config))

    fmt = FORMATS[model.vision_kind]
    bridge_state = common.normalize_keys(bridge_state, fmt)
    expected = {k: v for k, v in common.abstract_params(model, *model.dummy_inputs()).items() if k != "llm"}
    wanted = common.flatten(jax.eval_shape(common.scan_to_loop, expected))
    missing_text = [p for p in wanted if re.match(TEXT_PARTS, p)
                    and not all(k in bridge_state for k in common.find_rule(fmt.rules, p)[1])]
    if missing_text:
        raise ConversionError(f"the files lack the Q-Former's text parts ({', '.join(missing_text[:4])}, ...): a "
                              "VideoChat2 stage-2 file drops them (pitfall P6); give the stage-1 file "
                              "(umt_l16_qformer.pth) before it, or build the model without Q-Former text input")
    at_init = tuple(ours for ours, theirs in AT_INIT if not any(re.search(theirs, k) for k in bridge_state))

    def initial_values():
        pick = lambda v: {k: x for k, x in common.flatten(nn.meta.unbox(v)["params"]).items()
                          if any(re.search(p, k) for p in at_init)}
        init = jax.jit(lambda key: pick(model.init(key, *model.dummy_inputs())))(jax.random.key(0, impl="rbg"))
        return common.unflatten(init)

    bridge_params, report = common.convert(bridge_state, dataclasses.replace(fmt, at_init=at_init), expected,
                                           (*drop, *UNUSED), initial_values)
    params = {**bridge_params, "llm": llm_params}
    return params, common.Report(report.num_tensors + llm_report.num_tensors,
                                 report.num_params + llm_report.num_params, report.dropped + llm_report.dropped,
                                 report.at_init + [f"llm/{p}" for p in llm_report.at_init])


def to_state_dict(params, vision_kind: str = "umt") -> dict:
    """Our params -> {key: numpy array}: the InternVideo2-Chat layout (`project_up`, `lm.`) for vision_kind
    'internvideo2', VideoChat2's (`mistral_proj`, `mistral_model.base_model.model.`) for 'umt'."""
    out = common.export({k: v for k, v in params.items() if k != "llm"}, FORMATS[vision_kind])
    rename = (r"^project_up\.", "mistral_proj.") if vision_kind == "umt" else (r"\.ls([12])\.gamma$", r".ls\1")
    out = {re.sub(*rename, k): v for k, v in out.items()}
    llm_prefix = "mistral_model.base_model.model." if vision_kind == "umt" else "lm."
    out.update((llm_prefix + k, v) for k, v in llama.to_state_dict(params["llm"]).items())
    return out

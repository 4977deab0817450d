"""Size tables shared by every recipe (defined in invideo_jax/sizes.py), and the `arg` parser for `get_config(arg)`.

A size is a row, not a class: `vit_encoder("B/16")` returns VisionTransformer keyword arguments.
"""
import ml_collections

# The size tables live in the package (the tools need them without configs/); recipes use them from here.
from invideo_jax.sizes import (  # noqa: F401
    CLIP_CONTEXT_LENGTH, CLIP_TEXT_SIZES, CLIP_VISION_SIZES, CLIP_VOCAB_SIZE, DECODER_SIZES, VIT_SIZES, decode_variant,
    vit_encoder)


def parse_arg(arg, **defaults) -> ml_collections.ConfigDict:
    """'vit_b,frames=8' style string -> ConfigDict of `defaults` updated; a bare first word sets `variant`.

    Values are converted to the type of their default (booleans: true or false, any case); an unknown key or a value
    that does not convert raises, naming the key.
    """
    out = ml_collections.ConfigDict(defaults)
    for i, item in enumerate(filter(None, (arg or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            if i or "variant" not in defaults:
                raise ValueError(f"config arg {item!r} needs the form key=value")
            key, value = "variant", key
        if key not in defaults:
            raise ValueError(f"unknown config arg {key!r}; known: {sorted(defaults)}")
        out[key] = _convert(key, value, defaults[key])
    return out


def _convert(key: str, value: str, default):
    if isinstance(default, bool):
        if value.lower() not in ("true", "false"):
            raise ValueError(f"config arg {key}={value!r}: expected true or false")
        return value.lower() == "true"
    try:
        return type(default)(value)
    except ValueError:
        raise ValueError(f"config arg {key}={value!r}: expected type {type(default).__name__}") from None


def train_config(task: str, model_kwargs: dict, model_name: str = "vit") -> ml_collections.ConfigDict:
    """The fields every training stage has, with defaults; recipes override them. Returned unlocked.

    `model_name` (`c.model.name`): the classification task builds that model class from `model_kwargs` (one of
    `invideo_jax.train.tasks.classification.MODELS`: 'vit', 'uniformerv2', 'fusion', 'internvideo2'); every other
    task has one model and does not read it.
    """
    from invideo_jax.data.pipeline import default_data_config
    from invideo_jax.train.optim import default_optim_config

    c = ml_collections.ConfigDict()
    c.task = task
    c.model = ml_collections.ConfigDict({"name": model_name, "kwargs": model_kwargs})
    c.data = default_data_config()
    c.optim = default_optim_config()
    c.seed = 0
    c.batch_size = 256  # global
    c.grad_accum_steps = 1  # k > 1: the batch runs as k microbatches inside one step (trainer.make_train_step)
    c.total_steps = 1000
    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.nonfinite = "skip"  # non-finite loss/gradient: "skip" the step (counted, logged) or "stop" the run with an error
    c.eval_every = 0  # 0: evaluate only at the end
    # Classification evaluated on another label set that the head covers (K710 -> K400/600/700): class-name files.
    c.label_map = ml_collections.ConfigDict(dict(source="", target=""))
    c.eval_batch_size = 64
    c.profile_steps = 0  # N > 0: a jax.profiler trace of N train steps (from the run's 2nd step) in WORKDIR/profile
    c.transfer_guard = ""  # e.g. "disallow": jax.transfer_guard level around each train step (implicit transfers raise)
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1))
    c.sharding_rules = "fsdp"
    # Restore subtrees of an earlier stage: checkpoint = a checkpoints dir (or a stage name in a pipeline);
    # mapping = {our path: saved path}; empty mapping = the task's default (e.g. encoder <- pre-training).
    # A learned pos_embed of another frame count / resolution is resampled given both (t, h, w) token grids.
    # Several sources: replace it by named ones, {name: {checkpoint, mapping}} (configs/internvideo_fusion.py).
    c.init_from = ml_collections.ConfigDict(dict(checkpoint="", mapping={}, pos_embed_grid_src=(),
                                                 pos_embed_grid_dst=()))
    return c


def mask_config(v2: bool = False, ratio: float = 0.9) -> ml_collections.ConfigDict:
    """Tube masking for the encoder; VideoMAE V2 adds running-cell decoder masking at 0.5."""
    return ml_collections.ConfigDict(dict(kind="tube", ratio=ratio, decoder_kind="running_cell" if v2 else "none",
                                          decoder_ratio=0.5, normalize_target=True))

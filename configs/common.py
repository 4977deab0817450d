"""Size tables shared by every recipe, and the `arg` parser for `get_config(arg)`.

A size is a row, not a class: `vit_encoder("B/16")` returns VisionTransformer keyword arguments.
"""
import ml_collections

# width, depth, heads, MLP hidden. Parameter counts (encoder, no head) are checked by tests/test_sizes.py.
VIT_SIZES = {
    "Ti": dict(width=192, depth=12, num_heads=3, mlp_dim=768),
    "S": dict(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "B": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "L": dict(width=1024, depth=24, num_heads=16, mlp_dim=4096),
    "H": dict(width=1280, depth=32, num_heads=16, mlp_dim=5120),
    "g": dict(width=1408, depth=40, num_heads=16, mlp_dim=6144),  # VideoMAE V2 / InternVideo2-1B trunk
    "6B": dict(width=3200, depth=48, num_heads=25, mlp_dim=12800),
}

# VideoMAE pre-training decoders: width and heads of the official `pretrain_videomae_*` builders, MLP int(width x
# the encoder's mlp_ratio), depth of the official pre-training scripts (`--decoder_depth`). S-H: VideoMAE (V1); g:
# VideoMAE V2 (mlp_ratio 48/11). VideoMAE V2's own H builder differs (512 wide, 8 heads, MLP 2048) and its scripts use
# depth 4: set the decoder_* fields for such a file. Checked by tests/test_sizes.py.
DECODER_SIZES = {
    "S": dict(decoder_width=192, decoder_heads=3, decoder_depth=4, decoder_mlp_dim=768),
    "B": dict(decoder_width=384, decoder_heads=6, decoder_depth=4, decoder_mlp_dim=1536),
    "L": dict(decoder_width=512, decoder_heads=8, decoder_depth=12, decoder_mlp_dim=2048),
    "H": dict(decoder_width=640, decoder_heads=8, decoder_depth=12, decoder_mlp_dim=2560),
    "g": dict(decoder_width=512, decoder_heads=8, decoder_depth=4, decoder_mlp_dim=2234),
}

# OpenAI CLIP towers (UniFormerV2 / InternVideo-MM backbones). Text: 77-token context, 49408 BPE ids.
CLIP_VISION_SIZES = {
    "B/16": dict(width=768, depth=12, num_heads=12, mlp_dim=3072, patch_size=16, image_size=224),
    "L/14": dict(width=1024, depth=24, num_heads=16, mlp_dim=4096, patch_size=14, image_size=224),
    "L/14@336": dict(width=1024, depth=24, num_heads=16, mlp_dim=4096, patch_size=14, image_size=336),
}
CLIP_TEXT_SIZES = {
    "B/16": dict(width=512, depth=12, num_heads=8, mlp_dim=2048, embed_dim=512),
    "L/14": dict(width=768, depth=12, num_heads=12, mlp_dim=3072, embed_dim=768),
}
CLIP_VOCAB_SIZE, CLIP_CONTEXT_LENGTH = 49408, 77


def decode_variant(variant: str) -> tuple:
    """'B/16' -> ('B', 16)."""
    size, _, patch = variant.partition("/")
    if size not in VIT_SIZES or not patch.isdigit():
        raise ValueError(f"unknown ViT variant {variant!r}; expected SIZE/PATCH with SIZE in {sorted(VIT_SIZES)}")
    return size, int(patch)


def vit_encoder(variant: str, **overrides) -> dict:
    """VideoMAE-style encoder kwargs (q/v bias, LayerNorm 1e-6, exact GELU, fixed 1-D sin-cos)."""
    size, patch = decode_variant(variant)
    cfg = dict(VIT_SIZES[size], patch_size=patch, tubelet_size=2, num_frames=16, image_size=224,
               pos_embed="sincos_1d", qkv_bias="qv", norm="layernorm", norm_eps=1e-6, act="gelu")
    cfg.update(overrides)
    return cfg


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

    `model_name` (`c.model.name`) tells a task which model class takes `model_kwargs` (classification:
    'vit' or 'uniformerv2').
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
    c.eval_batch_size = 64
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

"""Model size tables (rows of keyword arguments, not classes) shared by the recipes in configs/ and the tools.

`vit_encoder("B/16")` returns VisionTransformer keyword arguments, `internvideo2_encoder("1B")` InternVideo2's.
configs/common.py and configs/internvideo2.py re-export them for the recipes.
"""

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


# InternVideo2 (see configs/internvideo2.py for the parameter counts and the MLP activation).
INTERNVIDEO2_SIZES = {
    "S": VIT_SIZES["S"],  # 384 / 12 / 6 / 1536
    "B": VIT_SIZES["B"],  # 768 / 12 / 12 / 3072
    "L": VIT_SIZES["L"],  # 1024 / 24 / 16 / 4096
    "1B": VIT_SIZES["g"],  # 1408 / 40 / 16 / 6144 (mlp_ratio 48/11)
    "6B": VIT_SIZES["6B"],  # 3200 / 48 / 25 / 12800
}


def internvideo2_encoder(size: str, frames: int = 8, image_size: int = 224, **overrides) -> dict:
    """InternVideo2 kwargs for `size` at `frames` x `image_size`; `overrides` set any other field (scan, remat,
    dtype, num_classes, drop_path, ...)."""
    if size not in INTERNVIDEO2_SIZES:
        raise ValueError(f"unknown InternVideo2 size {size!r}; expected one of {sorted(INTERNVIDEO2_SIZES)}")
    if frames < 1 or image_size % 14:
        raise ValueError(f"frames={frames} must be >= 1 and image_size={image_size} a multiple of the patch size 14")
    cfg = dict(INTERNVIDEO2_SIZES[size], patch_size=14, tubelet_size=1, num_frames=frames, image_size=image_size,
               layer_scale=1e-5, norm_eps=1e-6, act="gelu_tanh", attn_pool_heads=16, clip_embed_dim=768)
    cfg.update(overrides)
    return cfg

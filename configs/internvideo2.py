"""InternVideo2 vision encoder: the size table and the encoder recipe (kwargs of `models.internvideo2.InternVideo2`).

Sizes (internvideo.md 1.7): the distilled students S/14, B/14, L/14 and the stage-1/2 encoders 1B and 6B; all use
patch 14, tubelet 1, a 16-head attention pool to 768 and LayerScale 1e-5. Parameter counts at 8 frames of 224
(2048 patch tokens), counted as the official `InternVideo2` module holds them without its fine-tuning `fc_norm` /
`head`: patch embedding, cls_token, pos_embed (1 + 2048 positions), the blocks and `clip_projector` (checked by
tests/test_internvideo2.py):

  S 23,043,840   B 89,438,976   L 308,929,280   1B 1,020,708,608   6B 5,941,735,168

Every frame of 224 adds 256 * D pos_embed entries (1B: 360,448; 6B: 819,200), e.g. 1B at 4 frames (the released
stage-2 files) holds 1,019,266,816. A head on 768 features adds 2 * 768 + 769 * num_classes.

MLP activation (`act`): 'gelu_tanh', the tanh-approximate GELU of flash-attn's fused MLP that every released
checkpoint was trained with (official `use_fused_mlp=True`); 'gelu' (exact) for weights trained by the official code
with `use_fused_mlp=False`. The checkpoint files do not record it: override it with the `act=` ARG of the distill and
align configs, or `--config.model.kwargs[.student|.vision_config].act=gelu`.
"""
from invideo_jax import sizes

# The table and the encoder recipe live in the package (the converter needs them without configs/).
SIZES, encoder_config = sizes.INTERNVIDEO2_SIZES, sizes.internvideo2_encoder

# Stochastic depth of the official pre-training recipes (internvideo.md 5.4): distillation of S/B/L, stage 1 of 1B/6B.
PRETRAIN_DROP_PATH = {"S": 0.05, "B": 0.05, "L": 0.05, "1B": 0.25, "6B": 0.3}


def pos_embed_grid(frames: int, image_size: int = 224, patch_size: int = 14, tubelet_size: int = 1) -> tuple:
    """(t, h, w) of a pos_embed, for `init_from.pos_embed_grid_src` / `_dst` when frames or resolution change."""
    return (frames // tubelet_size, image_size // patch_size, image_size // patch_size)


"""Per-clip features and last-layer tokens of the video encoders, the building blocks of the tasks' `encode_video`
(the inference interface, invideo_jax/inference.py): each takes (module, Flax variables, normalised clips
(B, T, S, S, 3)) and returns {'features': (B, D), 'tokens': (B, t, n, D)},
`tokens` on the encoder's (time, tokens per time step) grid."""
from invideo_jax.models.internvideo2 import InternVideo2
from invideo_jax.models.uniformerv2 import UniFormerV2
from invideo_jax.models.vit import VisionTransformer


def on_grid(tokens, grid: tuple):
    """(B, t * n, D) -> (B, t, n, D) for grid (t, n)."""
    return tokens.reshape(tokens.shape[0], *grid, tokens.shape[-1])


def vit(model: VisionTransformer, variables, video) -> dict:
    """`pooled` (fine-tuned ViTs: the mean-pooled, fc-normed pre-logits) or, without pooling, the token mean; tokens
    without CLS, (B, t, h*w, D)."""
    out = model.apply(variables, video)
    tokens = out["tokens"][:, int(model.cls_token):]
    features = out["pooled"] if "pooled" in out else tokens.mean(axis=1)
    t, h, w = model.grid
    return {"features": features, "tokens": on_grid(tokens, (t, h * w))}


def internvideo2(model: InternVideo2, variables, video) -> dict:
    """The attention-pooled `pooled`; tokens (B, t, h*w, D) without CLS."""
    out = model.apply(variables, video)
    t, h, w = model.grid
    return {"features": out["pooled"], "tokens": on_grid(out["tokens"][:, 1:], (t, h * w))}


def uniformerv2(model: UniFormerV2, variables, video) -> dict:
    """The fused (global query + frame CLS) pre-head feature; tokens (B, t, 1 + h*w, C), each step's CLS first."""
    out = model.apply(variables, video)
    return {"features": out["features"], "tokens": out["tokens"]}

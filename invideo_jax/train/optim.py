"""Optax recipes of the VideoMAE lineage: AdamW, cosine schedule with warm-up, layer-wise LR decay, freezing.

Config fields (`default_optim_config()`):
  base_lr          peak learning rate before batch scaling
  lr_batch_denom   peak lr = base_lr * global_batch / lr_batch_denom; 0 or None: peak lr = base_lr
  b1, b2, eps      AdamW moments and epsilon
  weight_decay     decoupled weight decay, applied only to parameters of per-layer rank >= 2 that are not
                   pos_embed / positional_embedding / cls_token / mask_token / *bias / *scale / `no_decay`
  warmup_steps     linear warm-up from `warmup_lr` to the peak, then cosine to `min_lr` at `total_steps`
  warmup_lr        learning rate at step 0 (not batch-scaled)
  min_lr           learning rate at `total_steps` (not batch-scaled)
  layer_decay      lr scale layer_decay ** (num_layers + 1 - layer_id); 1.0 turns it off
  num_layers       encoder depth for layer decay
  clip_grad        clip trainable gradients to this global norm; 0 turns it off
  frozen           regexes (re.match on '/'-joined paths) of parameters that get zero updates and no state
  no_decay         extra regexes (re.match) of parameters without weight decay
  layer_decay_prefix  regex (re.match) of the encoder subtree: '' for a bare ViT, 'encoder/' in composites
  ema_decay        > 0: also keep a moving average of the weights in the optimiser state (train/ema.py; official
                   `--model_ema` 0.9999); 0 turns it off

Layer ids inside the encoder: 0 for patch_embed / cls_token / pos_embed, i + 1 for `blocks_{i}`, and
num_layers + 1 for everything else (also everything outside the encoder). Scanned blocks (`blocks/...`,
leading layer axis) get a per-layer scale array of shape (L, 1, ..., 1).
"""
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from invideo_jax.train import ema

_NO_DECAY = re.compile(r"(^|/)(pos_embed|positional_embedding|cls_token|mask_token)$|(bias|scale)$")
_EMBEDDINGS = ("patch_embed", "cls_token", "pos_embed")
_BLOCK = re.compile(r"(^|/)blocks_(\d+)/")
_SCANNED_BLOCKS = re.compile(r"(^|/)blocks/")


class ParamRow(NamedTuple):
    """How the optimiser treats one parameter (lr_scale is a per-layer list for scanned blocks)."""

    path: str
    shape: tuple
    lr_scale: Any
    weight_decay: bool
    frozen: bool


def default_optim_config() -> ml_collections.ConfigDict:
    """All optimiser fields with fine-tuning defaults (VideoMAE: AdamW 0.9/0.999, wd 0.05); locked."""
    return ml_collections.ConfigDict(dict(
        base_lr=1e-3, lr_batch_denom=256, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05,
        warmup_steps=0, warmup_lr=1e-6, min_lr=1e-6, layer_decay=1.0, num_layers=0, clip_grad=0.0,
        frozen=(), no_decay=(), layer_decay_prefix="", ema_decay=0.0,
    )).lock()


def make_optimizer(cfg, params, *, total_steps: int, global_batch: int):
    """Returns (tx, lr_schedule); `params` (arrays or ShapeDtypeStructs) fixes the per-parameter rules."""
    _check_config(cfg, total_steps, global_batch)
    rows = {row.path: row for row in _param_rows(params, cfg)}

    peak = cfg.base_lr * global_batch / cfg.lr_batch_denom if cfg.lr_batch_denom else cfg.base_lr
    schedule = optax.warmup_cosine_decay_schedule(cfg.warmup_lr, peak, cfg.warmup_steps, total_steps, cfg.min_lr)
    adamw = optax.adamw(schedule, cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay,
                        mask=lambda tree: _rule_tree(tree, rows, "weight_decay"))
    trainable = optax.chain(optax.clip_by_global_norm(cfg.clip_grad), adamw) if cfg.clip_grad else adamw
    labels = jax.tree.map(lambda frozen: "frozen" if frozen else "train", _rule_tree(params, rows, "frozen"))
    tx = optax.multi_transform({"train": trainable, "frozen": optax.set_to_zero()}, labels)
    if cfg.layer_decay != 1.0:
        scales = _rule_tree(params, rows, "lr_scale")
        tx = optax.chain(tx, optax.stateless(
            lambda updates, _: jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales)))
    if cfg.ema_decay:
        tx = optax.chain(tx, ema.track(cfg.ema_decay))
    return tx, schedule


def describe(params, cfg) -> list:
    """One ParamRow per parameter leaf, for logging and tests; frozen rows have lr_scale 0 and no decay."""
    return [row._replace(lr_scale=row.lr_scale.ravel().tolist()) if isinstance(row.lr_scale, np.ndarray) else row
            for row in _param_rows(params, cfg)]


def _param_rows(params, cfg) -> list:
    """ParamRows with numpy per-layer scale arrays; checks that every configured regex matches something."""
    rows = []
    for key_path, leaf in jax.tree_util.tree_leaves_with_path(params):
        path, shape = _path(key_path), tuple(leaf.shape)
        if any(re.match(rx, path) for rx in cfg.frozen):
            rows.append(ParamRow(path, shape, 0.0, False, True))
            continue
        scanned = bool(_SCANNED_BLOCKS.search(path))
        decay = (len(shape) - scanned >= 2 and not _NO_DECAY.search(path)
                 and not any(re.match(rx, path) for rx in cfg.no_decay))
        rows.append(ParamRow(path, shape, _lr_scale(path, shape, scanned, cfg), decay, False))
    paths = [row.path for row in rows]
    for field in ("frozen", "no_decay"):
        for rx in cfg[field]:
            if not any(re.match(rx, p) for p in paths):
                raise ValueError(f"optim.{field}: pattern {rx!r} matches no parameter")
    return rows


def _path(key_path) -> str:
    """Tree key path -> 'encoder/blocks_0/attn/qkv/kernel'."""
    return jax.tree_util.keystr(key_path, simple=True, separator="/")


def _rule_tree(tree, rows: dict, attr: str):
    """`tree` with each leaf replaced by its row's `attr` (works on optax's masked trees too)."""
    return jax.tree.map_with_path(lambda p, _: getattr(rows[_path(p)], attr), tree)


def _lr_scale(path: str, shape: tuple, scanned: bool, cfg):
    """layer_decay ** (L + 1 - layer_id): a float, or an (L, 1, ..., 1) array for scanned blocks."""
    if cfg.layer_decay == 1.0:
        return 1.0
    depth, prefix = cfg.num_layers, re.match(cfg.layer_decay_prefix, path)
    if prefix is None:
        return 1.0
    rel = path[prefix.end():]
    if rel.split("/")[0] in _EMBEDDINGS:
        return float(cfg.layer_decay ** (depth + 1))
    if scanned:
        if shape[0] != depth:
            raise ValueError(f"optim.num_layers={depth} but scanned parameter {path} has {shape[0]} layers")
        scale = cfg.layer_decay ** (depth - np.arange(depth, dtype=np.float64))
        return scale.astype(np.float32).reshape((depth,) + (1,) * (len(shape) - 1))
    block = _BLOCK.search(rel)
    if block is None:
        return 1.0
    index = int(block.group(2))
    if index >= depth:
        raise ValueError(f"optim.num_layers={depth} but parameter {path} belongs to block {index}")
    return float(cfg.layer_decay ** (depth - index))


def _check_config(cfg, total_steps: int, global_batch: int):
    """Raises ValueError naming the first out-of-range field."""
    checks = (
        ("base_lr", cfg.base_lr > 0, "> 0"),
        ("lr_batch_denom", not cfg.lr_batch_denom or cfg.lr_batch_denom > 0, ">= 0 or None"),
        ("b1", 0 <= cfg.b1 < 1, "in [0, 1)"),
        ("b2", 0 <= cfg.b2 < 1, "in [0, 1)"),
        ("eps", cfg.eps >= 0, ">= 0"),
        ("weight_decay", cfg.weight_decay >= 0, ">= 0"),
        ("warmup_steps", 0 <= cfg.warmup_steps < total_steps, f"in [0, total_steps={total_steps})"),
        ("layer_decay", 0 < cfg.layer_decay <= 1, "in (0, 1]"),
        ("num_layers", cfg.layer_decay == 1.0 or cfg.num_layers > 0, "> 0 when layer_decay < 1"),
        ("clip_grad", cfg.clip_grad >= 0, ">= 0"),
    )
    for field, ok, expected in checks:
        if not ok:
            raise ValueError(f"optim.{field}={cfg[field]!r}: expected {expected}")
    if global_batch <= 0:
        raise ValueError(f"global_batch={global_batch}: expected > 0")


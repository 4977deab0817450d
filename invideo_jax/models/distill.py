"""InternVideo2 stage 1: unmasked-token distillation of a student encoder from two frozen teachers.

One module, `Distiller`, holds the student and both teachers, so a single train state (and a single jitted step)
covers the whole stage:

  video (B, T, H, W, C), T = the video teacher's frames
    teacher_video  VisionTransformer (VideoMAE V2) on the whole clip; its last `video_layers` layers' tokens (the
                   last one after its final norm, when it has one), L2-normalised
    frames = video[:, ::frame_stride]  (official: 16 frames for VideoMAE V2-g, every 2nd one for the others)
    teacher_image  per frame (B*T', 1, H, W, C): `internvideo2` = an InternVideo2 trunk on one frame with its
                   attention pool (how we model InternViT-6B: the same block, learned pos-emb, attention pool to
                   768), or `vit` = any VisionTransformer with a pooled output (pool 'cls' or 'mean').
                   Targets: its last `image_layers` layers' tokens (per-frame CLS tokens averaged over time, patch
                   tokens concatenated over time), and its pooled feature averaged over frames; each L2-normalised
    mask           per frame, the `num_visible` = h*w - int(h*w*mask_ratio) patch tokens chosen from the teacher's
                   attention (`mask_source`, below): the top-k (`mask_sampling='topk'`, and always when
                   train=False) or a draw without replacement with probabilities proportional to the attention
                   (`'multinomial'`: Gumbel top-k, the distribution of the official `torch.multinomial(attn, k)`);
                   the CLS token is always kept. Pure jnp with static counts, inside the jitted step.
    student        InternVideo2 on the visible tokens only (`visible_idx`), returning its last layers and its
                   attention-pooled feature
    heads          `clip_decoder_{i}` (image layers): student layer i + `clip_pos_embed` (CLS + visible
                   positions) -> Linear (`image_decoder='linear'`, official) or MLP -> LayerNorm -> L2;
                   `mae_decoder_{i}` (video layers): student layer i's patch tokens + `mae_pos_embed` -> MLP
                   (Linear D->D, exact GELU, Linear; `video_decoder='mlp'`, official) -> LayerNorm -> L2;
                   `final_clip_decoder`: the student's pooled feature -> Linear -> LayerNorm -> L2.
                   Student layer depth-k+i is aligned with teacher layer depth_t-k+i (the last k of each).

`mask_source`: 'image_pool' (official: the image teacher's attention-pool query over each frame's patch tokens,
heads averaged; `teacher_image_kind='internvideo2'` only), 'video_mean' (for a VideoMAE teacher, which has no CLS
and no pool: the softmax over each temporal slot's patches of <token, clip-mean token> / sqrt(D) on its last-layer
tokens), or 'random' (no teacher attention: a uniform draw in training, the first tokens of each frame with
train=False).

Teachers run in inference mode under `jax.lax.stop_gradient` (no gradient, no activations kept for a backward
pass); the optimiser freezes them as well (`optim.frozen`), and their weights come from named `init_from` sources.
Output: `visible_idx` (B, T'*num_visible), `pred` and `target` dicts with the same keys and shapes
(`image_layers` (k, B, 1 + M, D_img), `image_pooled` (B, P), `video_layers` (k, B, M, D_vid); M = visible patch
tokens), and the student's `pooled` feature.

Parameter tree: `student` (InternVideo2), `clip_pos_embed` (1, 1 + N, D), `mae_pos_embed` (1, N, D) (both learned,
initialised with the 3-D sin-cos table of the student's pos_embed), `clip_decoder_{i}/{head,norm}` (mlp:
`head_0`, `head_2`), `final_clip_decoder/{head,norm}`, `mae_decoder_{i}/{head_0,head_2,norm}`, `teacher_image`,
`teacher_video`. Official names (internvideo.md 2.5): clip_decoder.{i}.head/norm, final_clip_decoder,
mae_decoder.{i}.head.{0,2}/norm, clip_pos_embed, mae_pos_embed.

`parts`: 'all' (the above); 'teachers' (only `teacher_image` and `teacher_video`: the teachers and the mask, returning
`visible_idx` and `target`, for pre-computing targets, invideo_jax/precompute_targets.py); 'student' (all but the
teachers: the student and its heads on stored `visible_idx` and `target`, passed in as `teacher`, so that a train
state holds no teacher weights). In training each clip's mask is drawn with its own key (`mask_keys`, or keys split
from the 'mask' rng), so a stored mask depends on its clip's key alone.

Head widths (`head_dims`), as the official student takes them: `clip_teacher_embed_dim` (clip_decoder outputs),
`clip_teacher_final_dim` (final_clip_decoder) and `mae_teacher_embed_dim` (mae_decoder); None takes the teacher's
(image teacher width, its pooled width, video teacher width); set and with a teacher, they must agree with it. A
'student' Distiller needs no teacher config when they are set: the heads of any official stage-1 file can be built,
and `teacher_shapes` gives the teachers' outputs its call takes.

Image-teacher layers (`clip_teacher_return_interval` r, official name and formula): depth - 1 - int(i * r) for
i < image_layers (r = 1: the last k; the distilled S/B/L recipe uses r = 3.34 on a 40-layer teacher: 23, 26, 29, 33,
36, 39); the student's are always its last k, as the official `clip_student_return_interval` 1 of every recipe.

Differences from the official code: the teachers are configurable ViTs of our own families (InternViT-6B is our
InternVideo2 trunk on one frame; convert/internvit.py reads the official teacher file into it). The distilled S/B/L
recipe's teacher (InternVideo2-1B stage 2, `teacher_internvideo2_stage2_1B`) sees the whole clip, not each frame:
that teacher kind is not modelled.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from invideo_jax import losses
from invideo_jax.models import layers
from invideo_jax.models.internvideo2 import AttentionPool, InternVideo2
from invideo_jax.models.vit import VisionTransformer

IMAGE_TEACHER_KINDS = ("internvideo2", "vit")
MASK_SOURCES = ("image_pool", "video_mean", "random")
MASK_SAMPLING = ("topk", "multinomial")
DECODER_KINDS = ("linear", "mlp")
PARTS = ("all", "teachers", "student")


# ----------------------------------------------------------------------------------------------------------
# Attention-guided masking (pure jnp, static counts)
# ----------------------------------------------------------------------------------------------------------


def num_visible(tokens_per_frame: int, ratio: float) -> int:
    """Visible patch tokens per frame: h*w - int(h*w*ratio), as the official (224/14, 0.8: 256 - 204 = 52)."""
    return tokens_per_frame - int(tokens_per_frame * ratio)


def teacher_return_layers(depth: int, count: int, interval: float = 1.0) -> tuple:
    """The teacher layers aligned, ascending: the official `return_index`, depth - 1 - int(i * interval), i < count."""
    return tuple(sorted(depth - 1 - int(i * interval) for i in range(count)))


def attention_visible_idx(attention, keep: int, key=None):
    """Visible patch indices (B, T*keep) of the (t, h, w) token grid from per-frame scores `attention` (B, T, h*w).

    key None: each frame's `keep` highest scores. With a key: a draw of `keep` tokens per frame without replacement,
    with probabilities proportional to the scores (Gumbel top-k on log scores). Ascending (frame-major).
    """
    b, t, n = attention.shape
    if not 0 < keep <= n:
        raise ValueError(f"cannot keep {keep} of {n} tokens per frame")
    scores = attention.astype(jnp.float32)
    if key is not None:
        scores = jnp.log(jnp.maximum(scores, jnp.finfo(jnp.float32).tiny)) + jax.random.gumbel(key, scores.shape)
    _, idx = jax.lax.top_k(scores, keep)
    idx = jnp.sort(idx, axis=-1) + (jnp.arange(t, dtype=idx.dtype) * n)[None, :, None]
    return idx.reshape(b, t * keep)


def pool_attention(pool_params, tokens, num_heads: int, eps: float = AttentionPool.norm_eps):
    """The attention weights (B, heads, N) of InternVideo2's `AttentionPool` (params `pool_params`, i.e. a
    `clip_projector` subtree) over `tokens` (B, N, D): its query, the LayerNormed mean token, against the
    LayerNormed keys, softmax(q.k / sqrt(head_dim)) per head. Computed in float32."""
    x = tokens.astype(jnp.float32)

    def norm(y, p):
        y = y - y.mean(-1, keepdims=True)
        y = y * jax.lax.rsqrt(jnp.mean(jnp.square(y), -1, keepdims=True) + eps)
        return y * p["scale"].astype(jnp.float32) + p["bias"].astype(jnp.float32)

    def project(y, p):
        return jnp.einsum("bnd,dhk->bnhk", y, p["kernel"].astype(jnp.float32)) + p["bias"].astype(jnp.float32)

    attn = pool_params["cross_attn"]
    q = project(norm(x.mean(axis=1, keepdims=True), pool_params["norm1_q"]), attn["q"])  # (B, 1, H, hd)
    k = project(norm(x, pool_params["norm1_k"]), attn["k"])  # (B, N, H, hd)
    if q.shape[2] != num_heads:
        raise ValueError(f"pool params have {q.shape[2]} heads, expected {num_heads}")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5
    return jax.nn.softmax(logits, axis=-1)[:, :, 0]


def mean_token_attention(tokens, grid):
    """Per temporal slot, softmax over its patches of <token, mean token> / sqrt(D); tokens (B, t*h*w, D) patch
    tokens in (t, h, w) order -> (B, t, h*w). The clip-mean token stands in for the pooled query of a teacher
    without a CLS token or a pool (VideoMAE: mean pooling)."""
    x = tokens.astype(jnp.float32)
    scores = jnp.einsum("bnd,bd->bn", x, x.mean(axis=1)) * x.shape[-1] ** -0.5
    t, h, w = grid
    return jax.nn.softmax(scores.reshape(x.shape[0], t, h * w), axis=-1)


# ----------------------------------------------------------------------------------------------------------
# Student heads
# ----------------------------------------------------------------------------------------------------------


class DecoderHead(nn.Module):
    """Linear (`head`) or MLP (`head_0` -> exact GELU -> `head_2`) -> LayerNorm (`norm`) -> L2-normalised."""

    out_dim: int
    kind: str = "linear"
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.kind == "mlp":
            x = layers.dense(x.shape[-1], ("embed", "mlp"), name="head_0", **kw)(x)
            x = layers.activation("gelu")(x)
            x = layers.dense(self.out_dim, ("mlp", None), name="head_2", **kw)(x)
        else:
            x = layers.dense(self.out_dim, ("embed", None), name="head", **kw)(x)
        return losses.l2_normalize(layers.Norm("layernorm", self.norm_eps, self.param_dtype, name="norm")(x))


# ----------------------------------------------------------------------------------------------------------
# The stage-1 model
# ----------------------------------------------------------------------------------------------------------


class Distiller(nn.Module):
    """Student InternVideo2 + heads, frozen image and video teachers, attention-guided masking (module docstring)."""

    student: dict  # InternVideo2 kwargs (tubelet 1); return_layers is set here
    teacher_image: Optional[dict] = None  # kwargs of the per-frame teacher (num_frames 1, tubelet 1); None/{}: none
    teacher_video: Optional[dict] = None  # VisionTransformer kwargs of the clip teacher; None/{}: none
    teacher_image_kind: str = "internvideo2"
    image_layers: int = 6  # last layers aligned with the image teacher (0: none)
    video_layers: int = 4  # last layers aligned with the video teacher (0: none)
    image_pooled: bool = True  # align the student's pooled feature with the image teacher's
    clip_teacher_return_interval: float = 1.0  # spacing of the image-teacher layers aligned (module docstring)
    frame_stride: int = 2  # the student and the image teacher see video[:, ::frame_stride]
    mask_source: str = "image_pool"
    mask_ratio: float = 0.8
    mask_sampling: str = "multinomial"
    image_decoder: str = "linear"
    video_decoder: str = "mlp"
    head_norm_eps: float = 1e-5
    clip_teacher_embed_dim: Optional[int] = None  # head widths (module docstring); None: the teacher's
    clip_teacher_final_dim: Optional[int] = None
    mae_teacher_embed_dim: Optional[int] = None
    parts: str = "all"  # what the module holds and runs (module docstring)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    # ------------------------------------------------------------------ configuration checks and shapes
    def _check(self, video_shape):
        s = self._student_module()
        teachers = self.parts != "student"  # a student-only model runs no teacher: its heads need widths only
        checks = (
            ("teacher_image_kind", self.teacher_image_kind in IMAGE_TEACHER_KINDS, f"one of {IMAGE_TEACHER_KINDS}"),
            ("parts", self.parts in PARTS, f"one of {PARTS}"),
            ("mask_source", self.mask_source in MASK_SOURCES, f"one of {MASK_SOURCES}"),
            ("mask_sampling", self.mask_sampling in MASK_SAMPLING, f"one of {MASK_SAMPLING}"),
            ("image_decoder", self.image_decoder in DECODER_KINDS, f"one of {DECODER_KINDS}"),
            ("video_decoder", self.video_decoder in DECODER_KINDS, f"one of {DECODER_KINDS}"),
            ("mask_ratio", 0 <= self.mask_ratio < 1, "in [0, 1)"),
            ("clip_teacher_return_interval", self.clip_teacher_return_interval >= 1, ">= 1 (distinct layers)"),
            ("frame_stride", self.frame_stride >= 1, ">= 1"),
            ("student.tubelet_size", s.tubelet_size == 1, "1 (the student's tokens are per frame)"),
            ("image_layers", 0 <= self.image_layers <= s.depth, f"in [0, student depth {s.depth}]"),
            ("video_layers", 0 <= self.video_layers <= s.depth, f"in [0, student depth {s.depth}]"),
            ("image_layers", not (teachers and self.image_layers and not self.teacher_image),
             "0 without teacher_image"),
            ("video_layers", not (teachers and self.video_layers and not self.teacher_video),
             "0 without teacher_video"),
            ("image_pooled", not (teachers and self.image_pooled and not self.teacher_image),
             "False without teacher_image"),
            ("mask_source", not teachers or self.mask_source != "image_pool" or (
                self.teacher_image and self.teacher_image_kind == "internvideo2"),
             "'image_pool' only with an internvideo2-kind teacher_image"),
            ("mask_source", not teachers or self.mask_source != "video_mean" or self.teacher_video,
             "'video_mean' needs teacher_video"),
        )
        for field, ok, expected in checks:
            if not ok:
                raise ValueError(f"model.kwargs.{field}={self._field(field)!r}: expected {expected}")
        self.head_dims()
        frames = video_shape[1]
        if frames % self.frame_stride or frames // self.frame_stride != s.num_frames:
            raise ValueError(f"model.kwargs.student.num_frames={s.num_frames}: expected the clip's {frames} "
                             f"frames / frame_stride={self.frame_stride}")
        t, v = self._teacher_image_module(), self._teacher_video_module()
        if t:
            if t.num_frames != 1 or t.tubelet_size != 1:
                raise ValueError("model.kwargs.teacher_image: a per-frame teacher needs num_frames=1, tubelet_size=1 "
                                 f"(has {t.num_frames}, {t.tubelet_size})")
            if t.grid[1:] != s.grid[1:] or t.image_size != s.image_size:
                raise ValueError(f"model.kwargs.teacher_image: its {t.image_size}/{t.patch_size} token grid "
                                 f"differs from the student's {s.image_size}/{s.patch_size}")
            if t.depth < self.image_layers or min(teacher_return_layers(
                    t.depth, self.image_layers, self.clip_teacher_return_interval), default=0) < 0:
                raise ValueError(f"model.kwargs.teacher_image.depth={t.depth} has too few layers for "
                                 f"image_layers={self.image_layers} every {self.clip_teacher_return_interval}")
            if self.teacher_image_kind == "vit" and self.image_pooled and t.pool == "none":
                raise ValueError("model.kwargs.teacher_image.pool: a vit teacher needs pool='cls' or 'mean' for "
                                 "image_pooled targets")
        if v:
            if v.num_frames != frames or v.grid != s.grid:
                raise ValueError(f"model.kwargs.teacher_video: {v.num_frames} frames with token grid {v.grid}; "
                                 f"the clip has {frames} frames and the student's grid is {s.grid}")
            if v.depth < self.video_layers:
                raise ValueError(f"model.kwargs.teacher_video.depth={v.depth} < video_layers={self.video_layers}")

    def _field(self, field):
        value = self
        for part in field.split("."):
            value = value[part] if isinstance(value, dict) or hasattr(value, "keys") else getattr(value, part)
        return value

    def _student_module(self) -> InternVideo2:
        """The student's settings (an unbound module: `.grid`, `.depth`, ... with the defaults it runs with)."""
        return layers.unbound_module(InternVideo2, self.student, "student")

    def _teacher_image_module(self) -> Optional[nn.Module]:
        """The image teacher's settings (an unbound InternVideo2 or VisionTransformer), or None without one."""
        if not self.teacher_image:
            return None
        kind = InternVideo2 if self.teacher_image_kind == "internvideo2" else VisionTransformer
        return layers.unbound_module(kind, self.teacher_image, "teacher_image")

    def _teacher_video_module(self) -> Optional[VisionTransformer]:
        """The video teacher's settings (an unbound VisionTransformer), or None without one."""
        if not self.teacher_video:
            return None
        return layers.unbound_module(VisionTransformer, self.teacher_video, "teacher_video")

    @property
    def num_visible(self) -> int:
        _, h, w = self._student_module().grid
        return num_visible(h * w, self.mask_ratio)

    def head_dims(self) -> dict:
        """{target: width} of the targets the heads predict: each head-width field, or the teacher's width."""
        image, video = self._teacher_image_module(), self._teacher_video_module()
        pooled = None  # a vit teacher's pooled feature is its width; an InternVideo2 one's, its attention pool's
        if image:
            pooled = image.clip_embed_dim if self.teacher_image_kind == "internvideo2" else image.width
        heads = (("image_layers", self.image_layers, "clip_teacher_embed_dim", image and image.width, "teacher_image"),
                 ("image_pooled", self.image_pooled, "clip_teacher_final_dim", pooled, "teacher_image"),
                 ("video_layers", self.video_layers, "mae_teacher_embed_dim", video and video.width, "teacher_video"))
        dims = {}
        for target, used, field, teacher_dim, teacher in heads:
            dim = getattr(self, field)
            if dim is not None and (dim < 1 or (teacher_dim and dim != teacher_dim)):
                raise ValueError(f"model.kwargs.{field}={dim!r}: expected a width >= 1"
                                 + (f" equal to {teacher}'s {teacher_dim}" if teacher_dim else ""))
            if used:
                if dim is None and not teacher_dim:
                    raise ValueError(f"model.kwargs.{field}: the {target} heads' width is needed without {teacher}")
                dims[target] = dim or teacher_dim
        return dims

    def teacher_shapes(self, batch: int) -> dict:
        """ShapeDtypeStructs of the teachers' {'visible_idx', 'target'} for `batch` clips: what parts='teachers'
        returns and parts='student' takes as `teacher`."""
        t = self._student_module().grid[0]
        visible = t * self.num_visible
        dims = self.head_dims()
        shapes = {"image_layers": (self.image_layers, batch, 1 + visible), "image_pooled": (batch,),
                  "video_layers": (self.video_layers, batch, visible)}
        target = {name: jax.ShapeDtypeStruct(shapes[name] + (dim,), jnp.float32) for name, dim in dims.items()}
        return {"visible_idx": jax.ShapeDtypeStruct((batch, visible), jnp.int32), "target": target}

    # ------------------------------------------------------------------ forward
    @nn.compact
    def __call__(self, video, *, train: bool = False, mask_keys=None, teacher=None):
        """video (B, T, H, W, C) -> {'visible_idx', 'target'} (parts='teachers') or {'visible_idx', 'pred', 'target',
        'pooled'}.

        mask_keys: (B,) PRNG keys, one per clip, for the masks drawn in training (pre-computing targets: a clip's
        mask then depends on its own key alone); None: split from the 'mask' rng.
        teacher: the teachers' {'visible_idx', 'target'} as parts='teachers' returns them (stored targets); given
        exactly when parts='student'."""
        self._check(video.shape)
        if (teacher is not None) != (self.parts == "student"):
            raise ValueError(f"Distiller(parts={self.parts!r}): the teachers' outputs are given exactly when "
                             "parts='student'")
        frames = video[:, ::self.frame_stride]
        if teacher is None:
            teacher = self._teach(video, frames, train, mask_keys)
        if self.parts == "teachers":
            return teacher
        for name, dim in self.head_dims().items():
            if teacher["target"][name].shape[-1] != dim:
                raise ValueError(f"the teachers' {name} targets are {teacher['target'][name].shape[-1]} wide; the "
                                 f"student's heads predict {dim} (Distiller.head_dims)")
        pred, pooled = self._learn(frames, teacher["visible_idx"], train)
        return {"visible_idx": teacher["visible_idx"], "pred": pred, "target": teacher["target"], "pooled": pooled}

    def _teach(self, video, frames, train, mask_keys) -> dict:
        """The visible tokens drawn from the teachers' attention and the teachers' L2-normalised targets on them."""
        targets, attention = {}, None
        if self.teacher_image:
            image, attention_image = self._image_teacher(frames)
            targets.update(image)
            if self.mask_source == "image_pool":
                attention = attention_image
        if self.teacher_video:
            teacher, k = self._teacher_video_module(), max(self.video_layers, 1)
            out = VisionTransformer(name="teacher_video", **dict(
                self.teacher_video, pool="none", num_classes=0,
                return_layers=tuple(range(teacher.depth - k, teacher.depth))))(video, train=False)
            hidden = out["layers"]
            if teacher.final_norm:  # the last target is after the final norm
                hidden = jnp.concatenate([hidden[:-1], out["tokens"][None]], axis=0)
            hidden = jax.lax.stop_gradient(hidden)
            if self.video_layers:
                targets["video_layers"] = hidden
            if self.mask_source == "video_mean":
                attention = mean_token_attention(hidden[-1], teacher.grid)
        visible = self._visible_idx(attention, video.shape[0], train, mask_keys)

        gather = lambda x: jnp.take_along_axis(x, visible[None, :, :, None], axis=2)  # (k, B, N, D) -> (k, B, M, D)
        target = {}
        if self.image_layers:
            x = targets["image_layers"]
            target["image_layers"] = losses.l2_normalize(jnp.concatenate([x[:, :, :1], gather(x[:, :, 1:])], axis=2))
        if self.image_pooled:
            target["image_pooled"] = losses.l2_normalize(targets["image_pooled"])
        if self.video_layers:
            target["video_layers"] = losses.l2_normalize(gather(targets["video_layers"]))
        return {"visible_idx": visible, "target": target}

    def _visible_idx(self, attention, batch: int, train: bool, mask_keys):
        """(B, t*num_visible) patch indices: drawn per clip in training ('multinomial', or uniform for 'random'),
        else each frame's top-attention (for 'random': first) tokens."""
        t, h, w = self._student_module().grid
        keep = self.num_visible
        if self.mask_source == "random" or attention is None:
            attention = jnp.ones((batch, t, h * w), jnp.float32)
            sample = train
        else:
            sample = train and self.mask_sampling == "multinomial"
        attention = jax.lax.stop_gradient(attention)
        if not sample:
            return attention_visible_idx(attention, keep)
        keys = jax.random.split(self.make_rng("mask"), batch) if mask_keys is None else mask_keys
        return jax.vmap(lambda scores, key: attention_visible_idx(scores[None], keep, key)[0])(attention, keys)

    def _learn(self, frames, visible, train):
        """The student on the visible tokens and its heads (`head_dims` wide): (pred, the student's pooled
        feature)."""
        b = frames.shape[0]
        dims = self.head_dims()
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        settings = self._student_module()
        grid, depth, width = settings.grid, settings.depth, settings.width
        n_layers = max(self.image_layers, self.video_layers, 1)
        layers_returned = tuple(range(depth - n_layers, depth))
        out = InternVideo2(name="student", **dict(self.student, return_layers=layers_returned))(frames, visible,
                                                                                                  train=train)
        hidden = out["layers"]  # (n_layers, B, 1 + M, D)
        pred = {}
        if self.image_layers:
            pos = self._pos_embed("clip_pos_embed", grid, width, cls=True)
            pos = jnp.concatenate([jnp.broadcast_to(pos[:, :1], (b, 1, width)), pos[0, 1:][visible]], axis=1)
            pred["image_layers"] = jnp.stack([
                DecoderHead(dims["image_layers"], self.image_decoder, self.head_norm_eps, name=f"clip_decoder_{i}",
                            **kw)(hidden[n_layers - self.image_layers + i] + pos.astype(hidden.dtype))
                for i in range(self.image_layers)])
        if self.image_pooled:
            pred["image_pooled"] = DecoderHead(dims["image_pooled"], "linear", self.head_norm_eps,
                                               name="final_clip_decoder", **kw)(out["pooled"])
        if self.video_layers:
            pos = self._pos_embed("mae_pos_embed", grid, width, cls=False)
            pos = pos[0][visible]  # (B, M, D)
            pred["video_layers"] = jnp.stack([
                DecoderHead(dims["video_layers"], self.video_decoder, self.head_norm_eps, name=f"mae_decoder_{i}",
                            **kw)(hidden[n_layers - self.video_layers + i][:, 1:] + pos.astype(hidden.dtype))
                for i in range(self.video_layers)])
        return pred, out["pooled"]

    def _image_teacher(self, frames):
        """Per-frame teacher: (targets {'image_layers' (k, B, 1 + t*h*w, D), 'image_pooled' (B, P)}, pooling
        attention over each frame's patches (B, t, h*w) or None)."""
        b, t = frames.shape[:2]
        images = frames.reshape((b * t, 1) + frames.shape[2:])
        settings = self._teacher_image_module()
        k = max(self.image_layers, 1)
        cfg = dict(self.teacher_image, return_layers=teacher_return_layers(settings.depth, k,
                                                                           self.clip_teacher_return_interval))
        if self.teacher_image_kind == "internvideo2":
            teacher = InternVideo2(name="teacher_image", **dict(cfg, num_classes=0))
            out = teacher(images, train=False)
            hidden = out["layers"]  # no final norm in this family
        else:
            teacher = VisionTransformer(name="teacher_image", **dict(cfg, num_classes=0))
            out = teacher(images, train=False)
            hidden = out["layers"]
            if settings.final_norm:
                hidden = jnp.concatenate([hidden[:-1], out["tokens"][None]], axis=0)
        hidden = jax.lax.stop_gradient(hidden)  # (k, B*t, [1 +] h*w, D)
        targets = {}
        if self.image_layers:
            hidden = hidden.reshape((k, b, t) + hidden.shape[2:])
            if self.teacher_image_kind == "internvideo2" or settings.cls_token:
                cls, patches = hidden[:, :, :, :1].mean(axis=2), hidden[:, :, :, 1:]
            else:  # a teacher without a CLS token: the mean of its frames' patch tokens stands in
                cls, patches = hidden.mean(axis=(2, 3))[:, :, None], hidden
            targets["image_layers"] = jnp.concatenate(
                [cls, patches.reshape(k, b, -1, patches.shape[-1])], axis=2)
        if self.image_pooled:
            pooled = jax.lax.stop_gradient(out["pooled"])
            targets["image_pooled"] = pooled.astype(jnp.float32).reshape(b, t, -1).mean(axis=1)  # normalised later
        attention = None
        if self.teacher_image_kind == "internvideo2" and self.mask_source == "image_pool":
            pool = nn.unbox(self.variables["params"]["teacher_image"]["clip_projector"])
            weights = pool_attention(jax.lax.stop_gradient(pool), out["tokens"], settings.attn_pool_heads,
                                     settings.pool_norm_eps)
            attention = jax.lax.stop_gradient(weights.mean(axis=1)[:, 1:].reshape(b, t, -1))
        return targets, attention

    def _pos_embed(self, name, grid, width, cls: bool):
        table = layers.sincos_3d(*grid, width)
        if cls:
            table = np.concatenate([np.zeros((1, width), np.float32), table])
        return self.param(name, layers.logical(lambda *_: jnp.asarray(table)[None], (None, None, "embed")), None)

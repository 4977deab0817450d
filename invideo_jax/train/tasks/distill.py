"""InternVideo2 stage 1: unmasked-token distillation (model: `invideo_jax.models.distill.Distiller`).

Loss: for every aligned pair of vectors, 2 - 2 cos(student, teacher) (= |s - t|^2 of the unit vectors), averaged over
the kept tokens (CLS included) and layers of each target; total = sum over targets of `config.loss.<target>` times
that target's mean. Targets: `image_layers` (the image teacher's last layers), `image_pooled` (its pooled feature)
and `video_layers` (the video teacher's last layers). Metrics: `<target>_loss` and `<target>_cos` (mean cosine).

The teachers are frozen by `config.optim.frozen` (they also run under stop_gradient) and restored by named
`init_from` sources (`init_from.teacher_image`, `init_from.teacher_video`); a single unnamed source without a
mapping restores the student of an earlier distillation stage (`student` <- `params/student`).

Stored targets (`config.teacher_targets`: a directory written by `python -m invideo_jax.precompute_targets`, see
invideo_jax/data/target_cache.py; '' runs the teachers in every step): the batches come from the cache, each clip
rebuilt from its stored seed with the teachers' targets and visible tokens stored for it, and the model is the
student-only `Distiller(parts='student')`: no teacher runs, the train state and its checkpoints hold no teacher
weights, and nothing restores a teacher (configs/internvideo2_distill.py's `targets=DIR` sets the field, freezes
nothing and drops the teachers' `init_from` sources).
"""
import jax
import jax.numpy as jnp

from invideo_jax.data import pipeline, target_cache
from invideo_jax.evaluate import clip_features
from invideo_jax.models.distill import Distiller
from invideo_jax.models.internvideo2 import InternVideo2
from invideo_jax.train import init_from

TARGETS = ("image_layers", "image_pooled", "video_layers")
LAYER_TARGETS = ("image_layers", "video_layers")
TEACHERS = ("teacher_image", "teacher_video")  # the teachers' params subtrees
STUDENT_FIELDS = ("student", "image_decoder", "video_decoder", "head_norm_eps", "clip_teacher_embed_dim",
                  "clip_teacher_final_dim", "mae_teacher_embed_dim")  # Distiller fields no target depends on


def cosine_distance(pred, target, eps: float = 1e-6):
    """(2 - 2 cos, cos) per vector (last axis), in float32."""
    p, t = pred.astype(jnp.float32), target.astype(jnp.float32)
    cos = jnp.sum(p * t, axis=-1) / (jnp.maximum(jnp.linalg.norm(p, axis=-1), eps)
                                     * jnp.maximum(jnp.linalg.norm(t, axis=-1), eps))
    return 2.0 - 2.0 * cos, cos


def distill_objective(pred: dict, target: dict, weights) -> tuple:
    """(total loss, metrics): each target's mean 2 - 2 cos weighted by `weights[target]`, summed."""
    total, metrics = jnp.zeros((), jnp.float32), {}
    for name in TARGETS:
        if name not in pred:
            continue
        distance, cos = cosine_distance(pred[name], target[name])
        loss = distance.mean()
        metrics[f"{name}_loss"], metrics[f"{name}_cos"] = loss, cos.mean()
        total = total + weights[name] * loss
    return total, dict(metrics, loss=total)


def swap_layer_axis(target: dict) -> dict:
    """Layer targets (k, B, ...) <-> (B, k, ...): the model's layout <-> one row per clip (stored, batched)."""
    return {name: jnp.swapaxes(x, 0, 1) if name in LAYER_TARGETS else x for name, x in target.items()}


def stored_teacher(batch: dict) -> dict:
    """The teachers' {'visible_idx', 'target'} stored in a batch from a targets cache, in the model's layout."""
    prefix = target_cache.BATCH_PREFIX
    fields = {key[len(prefix):]: value for key, value in batch.items() if key.startswith(prefix)}
    visible = fields.pop("visible_idx")
    return {"visible_idx": visible, "target": swap_layer_axis(fields)}


class Task:
    def __init__(self, config):
        self.config = config
        for name in TARGETS:
            weight = config.loss.get(name, None)
            if weight is None or weight < 0:
                raise ValueError(f"config.loss.{name}={weight!r}: expected a weight >= 0")
        self.targets_dir = config.get("teacher_targets", "")
        self.model = Distiller(**config.model.kwargs, parts="student" if self.targets_dir else "all")
        self.teachers = Distiller(**config.model.kwargs, parts="teachers")  # what pre-computing targets runs
        self.init_from_mapping = {"student": "params/student"}
        if self.targets_dir:
            _check_no_teacher_sources(config)

    def _rngs(self, rng):
        mask_rng, dropout_rng = jax.random.split(rng)
        return {"mask": mask_rng, "dropout": dropout_rng}

    def targets_fingerprint(self) -> dict:
        """What the teachers' targets depend on (a targets cache must have been computed for the same)."""
        teachers = {k: v for k, v in self.config.model.kwargs.to_dict().items() if k not in STUDENT_FIELDS}
        return target_cache.make_fingerprint(self.config.data, teachers, self.config.seed)

    def train_iterator(self, *, seed: int, batch_size: int, process_index=None, process_count=None):
        """The data pipeline's training batches, or with `config.teacher_targets` the cache's (clips replayed from
        their stored seeds, with their stored targets)."""
        kwargs = dict(seed=seed, batch_size=batch_size, process_index=process_index, process_count=process_count)
        if not self.targets_dir:
            return pipeline.train_iterator(self.config.data, **kwargs)
        return target_cache.train_iterator(self.targets_dir, self.config.data, self.targets_fingerprint(), **kwargs)

    def stored_batch_shapes(self, batch_size: int) -> dict:
        """ShapeDtypeStructs of the stored-target fields a training batch carries with `config.teacher_targets` ({}
        without): the teachers' visible tokens and targets as `precompute_targets` stores them (for AOT compiles)."""
        if not self.targets_dir:
            return {}
        video = pipeline.batch_spec(self.config.data, batch_size)["video"]
        dtype = jnp.dtype(self.config.teacher_targets_dtype)

        def stored(key, video):
            params = self.teachers.init(key, video)["params"]
            out = self.teachers.apply({"params": params}, video, train=True, rngs=self._rngs(key))
            target = {name: x.astype(dtype) for name, x in swap_layer_axis(out["target"]).items()}
            return {target_cache.BATCH_PREFIX + k: v for k, v in dict(target, visible_idx=out["visible_idx"]).items()}

        return jax.eval_shape(stored, jax.eval_shape(lambda: jax.random.PRNGKey(0)), video)

    def init_variables(self, rng, batch):
        rngs = dict(self._rngs(rng), params=rng)
        if not self.targets_dir:
            return self.model.init(rngs, batch["video"])
        return self.model.init(rngs, batch["video"], teacher=self._zero_teacher_outputs(batch["video"]))

    def _zero_teacher_outputs(self, video):
        """Zeros shaped like the teachers' outputs for `video`, what the student-only model's init takes."""
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self.model.teacher_shapes(video.shape[0]))

    def _apply(self, params, batch, **kwargs):
        teacher = stored_teacher(batch) if self.targets_dir else None
        return self.model.apply({"params": params}, batch["video"], teacher=teacher, **kwargs)

    def loss(self, params, model_state, batch, rng):
        out = self._apply(params, batch, train=True, rngs=self._rngs(rng))
        loss, metrics = distill_objective(out["pred"], out["target"], self.config.loss)
        return loss, (metrics, model_state)

    def predict(self, params, model_state, batch):
        """Per clip, each target's mean 2 - 2 cos with the deterministic (top-k) mask, or the stored one."""
        out = self._apply(params, batch)
        result = {}
        for name, pred in out["pred"].items():
            distance, _ = cosine_distance(pred, out["target"][name])
            batch_axis = 0 if name == "image_pooled" else 1
            result[f"{name}_loss"] = distance.mean(axis=tuple(a for a in range(distance.ndim) if a != batch_axis))
        return result

    # ---------------------------------------------------------------- inference (invideo_jax/inference.py)
    def encode_video(self, params, model_state, video) -> dict:
        """The `student` on every `frame_stride`-th frame of the clip (evaluate/clip_features.py's internvideo2)."""
        del model_state
        return clip_features.internvideo2(InternVideo2(**self.model.student), {"params": params["student"]},
                                          video[:, ::self.model.frame_stride])


def _check_no_teacher_sources(config) -> None:
    """With stored targets the model has no teachers: an init_from source restoring one is a mistake."""
    for name, source in init_from.init_sources(config.init_from).items():
        teachers = [t for t in dict(source.get("mapping") or {}) if t.split("/")[0] in TEACHERS]
        if source["checkpoint"] and teachers:
            raise ValueError(f"config.init_from{'.' + name if name else ''}.checkpoint is set, but with "
                             f"config.teacher_targets the model has no teachers ({', '.join(teachers)}): their "
                             "targets are stored; leave it empty")

"""InternVideo2 stage 1: unmasked-token distillation (model: `invideo_jax.models.distill.Distiller`).

Loss: for every aligned pair of vectors, 2 - 2 cos(student, teacher) (= |s - t|^2 of the unit vectors), averaged over
the kept tokens (CLS included) and layers of each target; total = sum over targets of `config.loss.<target>` times
that target's mean. Targets: `image_layers` (the image teacher's last layers), `image_pooled` (its pooled feature)
and `video_layers` (the video teacher's last layers). Metrics: `<target>_loss` and `<target>_cos` (mean cosine).

The teachers are frozen by `config.optim.frozen` (they also run under stop_gradient) and restored by named
`init_from` sources (`init_from.teacher_image`, `init_from.teacher_video`); a single unnamed source without a
mapping restores the student of an earlier distillation stage (`student` <- `params/student`).
"""
import jax
import jax.numpy as jnp

from invideo_jax.models.distill import Distiller

TARGETS = ("image_layers", "image_pooled", "video_layers")


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


class Task:
    def __init__(self, config):
        self.config = config
        for name in TARGETS:
            weight = config.loss.get(name, None)
            if weight is None or weight < 0:
                raise ValueError(f"config.loss.{name}={weight!r}: expected a weight >= 0")
        self.model = Distiller(**config.model.kwargs)
        self.init_from_mapping = {"student": "params/student"}

    def _rngs(self, rng):
        mask_rng, dropout_rng = jax.random.split(rng)
        return {"mask": mask_rng, "dropout": dropout_rng}

    def init_variables(self, rng, batch):
        return self.model.init(dict(self._rngs(rng), params=rng), batch["video"])

    def loss(self, params, model_state, batch, rng):
        out = self.model.apply({"params": params}, batch["video"], train=True, rngs=self._rngs(rng))
        loss, metrics = distill_objective(out["pred"], out["target"], self.config.loss)
        return loss, (metrics, model_state)

    def predict(self, params, model_state, batch):
        """Per clip, each target's mean 2 - 2 cos with the deterministic (top-k) mask."""
        out = self.model.apply({"params": params}, batch["video"])
        result = {}
        for name, pred in out["pred"].items():
            distance, _ = cosine_distance(pred, out["target"][name])
            batch_axis = 0 if name == "image_pooled" else 1
            result[f"{name}_loss"] = distance.mean(axis=tuple(a for a in range(distance.ndim) if a != batch_axis))
        return result

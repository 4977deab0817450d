"""Supervised video classification: soft-target cross-entropy (label smoothing / mixup / cutmix from the data)."""
import jax.numpy as jnp

from invideo_jax import losses
from invideo_jax.models.vit import VisionTransformer

# Stage-to-stage default: a classifier restores the encoder of a VideoMAE pre-training checkpoint.
ENCODER_FROM_PRETRAIN = {"patch_embed": "params/encoder/patch_embed", "transformer": "params/encoder/transformer"}


class Task:
    def __init__(self, config):
        self.config = config
        self.model = VisionTransformer(**config.model.kwargs)
        if not self.model.num_classes:
            raise ValueError("config.model.kwargs.num_classes must be > 0 for the classification task")
        self.init_from_mapping = ENCODER_FROM_PRETRAIN

    def init_variables(self, rng, batch):
        return self.model.init({"params": rng, "dropout": rng}, batch["video"])

    def loss(self, params, model_state, batch, rng):
        out = self.model.apply({"params": params}, batch["video"], train=True, rngs={"dropout": rng})
        loss = losses.softmax_cross_entropy(out["logits"], batch["targets"])
        accuracy = jnp.mean(jnp.argmax(out["logits"], -1) == jnp.argmax(batch["targets"], -1))
        return loss, ({"loss": loss, "accuracy": accuracy}, model_state)

    def predict(self, params, model_state, batch):
        return {"logits": self.model.apply({"params": params}, batch["video"])["logits"]}

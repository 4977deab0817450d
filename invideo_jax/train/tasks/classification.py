"""Supervised video classification: soft-target cross-entropy (label smoothing / mixup / cutmix from the data).

`config.model.name` picks the model: 'vit' (VisionTransformer), 'uniformerv2' (UniFormerV2, whose BatchNorm
statistics are the task's model state), 'fusion' (FusedVideoModel: the two encoders with cross-model attention) or
'internvideo2' (InternVideo2 with `fc_norm` + `head`). Default `init_from` mappings: a ViT restores the encoder of a
VideoMAE pre-training checkpoint; UniFormerV2 restores its whole `backbone` from the visual tower of a multimodal
checkpoint (`params/visual/backbone`); InternVideo2 its trunk and attention pool from a stage-2 alignment checkpoint
(`params/vision_encoder`; from a stage-1 checkpoint map `params/student/...` instead).

`config.label_map` (source and target class-name files, evaluate/label_map.py) evaluates on the target's classes
with the head's rows of those classes: a Kinetics-710 model on Kinetics-400/600/700 validation lists.
"""
import jax.numpy as jnp

from invideo_jax import losses
from invideo_jax.evaluate import clip_features, label_map, loop, multiview
from invideo_jax.models.fusion import FusedVideoModel
from invideo_jax.models.internvideo2 import InternVideo2
from invideo_jax.models.uniformerv2 import UniFormerV2
from invideo_jax.models.vit import VisionTransformer
from invideo_jax.train.tasks import apply_model, model_variables

MODELS = {
    "vit": (VisionTransformer,
            {"patch_embed": "params/encoder/patch_embed", "transformer": "params/encoder/transformer"}),
    "uniformerv2": (UniFormerV2, {"backbone": "params/visual/backbone"}),
    "fusion": (FusedVideoModel, {}),
    "internvideo2": (InternVideo2, {"encoder": "params/vision_encoder/encoder",
                                    "clip_projector": "params/vision_encoder/clip_projector"}),
}
FEATURES = {"vit": clip_features.vit, "uniformerv2": clip_features.uniformerv2,
            "internvideo2": clip_features.internvideo2}


class Task:
    def __init__(self, config):
        self.config = config
        if config.model.name not in MODELS:
            raise ValueError(f"config.model.name={config.model.name!r} is unknown; expected one of {sorted(MODELS)}")
        model_cls, self.init_from_mapping = MODELS[config.model.name]
        self.model = model_cls(**config.model.kwargs)
        if not self.model.num_classes:
            raise ValueError("config.model.kwargs.num_classes must be > 0 for the classification task")
        self.eval_rows = label_map.from_config(config, self.model.num_classes)

    def init_variables(self, rng, batch):
        return self.model.init({"params": rng, "dropout": rng}, batch["video"])

    def loss(self, params, model_state, batch, rng):
        out, model_state = apply_model(self.model, params, model_state, batch["video"], rng=rng)
        loss = losses.softmax_cross_entropy(out["logits"], batch["targets"])
        accuracy = jnp.mean(jnp.argmax(out["logits"], -1) == jnp.argmax(batch["targets"], -1))
        return loss, ({"loss": loss, "accuracy": accuracy}, model_state)

    def predict(self, params, model_state, batch):
        logits = self.model.apply(model_variables(params, model_state), batch["video"])["logits"]
        return {"logits": logits if self.eval_rows is None else logits[:, self.eval_rows]}

    def evaluate(self, state, predict, mesh) -> dict:
        """Multi-view top-1/top-5 accuracy over the eval split (softmax averaged over each video's views)."""
        classes = self.config.data.num_classes if self.eval_rows is None else len(self.eval_rows)
        accumulator = multiview.MultiViewAccumulator(classes)
        for out in loop.predictions(state, predict, self.config, mesh):
            accumulator.add(out["logits"], out["video_index"], out["mask"], out["label"])
        return accumulator.result()

    # ---------------------------------------------------------------- inference (invideo_jax/inference.py)
    def encode_video(self, params, model_state, video) -> dict:
        """{'features': the pre-logits (B, D), 'tokens': the last layer (B, t, n, D)} (evaluate/clip_features.py)."""
        name = self.config.model.name
        if name not in FEATURES:
            raise ValueError(f"config.model.name={name!r}: inference gives the features of {sorted(FEATURES)}")
        return FEATURES[name](self.model, model_variables(params, model_state), video)

"""VideoMAE (V1: tube masking) and VideoMAE V2 (dual masking) pre-training with normalised-pixel targets."""
import jax
import jax.numpy as jnp

from invideo_jax import losses, masking
from invideo_jax.evaluate import clip_features
from invideo_jax.models import layers
from invideo_jax.models.videomae import VideoMAE
from invideo_jax.models.vit import VisionTransformer

MASK_KINDS = ("tube", "random")
DECODER_MASK_KINDS = ("none", "running_cell")


class Task:
    def __init__(self, config):
        self.config = config
        mask = config.mask
        if mask.kind not in MASK_KINDS:
            raise ValueError(f"config.mask.kind={mask.kind!r}; expected one of {MASK_KINDS}")
        if mask.decoder_kind not in DECODER_MASK_KINDS:
            raise ValueError(f"config.mask.decoder_kind={mask.decoder_kind!r}; expected one of {DECODER_MASK_KINDS}")
        self.model = VideoMAE(**config.model.kwargs)
        encoder = layers.unbound_module(VisionTransformer, self.model.encoder, "encoder")
        self.tubelet, self.patch = encoder.tubelet_size, encoder.patch_size
        self.grid, self.num_tokens = encoder.grid, encoder.num_patches
        self.init_from_mapping = {}

    def indices(self, rng, batch_size):
        """(visible_idx, target_idx, loss weights or None) with static counts."""
        enc_key, dec_key = jax.random.split(rng)
        cfg = self.config.mask
        if cfg.kind == "tube":
            mask = masking.tube_mask(enc_key, batch_size, self.grid, cfg.ratio)
            num_masked = masking.tube_num_masked(self.grid, cfg.ratio)
        else:
            mask = masking.random_mask(enc_key, batch_size, self.num_tokens, cfg.ratio)
            num_masked = int(cfg.ratio * self.num_tokens)
        visible, masked = masking.split_indices(mask, num_masked)
        if cfg.decoder_kind == "none":
            return visible, masked, None
        decoder_mask = masking.running_cell_mask(dec_key, batch_size, self.grid, cfg.decoder_ratio)
        kept, _ = masking.split_indices(decoder_mask,
                                        masking.running_cell_num_masked(self.grid, cfg.decoder_ratio))
        return visible, kept, jnp.take_along_axis(mask, kept, axis=1)

    def init_variables(self, rng, batch):
        visible, target, _ = self.indices(rng, batch["video"].shape[0])
        return self.model.init({"params": rng, "dropout": rng}, batch["video"], visible, target)

    def loss(self, params, model_state, batch, rng):
        mask_rng, dropout_rng = jax.random.split(rng)
        video = batch["video"]
        visible, target, weights = self.indices(mask_rng, video.shape[0])
        pred = self.model.apply({"params": params}, video, visible, target, train=True,
                                rngs={"dropout": dropout_rng})
        loss = losses.reconstruction_loss(pred, self.targets(video), target, weights)
        return loss, ({"loss": loss}, model_state)

    def targets(self, video):
        """The pixel targets of every token of a batch's video, de-normalised with the data config's mean/std."""
        return losses.pixel_targets(video, tubelet=self.tubelet, patch=self.patch,
                                    normalization=self.config.data.normalize,
                                    normalize=self.config.mask.normalize_target)

    def predict(self, params, model_state, batch):
        loss, _ = self.loss(params, model_state, batch, jax.random.PRNGKey(0))
        return {"loss": jnp.broadcast_to(loss, batch["video"].shape[:1])}

    # ---------------------------------------------------------------- inference (invideo_jax/inference.py)
    def encode_video(self, params, model_state, video) -> dict:
        """The encoder alone on every token (with its final norm): features the token mean, tokens (B, t, h*w, D)."""
        del model_state
        encoder = VisionTransformer(**dict(self.model.encoder, pool="none", num_classes=0, final_norm=True))
        return clip_features.vit(encoder, {"params": params["encoder"]}, video)

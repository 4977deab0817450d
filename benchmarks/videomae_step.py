"""VideoMAE pre-training, ViT fine-tuning and inference steps: our JAX step beside transformers' PyTorch VideoMAE.

    python -m benchmarks.videomae_step --model=S --task=pretrain --frames=16 --image_size=224 --batch=2

Both implementations get the same configuration and weights (ours converted from the PyTorch model, which fails
on any shape mismatch), the same batch and the same tube masks (ratio --mask_ratio). JAX: the trainer's jitted
step with the state donated (forward, backward, AdamW update), layers scanned (`--no-scan`: unrolled), no remat.
PyTorch: VideoMAEForPreTraining / VideoMAEForVideoClassification with SDPA attention, forward + backward + fused
torch.optim.AdamW step, as many threads as cores. Inference: the classifier's forward pass without gradients.
`--dtype=bfloat16` computes in bfloat16 with float32 parameters (PyTorch: autocast). Prints the measured matmul
peak, then a Markdown row: median step time, clips/s, MFU and the JAX/PyTorch clips/s ratio.
"""
import argparse
import functools
import itertools
import os
import sys

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # PyTorch shares the accelerator

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from configs import common as sizes
from invideo_jax import masking
from invideo_jax.convert import videomae
from invideo_jax.models import attention
from invideo_jax.train import optim, trainer
from invideo_jax.train.state import TrainState
from invideo_jax.train.tasks import get_task

TINY = dict(width=128, depth=4, num_heads=4, mlp_dim=512)
TINY_DECODER = dict(decoder_width=64, decoder_depth=2, decoder_heads=2, decoder_mlp_dim=256)
IMPLS = {"both": ("JAX", "PyTorch"), "jax": ("JAX",), "torch": ("PyTorch",)}
COLUMNS = ("model", "task", "clip", "batch", "dtype", "GFLOP/step", "JAX ms/step", "JAX clips/s", "JAX MFU",
           "PyTorch ms/step", "PyTorch clips/s", "PyTorch MFU", "JAX/PyTorch clips/s", "peak GFLOP/s",
           "load avg", "machine", "versions", "command")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.videomae_step", description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("tiny", "S", "B", "L"), default="tiny",
                        help="tiny: width 128, depth 4, 4 heads; S/B/L: ViT-S/B/L with their VideoMAE decoders")
    parser.add_argument("--task", choices=("pretrain", "finetune", "inference"), default="pretrain")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--mask_ratio", type=float, default=0.9, help="tube-mask ratio of pre-training")
    parser.add_argument("--classes", type=int, default=400)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--attn_impl", choices=sorted(attention.KERNELS), default=None,
                        help="our attention kernel (default: the backend's, `attention.BACKEND_DEFAULTS`)")
    parser.add_argument("--baseline_attn", choices=sorted(attention.KERNELS), default=None,
                        help="also time our step with this attention kernel, interleaved with the others "
                             "(printed beside the row's step times, not in the row)")
    parser.add_argument("--scan", action=argparse.BooleanOptionalAction, default=True,
                        help="scan over layers (--no-scan: unrolled, faster for small models on CPU)")
    parser.add_argument("--impl", choices=sorted(IMPLS), default="both")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (JAX compiles in the first)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps; the median is reported")
    parser.add_argument("--peak_size", type=int, default=0, help="matmul size of the peak (0: 2048 CPU, 8192 else)")
    return parser.parse_args(argv)


def encoder_kwargs(args) -> dict:
    """VisionTransformer kwargs of the encoder: scanned (or unrolled) layers, no remat, compute dtype from the flags."""
    size = TINY if args.model == "tiny" else {}
    variant = "B/16" if args.model == "tiny" else f"{args.model}/16"
    return sizes.vit_encoder(variant, **size, patch_size=args.patch, num_frames=args.frames,
                             image_size=args.image_size, scan=args.scan, remat="none", dtype=args.dtype,
                             attn_impl=args.attn_impl)


def decoder_kwargs(args) -> dict:
    return TINY_DECODER if args.model == "tiny" else sizes.DECODER_SIZES[args.model]


def make_task(args):
    """Our training task (VideoMAE pre-training or classification) with the trainer's default optimiser."""
    encoder = encoder_kwargs(args)
    if args.task == "pretrain":
        config = sizes.train_config("videomae_pretrain", dict(encoder=encoder, **decoder_kwargs(args)))
        config.mask = sizes.mask_config(ratio=args.mask_ratio)
    else:
        config = sizes.train_config("classification", dict(encoder, pool="mean", final_norm=False,
                                                           num_classes=args.classes))
    config.batch_size = args.batch
    return get_task(config)


def torch_model(args):
    """transformers' VideoMAE with the same configuration, SDPA attention and freshly initialised weights."""
    import torch
    from transformers import VideoMAEConfig, VideoMAEForPreTraining, VideoMAEForVideoClassification

    enc, dec = encoder_kwargs(args), decoder_kwargs(args)
    config = VideoMAEConfig(
        image_size=args.image_size, patch_size=args.patch, num_frames=args.frames, tubelet_size=enc["tubelet_size"],
        hidden_size=enc["width"], num_hidden_layers=enc["depth"], num_attention_heads=enc["num_heads"],
        intermediate_size=enc["mlp_dim"], layer_norm_eps=enc["norm_eps"], qkv_bias=True,
        use_mean_pooling=args.task != "pretrain", decoder_hidden_size=dec["decoder_width"],
        decoder_num_hidden_layers=dec["decoder_depth"], decoder_num_attention_heads=dec["decoder_heads"],
        decoder_intermediate_size=dec["decoder_mlp_dim"], norm_pix_loss=True, num_labels=args.classes,
        attn_implementation="sdpa")
    torch.manual_seed(0)
    cls = VideoMAEForPreTraining if args.task == "pretrain" else VideoMAEForVideoClassification
    return cls(config)


def jax_step(args, task, params, video, labels):
    """One synchronised call of our jitted step (train: state donated, AdamW included; inference: predict).

    Pre-training draws its tube masks inside the step, from the state's key.
    """
    batch = {"video": jnp.asarray(video)}
    if args.task == "inference":
        predict = jax.jit(task.predict)
        return lambda: predict(params, {}, batch)["logits"].block_until_ready()
    if args.task == "finetune":
        batch["targets"] = jax.nn.one_hot(labels, args.classes)
    tx, schedule = optim.make_optimizer(task.config.optim, params, total_steps=task.config.total_steps,
                                        global_batch=args.batch)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), batch_stats={},
                       rng=jax.random.PRNGKey(0))
    train_step = jax.jit(trainer.make_train_step(task, tx, schedule), donate_argnums=(0,))

    def step():
        nonlocal state
        state, metrics = train_step(state, batch)
        jax.block_until_ready((state, metrics))

    return step


def torch_step(args, model, video, labels, masks):
    """One synchronised PyTorch step on the same batch (train: forward, backward, fused AdamW); masks cycle."""
    import torch

    torch.set_num_threads(os.cpu_count())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    autocast = functools.partial(torch.autocast, device, torch.bfloat16, enabled=args.dtype == "bfloat16")
    model.to(device).train(args.task != "inference")
    video = torch.from_numpy(video).permute(0, 1, 4, 2, 3).contiguous().to(device)  # (B, T, C, H, W)
    if args.task == "inference":
        def step():
            with torch.inference_mode(), autocast():
                model(video)
            sync()
        return step
    labels = torch.from_numpy(labels).to(device)
    masks = itertools.cycle([torch.from_numpy(m).to(device) for m in masks])
    cfg = optim.default_optim_config()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.base_lr, betas=(cfg.b1, cfg.b2), eps=cfg.eps,
                            weight_decay=cfg.weight_decay, fused=True)

    def step():
        with autocast():
            if args.task == "pretrain":
                loss = model(video, bool_masked_pos=next(masks)).loss
            else:
                loss = model(video, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()

    return step


def run(args, argv) -> str:
    """Times the selected implementations; prints the peaks and returns the Markdown row."""
    load_start = common.load_average()
    peaks = common.matmul_peak(args.peak_size or (2048 if jax.default_backend() == "cpu" else 8192), args.dtype)
    print("matmul peak GFLOP/s: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in peaks.items()))
    peak = max(peaks.values())

    task = make_task(args)
    encoder = encoder_kwargs(args)
    grid = (args.frames // encoder["tubelet_size"], args.image_size // args.patch, args.image_size // args.patch)
    num_masked = masking.tube_num_masked(grid, args.mask_ratio)
    flops = args.batch * common.video_vit_flops(encoder, args.task, decoder_kwargs(args), num_masked, args.classes)

    reference = torch_model(args)
    params, _ = videomae.load_params(reference.state_dict(), task.model, "videomae_hf")
    params = jax.tree.map(jnp.array, params)  # copies: the converted arrays share memory with the PyTorch model
    rng = np.random.default_rng(0)
    video = rng.standard_normal((args.batch, args.frames, args.image_size, args.image_size, 3), dtype=np.float32)
    labels = rng.integers(0, args.classes, args.batch)
    keys = jax.random.split(jax.random.PRNGKey(1), args.warmup + args.steps)
    masks = [np.array(masking.tube_mask(k, args.batch, grid, args.mask_ratio)) for k in keys]

    builders = {"JAX": lambda: jax_step(args, task, params, video, labels),
                "PyTorch": lambda: torch_step(args, reference, video, labels, masks)}
    steps = {impl: builders[impl]() for impl in IMPLS[args.impl]}
    if args.baseline_attn:
        baseline = argparse.Namespace(**{**vars(args), "attn_impl": args.baseline_attn})
        steps[f"JAX attn={args.baseline_attn}"] = jax_step(baseline, make_task(baseline),
                                                           jax.tree.map(jnp.copy, params), video, labels)
    seconds = common.median_seconds(steps, args.warmup, args.steps)
    print(", ".join(f"{impl} {1e3 * s:.1f} ms/step" for impl, s in seconds.items()), file=sys.stderr)
    if args.baseline_attn and "PyTorch" in seconds:
        print(", ".join(f"{impl}/PyTorch clips/s {seconds['PyTorch'] / s:.2f}" for impl, s in seconds.items()
                        if impl != "PyTorch"), file=sys.stderr)
    seconds.pop(f"JAX attn={args.baseline_attn}", None)
    cells = []
    for impl in ("JAX", "PyTorch"):
        if impl in seconds:
            s = seconds[impl]
            cells += [f"{1e3 * s:.1f}", f"{args.batch / s:.3g}", f"{100 * flops / s / peak:.1f}%"]
        else:
            cells += ["–"] * 3
    ratio = f"{seconds['PyTorch'] / seconds['JAX']:.2f}" if len(seconds) == 2 else "–"
    clip = f"{args.frames}×{args.image_size}²"
    return common.markdown_row([
        args.model, args.task, clip, args.batch, args.dtype, f"{flops / 1e9:.1f}", *cells, ratio,
        *common.provenance(peak, load_start, "benchmarks.videomae_step", argv)])


def main(argv=None):
    common.main(parse_args, run, COLUMNS, argv)


if __name__ == "__main__":
    main()

"""Zero-shot on your videos with a video-text model: rank labels for each video, or videos for a text query.

  python -m invideo_jax.zero_shot_cli --model=internvideo_mm_b16 --checkpoint=InternVideo-MM-B-16.ckpt \
      --videos=clip.mp4 --labels="playing guitar,cooking,dancing" [--templates=kinetics] [--top=5]
  python -m invideo_jax.zero_shot_cli --model=internvideo_mm_b16 --checkpoint=InternVideo-MM-B-16.ckpt \
      --videos=my_videos/ --query="a dog catching a frisbee" [--top=10]

--model / --checkpoint as in invideo_jax/inference.py (a video-text model: internvideo_mm_*, demo_videotext, or a
videotext config file). --videos is a video, a folder or a list, as for invideo_jax.extract.

A video is seen as evaluation sees it: --clips temporal views (default: the config's eval_clips) of the config's T
frames (segment sampling: one frame in each of T equal parts of the whole video; dense: frames `sampling_rate`
apart, views evenly spaced), resized to the short side and centre-cropped. Its embedding is the normalised mean of
the views' unit embeddings. --labels is a comma-separated list or a file with one label per line; --templates:
'none' (the label itself, default), 'default' (3 video prompts), 'kinetics' (the CLIP paper's 28) or a file with
one template per line, `{}` standing for the label; a label's embedding is the normalised mean of its prompts'
unit embeddings (evaluate/zero_shot.py). Scores: softmax over the labels (over the videos for --query) of
logit_scale x cosine (InternVideo-MM: exp of its learned log scale; InternVideo2 stage 2: 1 / its temperature),
printed with the cosines.

A text longer than the model's context (77 CLIP tokens; the config's data.text_length) is cut to fit, keeping the
end token the text tower pools at, and a warning names it. Videos that cannot be decoded are reported on stderr
and left out. --json prints the results as JSON.
"""
import argparse
import concurrent.futures
import copy
import json
import os
import sys

import numpy as np
from absl import logging

from invideo_jax import losses, paths as user_paths
from invideo_jax.data import pipeline
from invideo_jax.data.discovery import find_videos
from invideo_jax.data.video import BadVideo, decode_frames
from invideo_jax.evaluate import zero_shot
from invideo_jax.evaluate.multiview import softmax

TEMPLATE_SETS = {"none": ("{}",), "default": zero_shot.DEFAULT_TEMPLATES, "kinetics": zero_shot.KINETICS_TEMPLATES}


def read_labels(spec: str) -> list:
    """A file with one label per line, or a comma-separated list."""
    if os.path.isfile(spec):
        with open(spec) as f:
            labels = [line.strip() for line in f if line.strip()]
    else:
        labels = [label.strip() for label in spec.split(",") if label.strip()]
    if not labels:
        raise ValueError(f"no labels in {spec!r}")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"labels given twice: {repeated}")
    return labels


def read_templates(spec: str) -> tuple:
    """A named template set or a file with one template (with `{}`) per line."""
    if spec in TEMPLATE_SETS:
        return tuple(TEMPLATE_SETS[spec])
    if not os.path.isfile(spec):
        raise ValueError(f"--templates={spec!r}: one of {sorted(TEMPLATE_SETS)} or a file")
    with open(spec) as f:
        templates = tuple(line.strip() for line in f if line.strip())
    bad = [t for t in templates if t.count("{}") != 1]
    if bad or not templates:
        raise ValueError(f"{spec}: every template needs exactly one {{}} (got {bad or 'none'})")
    return templates


def truncated(tokenizer, texts) -> list:
    """The texts longer than the tokenizer's context (start and end tokens included); each is warned about."""
    room = tokenizer.context_length - 2
    long = []
    for text in texts:
        count = len(tokenizer.backend.encode(text, add_special_tokens=False).ids)
        if count > room:
            logging.warning("text of %d tokens cut to the model's context of %d (%d + start and end): %r", count,
                            tokenizer.context_length, room, text)
            long.append(text)
    return long


def text_embeddings(model, texts, templates=("{}",)) -> np.ndarray:
    """(N, E) unit embeddings of `texts`, each the normalised mean over `templates`."""
    tokenizer = model.tokenizer()
    truncated(tokenizer, [t.format(text) for text in texts for t in templates])
    return zero_shot.class_embeddings(model.encode_text, tokenizer, texts, templates)


def video_views(model, path: str, clips: int) -> np.ndarray:
    """uint8 (clips, T, S, S, 3): the evaluation views of one video (raises video.BadVideo)."""
    data = copy.deepcopy(model.data)
    data.eval_clips = clips
    frames = decode_frames(path, lambda n: np.stack([pipeline.clip_indices(data, n, view=k) for k in range(clips)]),
                           min_frames=data.min_frames)
    return model.crop(frames)


def video_embeddings(model, paths, clips: int = 0, batch_size: int = 16, workers: int = 2):
    """((N', E) unit embeddings, [kept paths], {failed path: error}) of the videos (views averaged)."""
    clips = clips or model.data.eval_clips
    batch = -(-batch_size // model.batch_multiple) * model.batch_multiple

    def read(path):
        try:
            return model.normalize(video_views(model, path, clips)), ""
        except BadVideo as e:
            return None, str(e)

    kept, failed, views, owners, chunks = [], {}, [], [], []
    with concurrent.futures.ThreadPoolExecutor(max(workers, 1)) as pool:
        for path, (video, error) in zip(paths, pool.map(read, paths)):
            if error:
                failed[path] = error
                print(f"skipped {path}: {error}", file=sys.stderr)
                continue
            views.extend(video)
            owners.extend([len(kept)] * len(video))
            kept.append(path)
            while len(views) >= batch:
                chunks.append(model.encode_video(np.stack(views[:batch]))["features"])
                del views[:batch]
    if views:
        padded = views + views[-1:] * (batch - len(views))
        chunks.append(model.encode_video(np.stack(padded))["features"][:len(views)])
    if not kept:
        return np.zeros((0, 0), np.float32), kept, failed
    features = losses.l2_normalize(np.concatenate(chunks).astype(np.float64))
    summed = np.zeros((len(kept), features.shape[1]))
    np.add.at(summed, np.asarray(owners), features)
    return losses.l2_normalize(summed).astype(np.float32), kept, failed


def classify(model, paths, labels, templates=("{}",), clips: int = 0, batch_size: int = 16) -> dict:
    """{'logit_scale', 'videos': [{'video', 'labels': [{'label', 'probability', 'cosine'}] best first}], 'failed'}."""
    classes = text_embeddings(model, labels, templates)
    videos, kept, failed = video_embeddings(model, paths, clips, batch_size)
    cosine = videos @ classes.T
    probability = softmax(model.logit_scale * cosine)
    results = []
    for i, path in enumerate(kept):
        order = np.argsort(-probability[i], kind="stable")
        results.append({"video": path, "labels": [
            {"label": labels[c], "probability": float(probability[i, c]), "cosine": float(cosine[i, c])}
            for c in order]})
    return {"logit_scale": model.logit_scale, "videos": results, "failed": failed}


def search(model, paths, query: str, templates=("{}",), clips: int = 0, batch_size: int = 16) -> dict:
    """{'logit_scale', 'query', 'videos': [{'video', 'probability', 'cosine'}] best first, 'failed'}."""
    text = text_embeddings(model, [query], templates)[0]
    videos, kept, failed = video_embeddings(model, paths, clips, batch_size)
    cosine = videos @ text if kept else np.zeros(0)
    probability = softmax(model.logit_scale * cosine) if kept else cosine
    order = np.argsort(-cosine, kind="stable")
    return {"logit_scale": model.logit_scale, "query": query, "failed": failed, "videos": [
        {"video": kept[i], "probability": float(probability[i]), "cosine": float(cosine[i])} for i in order]}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m invideo_jax.zero_shot_cli", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--model", required=True, help="a video-text preset name or config file")
    parser.add_argument("--checkpoint", required=True, help="weights: a directory of ours or a PyTorch file")
    parser.add_argument("--format", default=None, help="converter format of a PyTorch file (default: the preset's)")
    parser.add_argument("--videos", "--video", dest="videos", required=True, help="video file, folder or list")
    parser.add_argument("--root", default="", help="folder of relative paths in a list (default: the list's)")
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument("--labels", help="comma-separated labels, or a file with one per line")
    task.add_argument("--query", help="a text: rank the videos by it")
    parser.add_argument("--templates", default="none", help="none | default | kinetics | a file of templates")
    parser.add_argument("--clips", type=int, default=0, help="temporal views per video (default: the config's)")
    parser.add_argument("--top", type=int, default=5, help="results printed per video (labels) or query")
    parser.add_argument("--batch", type=int, default=16, help="views per step, over all devices")
    parser.add_argument("--tokenizer_path", default="", help="the tokenizer's vocabulary (default: the config's)")
    parser.add_argument("--json", action="store_true", help="print every result as JSON")
    return parser.parse_args(argv)


def main(argv) -> int:
    args = parse_args(argv)
    args.videos, args.root, args.checkpoint, args.tokenizer_path = map(user_paths.resolve, (
        args.videos, args.root, args.checkpoint, args.tokenizer_path))
    from invideo_jax import inference  # after parsing: `--help` stays fast
    try:
        templates = read_templates(args.templates)
        labels = read_labels(args.labels) if args.labels is not None else None
        paths = [path for path, _ in find_videos(args.videos, args.root)]
        overrides = {"data.tokenizer_path": args.tokenizer_path} if args.tokenizer_path else None
        model = inference.load(args.model, args.checkpoint, format=args.format, overrides=overrides)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        model.tokenizer()
    except FileNotFoundError as e:
        print(f"error: {e}" + ("" if args.tokenizer_path else " (give the vocabulary with --tokenizer_path)"),
              file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if labels is not None:
        result = classify(model, paths, labels, templates, args.clips, args.batch)
    else:
        result = search(model, paths, args.query, templates, args.clips, args.batch)
    if args.json:
        print(json.dumps(result, indent=1))
    elif labels is not None:
        print(f"softmax over {len(labels)} labels of {result['logit_scale']:.4g} x cosine")
        for video in result["videos"]:
            print(f"\n{video['video']}\n  {'prob':>7}  {'cosine':>7}  label")
            for row in video["labels"][:args.top]:
                print(f"  {row['probability']:7.4f}  {row['cosine']:7.4f}  {row['label']}")
    else:
        print(f"{args.query!r}: softmax over {len(result['videos'])} videos of {result['logit_scale']:.4g} x cosine")
        print(f"{'rank':>4}  {'prob':>7}  {'cosine':>7}  video")
        for rank, row in enumerate(result["videos"][:args.top], 1):
            print(f"{rank:4d}  {row['probability']:7.4f}  {row['cosine']:7.4f}  {row['video']}")
    return 0 if result["videos"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

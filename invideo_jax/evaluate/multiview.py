"""Multi-view classification: softmax averaged over each video's views; top-1/top-5 accuracy."""
import numpy as np


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax over `axis`, in the dtype of `logits`."""
    exp = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return exp / exp.sum(axis=axis, keepdims=True)


class MultiViewAccumulator:
    """Sums per-view class probabilities by video index; views with mask 0 (padding, bad videos)
    are skipped. Video indices are global example indices, so views gathered from every host can
    be added to one accumulator."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.prob_sums = np.zeros((0, num_classes))
        self.view_counts = np.zeros(0, np.int64)
        self.labels = np.zeros(0, np.int64)

    def _grow(self, size: int) -> None:
        extra = size - len(self.view_counts)
        if extra > 0:
            self.prob_sums = np.pad(self.prob_sums, ((0, extra), (0, 0)))
            self.view_counts = np.pad(self.view_counts, (0, extra))
            self.labels = np.pad(self.labels, (0, extra))

    def add(self, logits, video_index, mask, label) -> None:
        """Adds a batch of views: logits (B, C), video_index, mask and label (B,)."""
        keep = np.asarray(mask).astype(bool)
        index = np.asarray(video_index)[keep]
        if not len(index):
            return
        self._grow(int(index.max()) + 1)
        np.add.at(self.prob_sums, index, softmax(np.asarray(logits, np.float64)[keep]))
        np.add.at(self.view_counts, index, 1)
        self.labels[index] = np.asarray(label)[keep]

    def predictions(self) -> dict:
        """Per video seen: `video_index`, `probs` (softmax averaged over its views) and `label`."""
        seen = np.flatnonzero(self.view_counts)
        return {"video_index": seen, "probs": self.prob_sums[seen] / self.view_counts[seen, None],
                "label": self.labels[seen]}

    def result(self) -> dict:
        """top1 and top5 accuracy (fractions) over the videos seen, num_videos, num_views, and `predictions`."""
        predictions = self.predictions()
        return {**accuracy(predictions), "num_views": int(self.view_counts.sum()), "predictions": predictions}


def ensemble(members: list) -> dict:
    """Late fusion of classifiers evaluated on the same videos: their `predictions` with probabilities averaged."""
    first = members[0]
    for i, other in enumerate(members[1:], 1):
        if not (np.array_equal(other["video_index"], first["video_index"])
                and np.array_equal(other["label"], first["label"])):
            raise ValueError(f"ensemble member {i} was evaluated on other videos or labels than member 0")
    return dict(first, probs=np.mean([m["probs"] for m in members], axis=0))


def accuracy(predictions: dict) -> dict:
    """num_videos, top1 and top5 of `predictions` (as `MultiViewAccumulator.predictions`)."""
    return {"num_videos": len(predictions["video_index"]), **top_k_accuracy(predictions["probs"], predictions["label"])}


def top1_hits(predictions: dict) -> np.ndarray:
    """(videos,) bool in the order of `predictions`: whether each video's highest probability is its label."""
    return np.asarray(predictions["probs"]).argmax(-1) == np.asarray(predictions["label"])


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> dict[str, float]:
    """{'top{k}': fraction of rows whose label is among their k highest scores} (0 without rows)."""
    ranked = np.argsort(-scores, axis=-1)
    return {f"top{k}": float((ranked[:, :k] == labels[:, None]).any(axis=-1).mean()) if len(labels) else 0.0
            for k in ks}

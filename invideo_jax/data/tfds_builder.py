"""Packs annotated videos into a TFDS ArrayRecord dataset, and reads it back without TensorFlow.

Each example holds the encoded video file (raw bytes, decoded later with PyAV), its label, captions
and original path. One `pack` call writes one split; packing another split into the same dataset
adds it. Usage:

    python -m invideo_jax.data.tfds_builder --annotations=train.csv --format=videomae \
        --root=videos/ --out_dir=tfds/ --name=kinetics400 --split=train
"""
import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags, logging

from invideo_jax import paths
from invideo_jax.data.annotations import VideoRecord, is_image_path, read_annotations
from invideo_jax.data.video import BadVideo

VERSION = "1.0.0"
FEATURES = tfds.features.FeaturesDict({
    "video": tfds.features.Tensor(shape=(), dtype=np.object_),
    "label": tfds.features.Scalar(dtype=np.int64),
    "caption": tfds.features.Tensor(shape=(None,), dtype=np.object_),
    "path": tfds.features.Text(),
})


class VideoFiles(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One split of annotated video files, stored as encoded bytes."""

    VERSION = tfds.core.Version(VERSION)

    def __init__(self, *, annotation_file: str, format: str, root: str, split: str, **kwargs):
        self._records = read_annotations(annotation_file, format, root)
        self._split = split
        super().__init__(file_format="array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=FEATURES, disable_shuffling=True)

    def _split_generators(self, dl_manager):
        return {self._split: self._generate_examples()}

    def _generate_examples(self):
        for key, record in enumerate(self._records):
            try:
                with open(record.path, "rb") as f:
                    data = f.read()
            except OSError as e:
                logging.warning("Packing %s as an empty (bad) video: %s", record.path, e)
                data = b""
            yield key, {"video": data, "label": record.label,
                        "caption": np.array(record.captions, dtype=object), "path": record.path}


def _merge_split(new_dir: str, dataset_dir: str) -> None:
    """Moves the one split prepared in new_dir into dataset_dir, replacing a split of that name."""
    info_path = os.path.join(dataset_dir, "dataset_info.json")
    if not os.path.exists(info_path):
        shutil.rmtree(dataset_dir, ignore_errors=True)
        shutil.move(new_dir, dataset_dir)
        return
    with open(info_path) as f:
        info = json.load(f)
    with open(os.path.join(new_dir, "dataset_info.json")) as f:
        new_splits = json.load(f)["splits"]
    names = {split["name"] for split in new_splits}
    for file_name in os.listdir(dataset_dir):
        if any(file_name.startswith(f"{info['name']}-{name}.") for name in names):
            os.remove(os.path.join(dataset_dir, file_name))
    for file_name in os.listdir(new_dir):
        if file_name.startswith(f"{info['name']}-"):
            shutil.move(os.path.join(new_dir, file_name), dataset_dir)
    info["splits"] = [s for s in info["splits"] if s["name"] not in names] + new_splits
    with open(info_path, "w") as f:
        json.dump(info, f, indent=2)


def pack(annotation_file: str, root: str, out_dir: str, name: str, split: str, *,
         format: str = "videomae") -> str:
    """Packs the videos of an annotation file as split `split` of dataset `name` under out_dir;
    returns the dataset directory (out_dir/name/VERSION)."""
    builder_class = type(name, (VideoFiles,), {"name": name}, skip_registration=True)
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as work_dir:
        builder = builder_class(annotation_file=annotation_file, format=format, root=root,
                                split=split, data_dir=work_dir)
        builder.download_and_prepare()
        dataset_dir = os.path.join(out_dir, name, VERSION)
        os.makedirs(os.path.dirname(dataset_dir), exist_ok=True)
        _merge_split(str(builder.data_dir), dataset_dir)
    return dataset_dir


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class TfdsVideoSource:
    """Random access to a packed split: item i is (VideoRecord, encoded video bytes)."""

    def __init__(self, data_dir: str, name: str, split: str):
        self._where = f"{data_dir}/{name}[{split}]"
        self._source = tfds.data_source(name, split=split, data_dir=data_dir)
        if not len(self._source):
            raise ValueError(f"TFDS split {self._where} contains no examples")
        self.has_captions = len(self._source[0]["caption"]) > 0

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> tuple[VideoRecord, bytes]:
        try:
            example = self._source[index]
        except Exception as e:  # a corrupt record is a bad video, whatever the reader raised
            raise BadVideo(f"{self._where} record {index}: {type(e).__name__}: {e}") from e
        path = _text(example["path"])
        record = VideoRecord(path, int(example["label"]),
                             tuple(_text(c) for c in example["caption"]), is_image_path(path))
        return record, bytes(example["video"])


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    print(pack(paths.resolve(FLAGS.annotations), paths.resolve(FLAGS.root), paths.resolve(FLAGS.out_dir), FLAGS.name,
               FLAGS.split,
               format=FLAGS.format))


if __name__ == "__main__":
    flags.DEFINE_string("annotations", None, "Annotation file to pack.")
    flags.DEFINE_enum("format", "videomae", ["videomae", "uniformer", "videomae_v2", "json"],
                      "Annotation file format.")
    flags.DEFINE_string("root", "", "Directory joined to relative video paths.")
    flags.DEFINE_string("out_dir", None, "TFDS data directory to write into.")
    flags.DEFINE_string("name", None, "Dataset name (snake_case).")
    flags.DEFINE_string("split", "train", "Split name.")
    flags.mark_flags_as_required(["annotations", "out_dir", "name"])
    app.run(main)

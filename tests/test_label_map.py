"""K710 -> K400/600/700 style label maps from class-name files, and evaluation on the head's rows of them."""
import jax
import numpy as np
import pytest

from configs import common
from invideo_jax.evaluate import label_map
from invideo_jax.train import trainer
from invideo_jax.train.tasks import get_task

SOURCE = ["abseiling", "air drumming", "answering questions", "passing American football (in game)", "zumba"]


def _names(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_map_by_hand(tmp_path):
    source = _names(tmp_path, "k710.txt", SOURCE)
    target = _names(tmp_path, "k400.txt", ["zumba", "Abseiling", "passing_American_football_(in_game)"])
    assert label_map.label_map(source, target).tolist() == [4, 0, 3]  # found by hand in SOURCE


def test_index_map_file_and_its_errors(tmp_path):
    path = tmp_path / "label_mixto600.json"
    path.write_text("[3, 0, 709]")
    assert label_map.read_index_map(str(path)).tolist() == [3, 0, 709]
    for text, message in (("[3, 3]", "repeats"), ('{"a": 1}', "JSON list"), ("[1, -2]", "JSON list"),
                          ("[1,", "not JSON")):
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            label_map.read_index_map(str(path))
    with pytest.raises(FileNotFoundError, match="missing.json: no such label-map file"):
        label_map.read_index_map(str(tmp_path / "missing.json"))


def test_missing_repeated_and_empty_names_are_named(tmp_path):
    source = _names(tmp_path, "k710.txt", SOURCE)
    with pytest.raises(ValueError, match=r"2 class\(es\) of .*k600.txt are not in .*k710.txt: 'yoga', 'tai chi'"):
        label_map.label_map(source, _names(tmp_path, "k600.txt", ["zumba", "yoga", "tai chi"]))
    with pytest.raises(ValueError, match=r"dup.txt:3: class 'Zumba' repeats line 1"):
        label_map.read_class_names(_names(tmp_path, "dup.txt", ["zumba", "yoga", "Zumba"]))
    with pytest.raises(ValueError, match=r"gap.txt:2: empty class name"):
        label_map.read_class_names(_names(tmp_path, "gap.txt", ["zumba", "", "yoga"]))


def _config(tmp_path, target_lines, head=len(SOURCE)):
    model = dict(width=16, depth=1, num_heads=2, mlp_dim=32, patch_size=8, tubelet_size=2, num_frames=4,
                 image_size=16, final_norm=False, pool="mean", num_classes=head)
    c = common.train_config("classification", model)
    c.data.update(dict(num_frames=4, crop_size=16, num_classes=head))
    c.label_map.update(dict(source=_names(tmp_path, "k710.txt", SOURCE),
                            target=_names(tmp_path, "k400.txt", target_lines)))
    return c


def test_evaluation_reads_the_heads_rows_of_the_target_classes(tmp_path):
    task = get_task(_config(tmp_path, ["answering questions", "abseiling"]))
    batch = trainer.example_batch(task.config, 2)
    batch["video"] = jax.random.normal(jax.random.PRNGKey(1), batch["video"].shape)
    variables = task.init_variables(jax.random.PRNGKey(0), batch)
    full = task.model.apply(variables, batch["video"])["logits"]
    picked = task.predict(variables["params"], {}, batch)["logits"]
    assert picked.shape == (2, 2)
    np.testing.assert_array_equal(picked, full[:, [2, 0]])


def test_head_of_another_size_is_named(tmp_path):
    with pytest.raises(ValueError, match="names 5 classes but the head has 7"):
        get_task(_config(tmp_path, ["zumba"], head=7))

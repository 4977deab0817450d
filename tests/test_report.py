"""The report's intervals and generated comparison sentences, on hand-worked numbers."""
import math

import numpy as np
import pytest

from invideo_jax import report
from invideo_jax.report import Estimate


def test_binomial_standard_error():
    assert report.binomial(0.5, 100) == Estimate(0.5, 0.05)
    assert report.binomial(0.9, 400) == pytest.approx(Estimate(0.9, 0.015))  # sqrt(0.09 / 400)
    assert report.binomial(1.0, 50) == Estimate(1.0, 0.0)


def test_compare_states_a_difference_only_beyond_two_standard_errors():
    # 80% ± 3 against 70% ± 4: the difference's standard error is 5 points, so the margin is 10.
    diff = lambda a, b: report.independent_difference(Estimate(*a), Estimate(*b))
    assert report.compare("A", "B", diff((0.80, 0.03), (0.70, 0.04))) == \
        "A and B are not distinguishable (+10.0 ± 10.0 points)"
    assert report.compare("A", "B", diff((0.81, 0.03), (0.70, 0.04))) == "A beats B by 11.0 ± 10.0 points"
    assert report.compare("A", "B", diff((0.50,), (0.60, 0.03))) == "B beats A by 10.0 ± 6.0 points"
    assert report.compare("A", "B", diff((0.125,), (0.125,))) == "A and B are not distinguishable (+0.0 ± 0.0 points)"


def test_paired_difference_is_carried_by_the_examples_where_the_two_disagree():
    # 100 examples: both right on 60, both wrong on 29, only A right on 10, only B right on 1. The per-example
    # differences are +1 (10), -1 (1), 0 (89): mean 0.09, variance 0.11 - 0.09^2 = 0.1019, so SE sqrt(0.1019 / 100).
    a = np.array([1] * 60 + [0] * 29 + [1] * 10 + [0] * 1, bool)
    b = np.array([1] * 60 + [0] * 29 + [0] * 10 + [1] * 1, bool)
    assert report.paired_difference(a, b) == pytest.approx(Estimate(0.09, math.sqrt(0.1019 / 100)))
    assert report.compare("A", "B", report.paired_difference(a, b)) == "A beats B by 9.0 ± 6.4 points"
    # Taken as independent (70% and 61% on 100 each) the margin is 13.4 points and hides the difference.
    assert report.compare("A", "B", report.independent_difference(report.binomial(0.70, 100), report.binomial(
        0.61, 100))) == "A and B are not distinguishable (+9.0 ± 13.4 points)"


def _write_predictions(workdir, name, probs, labels):
    (workdir / name).mkdir()
    np.savez(workdir / name / "predictions.npz", video_index=np.arange(len(labels)), probs=np.asarray(probs, float),
             label=np.asarray(labels))


def test_claims_pair_classifiers_and_ensembles_video_by_video(tmp_path):
    # 4 videos of 2 classes. a is right on videos 0-2, b on videos 0 and 3; their average on 0, 1 and 3.
    labels = [0, 1, 0, 1]
    _write_predictions(tmp_path, "a", [[0.9, 0.1], [0.4, 0.6], [0.8, 0.2], [0.7, 0.3]], labels)
    _write_predictions(tmp_path, "b", [[0.6, 0.4], [0.7, 0.3], [0.3, 0.7], [0.1, 0.9]], labels)
    results = {"a": {"eval": {"top1": 0.75, "num_videos": 4}}, "b": {"eval": {"top1": 0.5, "num_videos": 4}},
               "ens": {"eval": {"top1": 0.75, "num_videos": 4}, "members": ["a", "b"]},
               "vt": {"eval": {"zero_shot/top1": 0.5, "num_videos": 4}}}
    # a - b per video: 0, +1, +1, -1 -> mean 0.25, SE sqrt((3/4 - 1/16) / 4).
    paired = Estimate(0.25, math.sqrt((0.75 - 0.0625) / 4))
    assert report.difference(results, "a", "b", str(tmp_path)) == pytest.approx(paired)
    # ens - b per video: 0, +1, 0, 0.
    assert report.difference(results, "ens", "b", str(tmp_path)) == pytest.approx(Estimate(0.25, math.sqrt(
        (0.25 - 0.0625) / 4)))
    # Without the workdir, or against another metric, the binomial errors are taken as independent.
    independent = report.independent_difference(report.binomial(0.75, 4), report.binomial(0.5, 4))
    assert report.difference(results, "a", "b") == pytest.approx(independent)
    assert report.difference(results, "a", "vt:zero_shot/top1", str(tmp_path)) == pytest.approx(independent)
    assert report.claims(results, [("a", "b")], str(tmp_path)).startswith(
        f"- a and b are not distinguishable (+25.0 ± {200 * paired.se:.1f} points).")


def test_measured_reads_accuracies_recalls_in_percent_and_constants():
    results = {"cls": {"eval": {"top1": 0.8, "num_videos": 100}},
               "vt": {"eval": {"retrieval/t2v_r1": 25.0, "zero_shot/top1": 0.5, "num_videos": 300}}}
    assert report.measured(results, "cls") == pytest.approx(Estimate(0.8, 0.04))
    assert report.measured(results, "vt:retrieval/t2v_r1") == pytest.approx(Estimate(0.25, 0.025))
    assert report.measured(results, "vt:zero_shot/top1") == pytest.approx(Estimate(0.5, math.sqrt(0.25 / 300)))
    assert report.measured(results, 0.125) == Estimate(0.125, 0.0)
    # Zero-shot 50% ± 2.9 on 300 videos against chance 12.5%: 37.5 ± 5.8 points.
    assert report.claims(results, [("vt:zero_shot/top1", 0.125)]).startswith(
        "- vt:zero_shot/top1 beats chance by 37.5 ± 5.8 points.")


def test_tables_carry_standard_errors_and_plots_are_written(tmp_path):
    results = {"a": {"steps": 3, "train": {"loss": 1.5}, "eval": {"top1": 0.8, "top5": 1.0, "num_videos": 100}}}
    assert "| a | 3 |  | 1.5 | 80.0 ± 4.0 | 100.0 ± 0.0 | 100 |" in report.results_table(results)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n')
    assert report.loss_plot(str(tmp_path), ["a", "missing"]) == report.LOSS_PLOT
    assert report.accuracy_plot(str(tmp_path), results, chance=0.125) == report.ACCURACY_PLOT
    assert (tmp_path / report.LOSS_PLOT).stat().st_size and (tmp_path / report.ACCURACY_PLOT).stat().st_size

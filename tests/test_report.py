"""The report's intervals and generated comparison sentences, on hand-worked numbers."""
import math

import pytest

from invideo_jax import report
from invideo_jax.report import Estimate


def test_binomial_standard_error():
    assert report.binomial(0.5, 100) == Estimate(0.5, 0.05)
    assert report.binomial(0.9, 400) == pytest.approx(Estimate(0.9, 0.015))  # sqrt(0.09 / 400)
    assert report.binomial(1.0, 50) == Estimate(1.0, 0.0)


def test_compare_states_a_difference_only_beyond_two_standard_errors():
    # 80% ± 3 against 70% ± 4: the difference's standard error is 5 points, so the margin is 10.
    assert report.compare("A", Estimate(0.80, 0.03), "B", Estimate(0.70, 0.04)) == \
        "A and B are not distinguishable (+10.0 ± 10.0 points)"
    assert report.compare("A", Estimate(0.81, 0.03), "B", Estimate(0.70, 0.04)) == "A beats B by 11.0 ± 10.0 points"
    assert report.compare("A", Estimate(0.50), "B", Estimate(0.60, 0.03)) == "B beats A by 10.0 ± 6.0 points"
    assert report.compare("A", Estimate(0.125), "B", Estimate(0.125)) == \
        "A and B are not distinguishable (+0.0 ± 0.0 points)"


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

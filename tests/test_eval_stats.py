"""Evaluation statistics on small hand-checked cases: a metric off by a constant fails here."""

from __future__ import annotations

import math

import pytest

from training.eval_stats import (
    abstain_curve,
    bootstrap_mean,
    calibration,
    localisation_accuracy,
    mode_metrics,
    prediction_metrics,
    wilson,
)


def test_wilson_interval_matches_the_formula_by_hand() -> None:
    # 8 of 10, z = 1.96: centre (0.8 + 0.19208) / 1.38416 = 0.71681; half 0.21838 → [0.4902, 0.9433].
    est = wilson(8, 10)
    assert est.value == 0.8 and est.n == 10
    assert est.low == pytest.approx(0.4902, abs=1e-4) and est.high == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 20).low == 0.0 and wilson(20, 20).high == 1.0
    assert wilson(0, 20).high == pytest.approx(0.1611, abs=1e-4)
    empty = wilson(0, 0)
    assert math.isnan(empty.value) and (empty.low, empty.high) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes = 3"):
        wilson(3, 2)


def test_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    values = [0.0, 1.0, 0.5, 0.25, 0.75] * 4
    a, b = bootstrap_mean(values, seed=1), bootstrap_mean(values, seed=1)
    assert a == b and a.value == pytest.approx(0.5)
    assert a.low < 0.5 < a.high and a.high - a.low < 0.5
    assert bootstrap_mean([2.0, 2.0, 2.0]).low == 2.0 == bootstrap_mean([2.0, 2.0, 2.0]).high


def test_prediction_metrics_on_a_hand_checked_case() -> None:
    p = [0.9, 0.8, 0.3, 0.6, 0.2, 0.1]
    y = [True, True, True, False, False, False]
    m = prediction_metrics(p, y)
    # Passed (p >= 0.5): 0.9, 0.8, 0.6 → correct: T, T, F(0.3 blocked a success), F(0.6 passed a failure), T, T.
    assert m.accuracy.value == pytest.approx(4 / 6)
    # AUC: of the 9 (success, failure) pairs the success ranks higher in 8 (0.3 < 0.6 is the one miss).
    assert m.roc_auc == pytest.approx(8 / 9)
    # Brier: mean of (0.1², 0.2², 0.7², 0.6², 0.2², 0.1²) = (0.01+0.04+0.49+0.36+0.04+0.01)/6.
    assert m.brier == pytest.approx(0.95 / 6)
    assert m.false_block_rate.value == pytest.approx(1 / 3) and m.missed_failure_rate.value == pytest.approx(1 / 3)
    assert m.coverage == 1.0 and m.decided_accuracy.value == m.accuracy.value
    # Abstaining on [0.25, 0.65) hands 0.3 and 0.6 — the two mistakes — to a person.
    band = prediction_metrics(p, y, abstain=(0.25, 0.65))
    assert band.coverage == pytest.approx(4 / 6) and band.decided_accuracy.value == 1.0
    assert math.isnan(prediction_metrics([0.2, 0.4], [True, True]).roc_auc)
    with pytest.raises(ValueError, match="2 probabilities for 3 outcomes"):
        prediction_metrics([0.1, 0.2], [True, False, True])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        prediction_metrics([1.5], [True])


def test_abstain_curve_trades_coverage_for_accuracy() -> None:
    p = [0.9, 0.8, 0.3, 0.6, 0.2, 0.1]
    y = [True, True, True, False, False, False]
    curve = abstain_curve(p, y, widths=(0.0, 0.4))
    assert curve[0] == (0.0, 1.0, pytest.approx(4 / 6))
    assert curve[1] == (0.4, pytest.approx(4 / 6), 1.0)


def test_calibration_bins() -> None:
    bins = calibration([0.05, 0.15, 0.12, 0.95, 0.91], [False, True, False, True, True], bins=10)
    assert bins == [(0.05, 0.0, 1), (pytest.approx(0.135), 0.5, 2), (pytest.approx(0.93), 1.0, 2)]
    assert calibration([1.0], [True], bins=4) == [(1.0, 1.0, 1)]  # p = 1 falls in the last bin


def test_mode_metrics_and_localisation_by_hand() -> None:
    predicted = [{"cold_extrusion"}, {"cold_extrusion", "move_out_of_range"}, set(), {"move_out_of_range"}]
    actual = [{"cold_extrusion"}, {"cold_extrusion"}, {"move_out_of_range"}, {"move_out_of_range"}]
    by_mode = {m.mode: m for m in mode_metrics(predicted, actual)}
    cold, moves = by_mode["cold_extrusion"], by_mode["move_out_of_range"]
    assert (cold.precision, cold.recall, cold.f1, cold.support) == (1.0, 1.0, 1.0, 2)
    # move_out_of_range: tp 1 (program 4), fp 1 (program 2), fn 1 (program 3).
    assert (moves.precision, moves.recall, moves.support) == (0.5, 0.5, 2) and moves.f1 == pytest.approx(0.5)
    loc = localisation_accuracy([10, 12, None, 40], [10, 14, 7, None], tolerance=1)
    assert (loc.value, loc.n) == (pytest.approx(1 / 3), 3)
    assert localisation_accuracy([10, 12, None, 40], [10, 14, 7, None], tolerance=2).value == pytest.approx(2 / 3)

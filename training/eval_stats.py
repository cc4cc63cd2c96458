"""Statistics of an evaluation: confidence intervals, and the metrics of a success predictor and of a
failure-mode detector.

Rates carry Wilson score intervals (exact enough at the 64-episode scale, never outside [0, 1]); means carry
percentile bootstrap intervals from a seeded generator (the same data give the same interval). ROC-AUC,
Brier score and calibration curves are scikit-learn's; what they mean here is in docs/evaluation.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z_95 = 1.959963984540054
"""The standard normal quantile of a two-sided 95 % interval."""
BOOTSTRAP_SAMPLES = 2000
"""Resamples of a bootstrap interval."""


@dataclass(frozen=True)
class Estimate:
    """A measured value with its 95 % confidence interval."""

    value: float
    low: float
    high: float
    n: int
    """How many observations it rests on."""

    def as_dict(self) -> dict[str, float | int]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def wilson(successes: int, n: int, z: float = Z_95) -> Estimate:
    """The rate ``successes / n`` with its Wilson score interval (``n`` = 0: the whole of [0, 1])."""
    if not 0 <= successes <= n:
        raise ValueError(f"successes = {successes}: must lie in 0..n = {n}")
    if n == 0:
        return Estimate(math.nan, 0.0, 1.0, 0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def bootstrap_mean(values: Sequence[float], seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> Estimate:
    """The mean of ``values`` with a percentile bootstrap 95 % interval (seeded: repeatable)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(samples, data.size))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return Estimate(float(data.mean()), float(low), float(high), int(data.size))


def json_safe(value: object) -> object:
    """``value`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


# -- success prediction ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PredictionMetrics:
    """How well probabilities of success (``p_success``) predict outcomes (``succeeded``).

    A program is *blocked* when its probability is below the threshold. ``false_block_rate`` is the share of
    programs that would have succeeded but were blocked; ``missed_failure_rate`` the share of failing
    programs let through. With an abstain band, programs whose probability falls inside it are passed to a
    person, and the accuracy is over the rest (``coverage`` is that rest's share)."""

    n: int
    accuracy: Estimate
    roc_auc: float
    """nan when the outcomes are all one class (no ranking to measure)."""
    brier: float
    false_block_rate: Estimate
    missed_failure_rate: Estimate
    coverage: float
    decided_accuracy: Estimate


def prediction_metrics(p_success: Sequence[float], succeeded: Sequence[bool], threshold: float = 0.5,
                       abstain: tuple[float, float] | None = None) -> PredictionMetrics:
    """The metrics of a success predictor; ``abstain`` = ``(low, high)``: probabilities in ``[low, high)``
    go to a person."""
    from sklearn.metrics import brier_score_loss, roc_auc_score

    p = np.asarray(p_success, dtype=float)
    y = np.asarray(succeeded, dtype=bool)
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"{p.size} probabilities for {y.size} outcomes: need the same, non-zero, number")
    if np.any((p < 0) | (p > 1) | np.isnan(p)):
        raise ValueError("probabilities must lie in [0, 1]")
    passed = p >= threshold
    correct = passed == y
    auc = float(roc_auc_score(y, p)) if 0 < y.sum() < y.size else math.nan
    decided = np.ones_like(y) if abstain is None else ~((p >= abstain[0]) & (p < abstain[1]))
    return PredictionMetrics(
        n=int(y.size), accuracy=wilson(int(correct.sum()), int(y.size)), roc_auc=auc,
        brier=float(brier_score_loss(y, p)),
        false_block_rate=wilson(int((~passed & y).sum()), int(y.sum())),
        missed_failure_rate=wilson(int((passed & ~y).sum()), int((~y).sum())),
        coverage=float(decided.mean()),
        decided_accuracy=wilson(int((correct & decided).sum()), int(decided.sum())))


def calibration(p_success: Sequence[float], succeeded: Sequence[bool], bins: int = 10
                ) -> list[tuple[float, float, int]]:
    """Reliability curve: for each non-empty bin of equal width, ``(mean predicted, observed rate, count)``."""
    p = np.asarray(p_success, dtype=float)
    y = np.asarray(succeeded, dtype=float)
    index = np.minimum((p * bins).astype(int), bins - 1)
    return [(float(p[index == b].mean()), float(y[index == b].mean()), int((index == b).sum()))
            for b in range(bins) if np.any(index == b)]


def abstain_curve(p_success: Sequence[float], succeeded: Sequence[bool], threshold: float = 0.5,
                  widths: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)) -> list[tuple[float, float, float]]:
    """``(band width, coverage, accuracy of the decided)`` for abstain bands centred on ``threshold``."""
    out = []
    for width in widths:
        band = (threshold - width / 2, threshold + width / 2) if width else None
        m = prediction_metrics(p_success, succeeded, threshold, band)
        out.append((float(width), m.coverage, m.decided_accuracy.value))
    return out


def choose_abstain_band(p_success: Sequence[float], succeeded: Sequence[bool], target_accuracy: float = 0.95,
                        threshold: float = 0.5, step: float = 0.05) -> tuple[float, float]:
    """The narrowest abstain band centred on ``threshold`` (widths in multiples of ``step``) outside which the
    predictions reach ``target_accuracy``; ``(0.0, 1.0)`` (everything but certainty goes to a person) when no
    band does."""
    if not 0.0 < target_accuracy <= 1.0:
        raise ValueError(f"target accuracy {target_accuracy}: must lie in (0, 1]")
    for k in range(int(round(1.0 / step)) + 1):
        half = k * step / 2
        band = (round(max(0.0, threshold - half), 6), round(min(1.0, threshold + half), 6))
        decided = prediction_metrics(p_success, succeeded, threshold, band).decided_accuracy
        if decided.n and decided.value >= target_accuracy:
            return band
    return 0.0, 1.0


# -- failure-mode detection ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModeMetrics:
    """Detection of one failure mode over a set of programs."""

    mode: str
    support: int
    """Programs that really have the mode."""
    precision: float
    recall: float
    f1: float


def mode_metrics(predicted: Sequence[set[str]], actual: Sequence[set[str]]) -> list[ModeMetrics]:
    """Per-mode precision, recall and F1 of the predicted failure-mode sets against the actual ones (a mode
    neither predicted nor present anywhere is not listed; an undefined ratio is 0, as scikit-learn's
    ``zero_division=0``)."""
    if len(predicted) != len(actual):
        raise ValueError(f"{len(predicted)} predictions for {len(actual)} programs")
    modes = sorted(set().union(*predicted, *actual)) if predicted else []
    out = []
    for mode in modes:
        tp = sum(mode in p and mode in a for p, a in zip(predicted, actual, strict=True))
        fp = sum(mode in p and mode not in a for p, a in zip(predicted, actual, strict=True))
        fn = sum(mode not in p and mode in a for p, a in zip(predicted, actual, strict=True))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.append(ModeMetrics(mode, tp + fn, precision, recall, f1))
    return out


def localisation_accuracy(predicted: Sequence[int | None], actual: Sequence[int | None], tolerance: int = 0
                          ) -> Estimate:
    """Share of failing programs (``actual`` not None) whose first failure was placed within ``tolerance``
    (lines, or layers) of the real one."""
    pairs = [(p, a) for p, a in zip(predicted, actual, strict=True) if a is not None]
    hits = sum(p is not None and abs(p - a) <= tolerance for p, a in pairs)
    return wilson(hits, len(pairs))

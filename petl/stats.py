"""Paired bootstrap confidence intervals on per-example test predictions (petl.report).

A run record keeps its test predictions (`record["test_predictions"]`: ids, predicted classes or
scores, gold labels). For runs scored on the same test examples, one set of resamples is drawn
once (fixed RNG seed): each draw resamples the test examples with replacement and, independently,
the training seeds. Every side of a comparison is scored on the *same* draws - the metric
recomputed on the resampled examples for each of its seeds, then averaged over the resampled seeds -
so differences and ratios are paired over examples and, where both sides ran the same seeds, over
seeds. A 95% interval is the 2.5 and 97.5 percentiles of the draws.

Metrics are recomputed per resample from confusion counts (accuracy, F1 of class 1, MCC) or
moments and ranks (Pearson, Spearman); on the unresampled examples they equal petl.metrics'
(tests/test_report_ci.py checks them against it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 4000
DEFAULT_SEED = 20240519
CONFIDENCE = 0.95
CLASSIFICATION_METRICS = ("accuracy", "f1", "matthews_correlation")
REGRESSION_METRICS = ("pearson", "spearmanr")


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), 0.0)


def confusion_matrices(labels: np.ndarray, predictions: np.ndarray, indices: np.ndarray, num_classes: int) -> np.ndarray:
    """[draws, true class, predicted class] counts of the examples `indices` [draws, n] picks."""
    codes = labels.astype(np.int64) * num_classes + predictions.astype(np.int64)
    draws = indices.shape[0]
    offsets = (np.arange(draws, dtype=np.int64) * num_classes * num_classes)[:, None]
    counts = np.bincount((codes[indices] + offsets).ravel(), minlength=draws * num_classes * num_classes)
    return counts.reshape(draws, num_classes, num_classes).astype(np.float64)


def classification_metric(confusion: np.ndarray, metric: str) -> np.ndarray:
    """accuracy, f1 (class 1 positive, as GLUE's MRPC/QQP), matthews_correlation (multiclass), or
    combined_score (mean of accuracy and F1) from confusion matrices [draws, K, K]; undefined values are 0 (as sklearn)."""
    total = confusion.sum((1, 2))
    correct = np.trace(confusion, axis1=1, axis2=2)
    if metric == "accuracy":
        return correct / total
    if metric == "f1":
        tp = confusion[:, 1, 1]
        return _safe_divide(2 * tp, 2 * tp + confusion[:, 0, 1] + confusion[:, 1, 0])
    if metric == "matthews_correlation":
        true_counts, predicted_counts = confusion.sum(2), confusion.sum(1)
        numerator = correct * total - (true_counts * predicted_counts).sum(1)
        denominator = np.sqrt((total**2 - (predicted_counts**2).sum(1)) * (total**2 - (true_counts**2).sum(1)))
        return _safe_divide(numerator, denominator)
    if metric == "combined_score":
        return (classification_metric(confusion, "accuracy") + classification_metric(confusion, "f1")) / 2
    raise ValueError(f"no resampled classification metric {metric!r}; allowed: {', '.join((*CLASSIFICATION_METRICS, 'combined_score'))}")


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(1, keepdims=True)
    y = y - y.mean(1, keepdims=True)
    return _safe_divide((x * y).sum(1), np.sqrt((x**2).sum(1) * (y**2).sum(1)))


def regression_metric(labels: np.ndarray, predictions: np.ndarray, indices: np.ndarray, metric: str) -> np.ndarray:
    """pearson, spearmanr or combined_score (their mean) of the resampled examples; 0 for a constant prediction (as petl.metrics)."""
    from scipy.stats import rankdata

    x, y = predictions[indices].astype(np.float64), labels[indices].astype(np.float64)
    if metric == "pearson":
        return _pearson_rows(x, y)
    if metric == "spearmanr":
        return _pearson_rows(rankdata(x, axis=1), rankdata(y, axis=1))
    if metric == "combined_score":
        pearson = regression_metric(labels, predictions, indices, "pearson")
        return (pearson + regression_metric(labels, predictions, indices, "spearmanr")) / 2
    raise ValueError(f"no resampled regression metric {metric!r}; allowed: {', '.join((*REGRESSION_METRICS, 'combined_score'))}")


@dataclass
class Estimate:
    """A statistic's value on the real test set (mean over seeds) and its bootstrap draws."""

    point: float
    draws: np.ndarray

    def interval(self) -> tuple[float, float]:
        finite = self.draws[np.isfinite(self.draws)]
        if not len(finite):
            return (float("nan"), float("nan"))
        tail = 100 * (1 - CONFIDENCE) / 2
        # no interpolation between draws: differences of accuracies take few values, and an interpolated
        # bound a hair above zero would claim a difference that the draws do not support
        low = np.percentile(finite, tail, method="lower")
        high = np.percentile(finite, 100 - tail, method="higher")
        return float(low), float(high)

    def excludes_zero(self) -> bool:
        low, high = self.interval()
        return bool(low > 0 or high < 0)

    def __sub__(self, other: Estimate) -> Estimate:
        return Estimate(self.point - other.point, self.draws - other.draws)

    def ratio(self, denominator: Estimate) -> Estimate:
        with np.errstate(divide="ignore", invalid="ignore"):
            point = self.point / denominator.point if denominator.point else float("nan")
            return Estimate(point, self.draws / denominator.draws)


class PairedBootstrap:
    """Draws shared by every side scored on one test set: example indices [resamples, n] and seed
    picks [resamples, seeds]. `estimate(predictions per seed)` scores one side on them."""

    def __init__(self, labels, metric: str, is_regression: bool, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                 max_seeds: int = 64, resample_seeds: bool = True):  # fmt: skip
        self.labels = np.asarray(labels, dtype=np.float64 if is_regression else np.int64)
        self.metric, self.is_regression = metric, is_regression
        self.num_classes = 1 if is_regression else int(self.labels.max(initial=1)) + 1
        rng = np.random.default_rng(seed)
        n = len(self.labels)
        self.indices = rng.integers(0, n, size=(resamples, n))
        # seed picks as uniforms: a side with S seeds takes floor(u * S), so sides with the same seeds pick the same ones
        self.seed_uniforms = rng.random((resamples, max_seeds)) if resample_seeds else None
        self.resample_seeds = resample_seeds

    def _score(self, predictions: np.ndarray, indices: np.ndarray) -> np.ndarray:
        if self.is_regression:
            return regression_metric(self.labels, np.asarray(predictions, dtype=np.float64), indices, self.metric)
        num_classes = max(self.num_classes, int(np.max(predictions, initial=0)) + 1)
        return classification_metric(confusion_matrices(self.labels, np.asarray(predictions), indices, num_classes), self.metric)

    def estimate(self, per_seed_predictions: list) -> Estimate:
        """The mean over seeds of the metric, on the real examples (point) and on every draw."""
        if not per_seed_predictions:
            raise ValueError("no predictions to score")
        everything = np.arange(len(self.labels))[None, :]
        point = float(np.mean([self._score(p, everything)[0] for p in per_seed_predictions]))
        scores = np.stack([self._score(p, self.indices) for p in per_seed_predictions])  # [seeds, draws]
        seeds = len(per_seed_predictions)
        if self.resample_seeds and seeds > 1:
            picks = np.floor(self.seed_uniforms[:, :seeds] * seeds).astype(np.int64)  # [draws, seeds]
            draws = scores[picks, np.arange(scores.shape[1])[:, None]].mean(1)
        else:
            draws = scores.mean(0)
        return Estimate(point, draws)


def t_interval(values: list[float]) -> tuple[float, float] | None:
    """95% Student-t interval of the mean over seeds (None for fewer than 2 values): the band where no
    per-example predictions were recorded."""
    if len(values) < 2:
        return None
    from scipy.stats import t

    mean = float(np.mean(values))
    half = float(t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
    return mean - half, mean + half

"""GLUE metrics with scikit-learn and scipy (no hub access)."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

# metric names per task; `combined_score` (their mean) is added when there are several
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",),
    "stsb": ("pearson", "spearmanr"),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
}
DEFAULT_METRICS = ("accuracy",)


def glue_metrics(task_name: str | None, predictions: np.ndarray, labels: np.ndarray, is_regression: bool) -> dict[str, float]:
    """`predictions` are logits (classification) or scores (regression)."""
    if is_regression:
        names = TASK_METRICS.get(task_name or "", ("pearson", "spearmanr", "mse"))
        preds = np.asarray(predictions, dtype=np.float64).reshape(-1)
    else:
        names = TASK_METRICS.get(task_name or "", DEFAULT_METRICS)
        preds = np.asarray(predictions).argmax(-1)
    labels = np.asarray(labels).reshape(-1)
    out: dict[str, float] = {}
    for name in names:
        if name == "accuracy":
            out[name] = float(accuracy_score(labels, preds))
        elif name == "f1":
            out[name] = float(f1_score(labels, preds))
        elif name == "matthews_correlation":
            out[name] = float(matthews_corrcoef(labels, preds))
        elif name == "pearson":
            out[name] = float(pearsonr(preds, labels)[0]) if np.std(preds) > 0 else 0.0
        elif name == "spearmanr":
            out[name] = float(spearmanr(preds, labels)[0]) if np.std(preds) > 0 else 0.0
        elif name == "mse":
            out[name] = float(np.mean((preds - labels) ** 2))
    scores = [v for k, v in out.items() if k != "mse"]
    if len(scores) > 1:
        out["combined_score"] = float(np.mean(scores))
    return out


def constant_baseline(
    task_name: str | None, train_labels: list, eval_labels: list, num_labels: int, is_regression: bool
) -> dict[str, float]:
    """Scores of a predictor that ignores its input: the training set's most frequent class (lowest id
    on a tie), or its mean label for regression (correlations 0). Any trained run must beat these."""
    eval_array = np.asarray(eval_labels)
    if is_regression:
        return glue_metrics(task_name, np.full(len(eval_array), float(np.mean(train_labels))), eval_array, True)
    majority = int(np.argmax(np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=num_labels)))
    return glue_metrics(task_name, np.eye(num_labels)[np.full(len(eval_array), majority)], eval_array, False)


def constant_baselines(task_name: str | None, plan, num_labels: int, is_regression: bool) -> dict[str, dict]:
    """{reported split: {"constant": metrics}} for a `petl.data.SplitPlan`: what every run must beat."""
    return {
        name: {"constant": constant_baseline(task_name, plan.train.labels, split.labels, num_labels, is_regression)}
        for name, split in plan.eval_sets.items()
        if name.startswith(plan.report_prefix) and split.labels is not None
    }


def default_selection_metric(task_name: str | None, is_regression: bool) -> str:
    """CoLA: MCC; STS-B: combined Pearson/Spearman; MRPC/QQP: F1; others: accuracy."""
    if task_name == "cola":
        return "matthews_correlation"
    if task_name == "stsb" or (task_name is None and is_regression):
        return "combined_score"
    if task_name in ("mrpc", "qqp"):
        return "f1"
    return "accuracy"

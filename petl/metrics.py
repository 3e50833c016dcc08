"""GLUE metrics with scikit-learn and scipy (no hub access)."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from petl.errors import PetlError
from petl.tasks import get_task

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


LOWER_IS_BETTER = ("loss", "mse")


def default_selection_metric(task_name: str | None, is_regression: bool) -> str:
    """The task's `selection_metric` (petl.tasks: CoLA MCC, STS-B combined Pearson/Spearman, MRPC/QQP
    F1, others accuracy); custom data: the combined correlation for regression, else accuracy."""
    if task_name is not None:
        return get_task(task_name).selection_metric
    return "combined_score" if is_regression else "accuracy"


def selection_metric(task_name: str | None, is_regression: bool, *chosen: str | None) -> str:
    """The validation metric that picks the best state (a run) or the best trial (a search): the first
    of `chosen` given (--search_metric, --metric_for_best_model), else the task's; without `eval_`."""
    given = next((c for c in chosen if c), None)
    return (given or default_selection_metric(task_name, is_regression)).removeprefix("eval_")


def checked_selection_metric(task_name: str | None, is_regression: bool, *chosen: tuple[str, str | None]) -> str:
    """`selection_metric` from the (flag, value) pairs in `chosen`, first given wins; one the task does not
    report is refused naming the flag that chose it (HF would fail on it only after training)."""
    metric = selection_metric(task_name, is_regression, *(value for _, value in chosen))
    reported = validation_metric_names(task_name, is_regression)
    if metric not in reported:
        flag, value = next((flag, value) for flag, value in chosen if value)  # a task's own metric is always reported
        raise PetlError(f"{flag} {value!r} is not reported for this task; allowed: {', '.join(reported)}")
    return metric


def greater_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def selection_direction(metric: str, given: bool | None) -> bool:
    """Whether a higher `metric` is better. Every metric has one direction, so --greater_is_better
    (`given`; None when not set) can only confirm it: one that contradicts it would select the worst
    state, and is refused."""
    natural = greater_is_better(metric)
    if given is not None and given != natural:
        raise PetlError(
            f"--greater_is_better {str(given).lower()} contradicts the selection metric {metric!r} "
            f"({'higher' if natural else 'lower'} is better); omit --greater_is_better (it follows the metric)"
        )
    return natural


def validation_metric_names(task_name: str | None, is_regression: bool | None = None) -> tuple[str, ...]:
    """Validation metrics a run reports: the task's (custom data: those of its label kind, or any when
    the kind is not known yet), their mean, and the loss."""
    if task_name is None:
        if is_regression is None:
            return ("accuracy", "pearson", "spearmanr", "mse", "combined_score", "loss")
        return ("pearson", "spearmanr", "mse", "combined_score", "loss") if is_regression else (*DEFAULT_METRICS, "loss")
    names = TASK_METRICS.get(task_name, DEFAULT_METRICS)
    return (*names, *(("combined_score",) if len(names) > 1 else ()), "loss")

"""GLUE task definitions: file columns, label sets, metrics and the default selection metric."""

from __future__ import annotations

from dataclasses import dataclass

from petl.errors import PetlError


@dataclass(frozen=True)
class GlueTask:
    name: str
    folder: str  # folder in the classic GLUE layout
    text_columns: tuple[str, ...]  # header names in the TSV files (CoLA: column indices as strings)
    label_column: str | None
    labels: tuple[str, ...] | None  # None: regression
    dev_splits: tuple[str, ...] = ("dev",)
    test_splits: tuple[str, ...] = ("test",)
    test_text_columns: tuple[str, ...] | None = None
    headerless: tuple[str, ...] = ()  # splits without a header row
    headerless_columns: tuple[str, ...] = ()  # column names for headerless splits
    hub_text_columns: tuple[str, ...] = ()
    selection_metric: str = "accuracy"  # picks the best state and trial (petl.metrics.default_selection_metric reads it)
    submission_name: str = ""

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)


GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(
        "cola",
        "CoLA",
        ("sentence",),
        "label",
        ("0", "1"),
        test_text_columns=("sentence",),
        headerless=("train", "dev"),
        headerless_columns=("source", "label", "original_label", "sentence"),
        hub_text_columns=("sentence",),
        selection_metric="matthews_correlation",
        submission_name="CoLA",
    ),
    "sst2": GlueTask(
        "sst2",
        "SST-2",
        ("sentence",),
        "label",
        ("0", "1"),
        hub_text_columns=("sentence",),
        submission_name="SST-2",
    ),
    "mrpc": GlueTask(
        "mrpc",
        "MRPC",
        ("#1 String", "#2 String"),
        "Quality",
        ("0", "1"),
        hub_text_columns=("sentence1", "sentence2"),
        selection_metric="f1",
        submission_name="MRPC",
    ),
    "stsb": GlueTask(
        "stsb",
        "STS-B",
        ("sentence1", "sentence2"),
        "score",
        None,
        hub_text_columns=("sentence1", "sentence2"),
        selection_metric="combined_score",
        submission_name="STS-B",
    ),
    "qqp": GlueTask(
        "qqp",
        "QQP",
        ("question1", "question2"),
        "is_duplicate",
        ("0", "1"),
        hub_text_columns=("question1", "question2"),
        selection_metric="f1",
        submission_name="QQP",
    ),
    "mnli": GlueTask(
        "mnli",
        "MNLI",
        ("sentence1", "sentence2"),
        "gold_label",
        ("entailment", "neutral", "contradiction"),
        dev_splits=("dev_matched", "dev_mismatched"),
        test_splits=("test_matched", "test_mismatched"),
        hub_text_columns=("premise", "hypothesis"),
        submission_name="MNLI",
    ),
    "qnli": GlueTask(
        "qnli",
        "QNLI",
        ("question", "sentence"),
        "label",
        ("entailment", "not_entailment"),
        hub_text_columns=("question", "sentence"),
        submission_name="QNLI",
    ),
    "rte": GlueTask(
        "rte",
        "RTE",
        ("sentence1", "sentence2"),
        "label",
        ("entailment", "not_entailment"),
        hub_text_columns=("sentence1", "sentence2"),
        submission_name="RTE",
    ),
    "wnli": GlueTask(
        "wnli",
        "WNLI",
        ("sentence1", "sentence2"),
        "label",
        ("0", "1"),
        hub_text_columns=("sentence1", "sentence2"),
        submission_name="WNLI",
    ),
}


def get_task(name: str) -> GlueTask:
    key = name.lower().replace("-", "")
    if key not in GLUE_TASKS:
        raise PetlError(f"--task_name {name!r} is unknown; allowed: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]

"""Corrupt labels are refused before the model loads: one `error:` line naming the file, line and
value, exit status 2, no results.json. Valid data (custom files, real GLUE STS-B and MRPC) still loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_glue_main

from petl.data import load_custom_files, load_glue_dir
from petl.errors import PetlError
from petl.tasks import get_task

TINY_RUN = ["--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--split_mode", "official", "--report_to", "none"]

WORDS = ["red", "blue", "green", "cold", "warm", "fast", "slow", "tall", "short", "new", "old", "big"]


def _csv(path: Path, labels: list[str], header: str = "text,label", tail: str = "") -> Path:
    """A CSV with one `word,label` row per label (line 2 is the first row), then `tail` as written."""
    path.write_text(header + "\n" + "".join(f"{WORDS[i % len(WORDS)]} {i},{y}\n" for i, y in enumerate(labels)) + tail)
    return path


def _jsonl(path: Path, labels: list) -> Path:
    path.write_text("".join(json.dumps({"text": f"{WORDS[i % len(WORDS)]} {i}", "label": y}) + "\n" for i, y in enumerate(labels)))
    return path


CLASSES = ["pos", "neg"] * 8
SCORES = [f"{i * 0.31:.2f}" for i in range(16)]


def _refused(args, tmp_path, capsys, *fragments, glue_dir=None):
    """Runs a real (tiny) training: on unfixed code it trains and writes results.json."""
    code, out = run_glue_main([*args, *TINY_RUN], tmp_path, glue_dir=glue_dir)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err[-3:]
    assert err and err[-1].startswith("error: "), err[-3:]
    for fragment in fragments:
        assert fragment in err[-1], err[-1]
    assert not (out / "results.json").exists()
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())  # nothing written
    return err[-1]


def _custom(train: Path, dev: Path, *extra: str) -> list[str]:
    return ["--train_file", str(train), "--validation_file", str(dev), "--text_columns", "text", *extra]


def test_csv_whose_last_row_is_cut_short(tmp_path, capsys):
    train = _csv(tmp_path / "train.csv", CLASSES, tail="truncated row")  # line 18: no comma, no label
    dev = _csv(tmp_path / "dev.csv", CLASSES[:6])
    line = _refused(_custom(train, dev), tmp_path, capsys, f"--train_file '{train}' line 18", "cut short", "'label'")
    assert "missing" in line


def test_jsonl_null_label(tmp_path, capsys):
    train = _jsonl(tmp_path / "train.jsonl", [*CLASSES[:4], None, *CLASSES[4:]])
    dev = _csv(tmp_path / "dev.csv", CLASSES[:6])
    _refused(_custom(train, dev), tmp_path, capsys, f"--train_file '{train}' line 5: label null is missing", "allowed:")


def test_empty_label_cell(tmp_path, capsys):
    train = _csv(tmp_path / "train.csv", [*CLASSES[:9], "", *CLASSES[9:]])
    dev = _csv(tmp_path / "dev.csv", CLASSES[:6])
    _refused(_custom(train, dev), tmp_path, capsys, f"--train_file '{train}' line 11: label '' is missing")


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_non_finite_regression_labels_in_custom_files(bad, tmp_path, capsys):
    train = _csv(tmp_path / "train.csv", [*SCORES[:3], bad, *SCORES[3:]])
    dev = _csv(tmp_path / "dev.csv", SCORES[:6])
    _refused(_custom(train, dev), tmp_path, capsys, f"--train_file '{train}' line 5: label '{bad}' is not a finite number")


def test_non_finite_regression_labels_with_stsb_task(tmp_path, capsys):
    train = _csv(tmp_path / "train.csv", SCORES)
    dev = _jsonl(tmp_path / "dev.jsonl", [0.5, 1.0, float("inf"), 2.0])  # json writes Infinity
    args = _custom(train, dev, "--task_name", "stsb")
    _refused(args, tmp_path, capsys, f"--validation_file '{dev}' line 3: label Infinity is not a finite number", "allowed: finite numbers")


def test_one_text_label_in_a_numeric_column_is_an_error_not_a_classification(tmp_path, capsys):
    train = _csv(tmp_path / "train.csv", [*SCORES[:12], "abc", *SCORES[12:]])
    dev = _csv(tmp_path / "dev.csv", SCORES[:6])
    _refused(_custom(train, dev), tmp_path, capsys, f"--train_file '{train}' line 14: label 'abc' is not a number", "16 of 17")


def test_unknown_label_of_a_given_task_names_the_allowed_values(tmp_path, capsys):
    train = _csv(tmp_path / "train.csv", ["0", "1"] * 8)
    dev = _csv(tmp_path / "dev.csv", ["0", "1", "1.5", "0"])  # was truncated to class 1
    args = _custom(train, dev, "--task_name", "mrpc")
    _refused(args, tmp_path, capsys, f"--validation_file '{dev}' line 4: label '1.5' is not in the label set", "allowed: 0, 1")


def test_labels_present_in_the_test_file_are_checked(tmp_path, capsys):
    train = _csv(tmp_path / "train.csv", CLASSES)
    dev = _csv(tmp_path / "dev.csv", CLASSES[:6])
    test = _csv(tmp_path / "test.csv", ["pos", "neg", "maybe"])
    args = [*_custom(train, dev), "--test_file", str(test), "--do_predict"]
    _refused(args, tmp_path, capsys, f"--test_file '{test}' line 4: label 'maybe' is not in the label set", "allowed: neg, pos")


def test_training_file_without_rows_or_labels_or_classes(tmp_path, capsys):
    dev = _csv(tmp_path / "dev.csv", CLASSES[:6])
    empty = _csv(tmp_path / "empty.csv", [])
    _refused(_custom(empty, dev), tmp_path, capsys, f"--train_file '{empty}' has no data rows")
    unlabeled = tmp_path / "unlabeled.csv"
    unlabeled.write_text("text\n" + "".join(f"{w}\n" for w in WORDS))
    _refused(_custom(unlabeled, dev, "--task_name", "sst2"), tmp_path, capsys, f"--train_file '{unlabeled}' has no label column 'label'")
    one_class = _csv(tmp_path / "one.csv", ["pos"] * 16)
    _refused(_custom(one_class, dev), tmp_path, capsys, f"--train_file '{one_class}'", "'pos'", "at least two")


def test_glue_dir_row_cut_short_or_not_finite(glue_dir, tmp_path, capsys):
    """A copy of STS-B whose training file ends in a truncated row, then one with a `nan` score."""
    bad_dir = tmp_path / "glue"
    (bad_dir / "STS-B").mkdir(parents=True)
    shutil.copy(glue_dir / "STS-B" / "dev.tsv", bad_dir / "STS-B" / "dev.tsv")
    lines = (glue_dir / "STS-B" / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)[:41]
    train = bad_dir / "STS-B" / "train.tsv"
    train.write_text("".join(lines) + lines[-1].rsplit("\t", 1)[0] + "\n", encoding="utf-8")  # line 42 lost its score
    _refused(["--task_name", "stsb"], tmp_path, capsys, f"'{train}' line 42", "cut short", "'score'", glue_dir=bad_dir)
    train.write_text("".join(lines) + lines[-1].rsplit("\t", 1)[0] + "\tnan\n", encoding="utf-8")
    _refused(["--task_name", "stsb"], tmp_path, capsys, f"'{train}' line 42: label 'nan' is not a finite number", glue_dir=bad_dir)


def test_json_records_and_csv_rows_of_the_wrong_shape_name_their_line(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[\n  {"text": "a", "label": "x"},\n  {"text": "b", "label": "y"},\n  {"text": "c",\n   "label": null}\n]\n')
    with pytest.raises(PetlError, match=r"train.json' line 4: label null is missing"):
        load_custom_files({"train": str(path)}, ["text"], "label", None)
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": "y"}\n[3]\n')
    with pytest.raises(PetlError, match=r"train.jsonl' line 4: a record is \[3\]; allowed: a JSON object"):
        load_custom_files({"train": str(path)}, ["text"], "label", None)
    path = tmp_path / "train.csv"
    path.write_text('text,label\n"two\nlines",x\nb,y\nc, d,x\n')  # an unquoted comma shifts the label
    with pytest.raises(PetlError, match=r"train.csv' line 5 has 3 fields, more than the header's 2"):
        load_custom_files({"train": str(path)}, ["text"], "label", None)


def test_label_space_rule_for_custom_files(tmp_path):
    """No task: whole numbers are classes (sorted by value), decimals mean regression, text is classes."""
    whole = _csv(tmp_path / "whole.csv", ["10", "2", "2.0", "-1"])
    raw, labels = load_custom_files({"train": str(whole)}, ["text"], "label", None)
    assert labels.names == ["-1", "2", "10"] and raw["train"].labels == [2, 1, 1, 0]
    decimals = _jsonl(tmp_path / "dec.jsonl", [1, 2.5, "3"])
    raw, labels = load_custom_files({"train": str(decimals)}, ["text"], "label", None)
    assert labels.is_regression and raw["train"].labels == [1.0, 2.5, 3.0]
    mostly_text = _csv(tmp_path / "mostly_text.csv", ["pos", "neg", "pos", "1", "neg"])  # was a third class '1'
    with pytest.raises(PetlError, match=r"line 5: label '1' is a number, but 4 of 5 labels are not; allowed: numbers only"):
        load_custom_files({"train": str(mostly_text)}, ["text"], "label", None)
    unlabeled_test = _csv(tmp_path / "test.csv", ["", ""])  # an empty label column in a test file: unlabeled
    raw, _ = load_custom_files({"train": str(whole), "test": str(unlabeled_test)}, ["text"], "label", None)
    assert raw["test"].labels is None


def test_real_glue_stsb_and_mrpc_pass_validation(glue_dir):
    for name, sizes in {"stsb": (5749, 1500, 1379), "mrpc": (3668, 408, 1725)}.items():
        raw = load_glue_dir(glue_dir, get_task(name), need_test=True)
        assert (len(raw["train"]), len(raw["dev"]), len(raw["test"])) == sizes
        assert raw["test"].labels is None and len(raw["train"].labels) == sizes[0]


@pytest.mark.parametrize("kind", ["classes", "regression"])
def test_valid_custom_files_still_train(kind, tmp_path, capsys):
    labels = CLASSES if kind == "classes" else SCORES
    train = _jsonl(tmp_path / "train.jsonl", labels if kind == "classes" else [float(y) for y in labels])
    dev = _csv(tmp_path / "dev.csv", labels[:6])
    test = tmp_path / "test.csv"
    test.write_text("text\n" + "".join(f"{w}\n" for w in WORDS[:4]))  # test files may have no labels
    code, out = run_glue_main([*_custom(train, dev), "--test_file", str(test), "--do_predict", *TINY_RUN], tmp_path)
    assert code == 0, capsys.readouterr().err.strip().splitlines()[-3:]
    record = json.loads((out / "results.json").read_text())
    assert record["validation_metrics"]
    assert ("pearson" in record["validation_metrics"]) == (kind == "regression"), record["validation_metrics"]
    assert (out / "predictions").is_dir()

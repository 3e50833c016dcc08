import numpy as np
import pytest

from petl.metrics import constant_baseline, default_selection_metric, glue_metrics


def test_mrpc_accuracy_and_f1_by_hand():
    labels = np.array([1, 1, 0, 0, 1])
    logits = np.array([[0, 1], [1, 0], [1, 0], [0, 1], [0, 1]], dtype=float)  # preds 1,0,0,1,1
    m = glue_metrics("mrpc", logits, labels, False)
    assert m["accuracy"] == pytest.approx(3 / 5)
    # tp=2 fp=1 fn=1 -> precision 2/3 recall 2/3 -> f1 2/3
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["combined_score"] == pytest.approx((3 / 5 + 2 / 3) / 2)


def test_cola_mcc_by_hand():
    labels = np.array([1, 1, 0, 0])
    preds = np.array([[0, 1], [0, 1], [0, 1], [1, 0]], dtype=float)  # tp=2 fp=1 tn=1 fn=0
    mcc = (2 * 1 - 1 * 0) / np.sqrt((2 + 1) * (2 + 0) * (1 + 1) * (1 + 0))
    assert glue_metrics("cola", preds, labels, False)["matthews_correlation"] == pytest.approx(mcc)


def test_stsb_pearson_spearman():
    labels = np.array([0.0, 1.0, 2.0, 3.0])
    preds = np.array([0.0, 2.0, 4.0, 7.0])
    m = glue_metrics("stsb", preds, labels, True)
    assert m["spearmanr"] == pytest.approx(1.0)
    assert m["pearson"] == pytest.approx(np.corrcoef(preds, labels)[0, 1])
    assert m["combined_score"] == pytest.approx((m["pearson"] + 1.0) / 2)


def test_default_selection_metrics():
    assert default_selection_metric("cola", False) == "matthews_correlation"
    assert default_selection_metric("stsb", True) == "combined_score"
    assert default_selection_metric("mrpc", False) == "f1"
    assert default_selection_metric("rte", False) == "accuracy"


def test_constant_baseline_predicts_the_training_majority_or_mean():
    # training majority is class 2 although the evaluation set's majority is class 0
    m = constant_baseline("rte", [2, 2, 0, 1, 2], [0, 0, 0, 2], 3, False)
    assert m == {"accuracy": pytest.approx(1 / 4)}
    mrpc = constant_baseline("mrpc", [1, 1, 0], [1, 0, 1, 1], 2, False)
    assert mrpc["accuracy"] == pytest.approx(3 / 4) and mrpc["f1"] == pytest.approx(2 * 0.75 / 1.75)
    assert constant_baseline("mrpc", [0, 1], [1, 1], 2, False)["accuracy"] == 0.0  # a tie goes to the lowest id
    stsb = constant_baseline("stsb", [1.0, 3.0], [0.0, 5.0, 2.0], 1, True)
    assert stsb["pearson"] == 0.0 and stsb["spearmanr"] == 0.0

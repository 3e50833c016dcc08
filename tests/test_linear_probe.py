"""The linear probe: L-BFGS logistic / closed-form ridge fits equal scikit-learn's, the L2 strength is the
validation-best, the features are the backbone's pooled output, and a run records it like any other."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from petl.methods.linear_probe import L2_STRENGTHS, choose_strength, fit_logistic, fit_ridge


def test_logistic_and_ridge_fits_equal_scikit_learn():
    from sklearn.linear_model import LogisticRegression, Ridge

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6))
    y = (x[:, :3] @ rng.normal(size=(3, 3))).argmax(1)
    l2 = 0.05
    weight, bias = fit_logistic(x, y, 3, l2)
    # scikit-learn: C * sum of cross-entropies + |W|^2 / 2 = n C (mean + |W|^2 / (2 n C)), so C = 1 / (n l2)
    oracle = LogisticRegression(C=1 / (len(x) * l2), tol=1e-10, max_iter=10000).fit(x, y)
    logits, expected = x @ weight.numpy() + bias.numpy(), oracle.decision_function(x)
    # softmax logits are defined up to a constant per example
    assert np.allclose(logits - logits.mean(1, keepdims=True), expected - expected.mean(1, keepdims=True), atol=1e-4)
    targets = x @ rng.normal(size=6) + 0.3 * rng.normal(size=200)
    centred = x - x.mean(0)
    weight, bias = fit_ridge(centred, targets, l2)
    ridge = Ridge(alpha=len(x) * l2).fit(centred, targets)  # mean squared error + l2 |w|^2 = (sum + n l2 |w|^2) / n
    assert np.allclose(weight.numpy().ravel(), ridge.coef_, atol=1e-8) and bias.item() == pytest.approx(ridge.intercept_)


def test_the_chosen_strength_is_the_validation_best_and_not_merely_the_weakest():
    # 40 training examples, 60 features of which one matters: a weakly regularised fit overfits
    rng = np.random.default_rng(3)

    def sample(n):
        x = rng.normal(size=(n, 60))
        return x, (x[:, 0] + 0.8 * rng.normal(size=n) > 0).astype(int)

    train, validation = sample(40), sample(400)

    def accuracy(outputs, gold):
        return float((outputs.argmax(1) == gold).mean())

    chosen = choose_strength(train, validation, 2, False, accuracy, True)
    # the oracle: each strength fitted on its own (no warm start), scored on validation
    centre, scale = train[0].mean(0), train[0].std(0)
    scores = {}
    for l2 in L2_STRENGTHS:
        weight, bias = fit_logistic((train[0] - centre) / scale, train[1], 2, l2)
        scores[l2] = accuracy((validation[0] - centre) / scale @ weight.numpy() + bias.numpy(), validation[1])
    assert chosen["scores"] == pytest.approx(scores, abs=0.01)
    best = max(scores.values())
    assert chosen["validation_score"] == best and scores[chosen["l2"]] == best
    assert chosen["l2"] != min(L2_STRENGTHS) and scores[min(L2_STRENGTHS)] < best
    # the folded weights act on raw features as the fitted ones on standardised features
    folded = validation[0] @ chosen["weight"].numpy() + chosen["bias"].numpy()
    assert accuracy(folded, validation[1]) == best


def test_the_probe_reads_the_frozen_backbones_pooled_output(minilm_path):
    from transformers import DataCollatorWithPadding, TrainingArguments

    from petl.core import apply_petl, trainable_summary
    from petl.data import TextSplit, tokenize_split
    from petl.methods.linear_probe import pooled_features
    from petl.models import load_model, load_tokenizer, pool_hidden
    from petl.training import PetlTrainer

    model = load_model(minilm_path, 2, "avg", 2, seed=1)
    apply_petl(model, "linear-probe")
    summary = trainable_summary(model)
    assert summary["trainable_parameters"] == 384 * 2 + 2 and summary["trainable_parameters_without_head"] == 0
    tokenizer = load_tokenizer(minilm_path)
    texts = ["a short one", "a somewhat longer sentence with more words in it", "three", "the fourth example here"]
    dataset = tokenize_split(TextSplit(texts, None, [0, 1, 0, 1]), tokenizer, 32, False, False)
    args = TrainingArguments(output_dir="unused", per_device_eval_batch_size=3, report_to=[], use_cpu=True)
    trainer = PetlTrainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
    features = pooled_features(model, trainer, dataset)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        hidden = model.backbone(**batch).last_hidden_state
    expected = pool_hidden(hidden, batch["attention_mask"], "avg").double().numpy()
    assert features.shape == (4, 384) and np.allclose(features, expected, atol=1e-5)


def test_a_linear_probe_run_beats_the_majority_class_and_records_its_choice(tmp_path, glue_dir):
    from conftest import run_glue_main

    args = ["--task_name", "sst2", "--split_mode", "heldout", "--method", "linear-probe", "--pooler_type", "avg",
            "--max_train_samples", "400", "--max_eval_samples", "200", "--cache_frozen_layers", "true"]  # fmt: skip
    code, out = run_glue_main(args, tmp_path, glue_dir=glue_dir)
    assert code == 0
    record = json.loads((out / "results.json").read_text())
    probe = record["linear_probe"]
    scores = {float(k): v for k, v in probe["validation_scores"].items()}
    assert probe["l2"] in L2_STRENGTHS and scores[probe["l2"]] == max(scores.values())
    # the installed head reproduces the fit's validation score: the standardisation is folded in correctly
    assert record["validation_metrics"]["accuracy"] == pytest.approx(probe["validation_score"], abs=1e-9)
    assert record["best_validation_score"] == probe["validation_score"]
    constant = record["baselines"]["test"]["constant"]["accuracy"]
    assert record["test_metrics"]["accuracy"] > constant + 0.1
    assert record["trainable_parameters"] == 384 * 2 + 2 and record["frozen_layer_cache"] is not None
    assert len(record["test_predictions"]["values"]) == 200

"""The study's report: choices on validation only, paired bootstrap CIs with the decision rule, derived
rows with CIs or n/a, and run records that carry their per-example test predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from petl.errors import PetlError
from petl.metrics import glue_metrics
from petl.report import NO_CI, NOT_SEPARABLE, TaskStudy, build_arms, comparison_table, derived_cells, glue_table, write_report
from petl.stats import PairedBootstrap

LABELS = [int(v) for v in np.random.default_rng(0).integers(0, 2, 120)]
IDS = [str(i) for i in range(len(LABELS))]


def noisy(accuracy: float, seed: int) -> list[int]:
    """Predictions right on about `accuracy` of LABELS."""
    rng = np.random.default_rng(seed)
    return [y if rng.random() < accuracy else 1 - y for y in LABELS]


def rec(name: str, values: list[int] | None, validation: float, seed: int = 1, layer: int | None = None, method: str = "lora",
        setting: dict | None = None, test: float | None = None) -> dict:  # fmt: skip
    """A sweep record scored by accuracy; `values` = its test predictions on LABELS (None: an old record without them)."""
    accuracy = float(np.mean(np.array(values) == np.array(LABELS))) if values is not None else test
    record = {
        "cell_id": f"{name}/{layer}/{json.dumps(setting)}/{seed}", "task": "mrpc", "method_name": name, "method": method,
        "layer": layer, "seed": seed, "setting": setting or {}, "selection_metric": "accuracy", "model": {"name_or_path": "tiny"},
        "validation_metrics": {"accuracy": validation}, "reported_metrics": {"test": {"accuracy": accuracy}},
        "split": {"split_mode": "heldout", "sizes": {"train": 100}},
    }  # fmt: skip
    if values is not None:
        record["test_predictions"] = {"split": "test", "ids": IDS, "values": values, "labels": LABELS}
    return record


@pytest.mark.parametrize(
    ("task", "metric", "kind"),
    [("mrpc", "accuracy", 2), ("mrpc", "f1", 2), ("mrpc", "combined_score", 2), ("cola", "matthews_correlation", 2),
     ("mnli", "accuracy", 3), ("stsb", "pearson", 0), ("stsb", "spearmanr", 0), ("stsb", "combined_score", 0)],
)  # fmt: skip
def test_the_resampled_metric_on_the_real_examples_is_petl_metrics(task, metric, kind):
    rng = np.random.default_rng(1)
    if kind:
        labels, preds = rng.integers(0, kind, 300), rng.integers(0, kind, 300)
        preds[:150] = labels[:150]
        expected = glue_metrics(task, np.eye(kind)[preds], labels, False)[metric]
    else:
        labels = rng.integers(0, 6, 300) * 1.0  # ties, as STS-B's labels
        preds = labels + rng.normal(0, 2, 300)
        expected = glue_metrics(task, preds, labels, True)[metric]
    assert PairedBootstrap(labels, metric, not kind, resamples=200).estimate([preds]).point == pytest.approx(expected, abs=1e-12)


def test_identical_predictions_give_the_interval_zero_and_are_not_separable():
    values = [noisy(0.7, s) for s in (1, 2, 3)]
    records = [rec("lora", v, 0.7, s, layer=2) for s, v in zip((1, 2, 3), values, strict=True)]
    records += [rec("bitfit", v, 0.7, s, layer=2, method="bitfit") for s, v in zip((1, 2, 3), values, strict=True)]
    study = TaskStudy(records)
    lora, bitfit = study.layered()
    comparison = study.compare(lora, bitfit)
    assert comparison.difference == 0 and comparison.interval == (0.0, 0.0) and comparison.verdict == NOT_SEPARABLE


def test_a_method_right_where_the_other_is_wrong_is_separable_and_noise_is_not():
    right = [list(LABELS)] * 2
    wrong = [noisy(0.0, 1)] * 2
    records = [rec("lora", right[0], 0.9, 1, layer=1), rec("lora", right[1], 0.9, 2, layer=1)]
    records += [rec("raw", wrong[0], 0.5, 1, layer=1, method="head"), rec("raw", wrong[1], 0.5, 2, layer=1, method="head")]
    study = TaskStudy(records)
    lora = next(a for a in study.arms if a.name == "lora")
    comparison = study.compare(lora, study.probe_at(1))
    assert comparison.difference == pytest.approx(100) and comparison.interval[0] > 0 and comparison.verdict == "lora@1 better"
    # two runs that are each right on ~70% of the examples, at random: their difference is not claimed
    records = [rec("lora", noisy(0.7, 10 + s), 0.7, s, layer=1) for s in (1, 2, 3)]
    records += [rec("bitfit", noisy(0.7, 20 + s), 0.7, s, layer=1, method="bitfit") for s in (1, 2, 3)]
    study = TaskStudy(records)
    low, high = study.compare(*study.layered()).interval
    assert low < 0 < high and study.compare(*study.layered()).verdict == NOT_SEPARABLE


def test_layer_row_and_learning_rate_are_chosen_on_validation_not_on_test():
    good, bad = list(LABELS), noisy(0.5, 3)
    records = []
    for seed in (1, 2):
        # lora: layer 1 is best on validation, layer 2 on test
        records += [rec("lora", bad, 0.60, seed, layer=0), rec("lora", bad, 0.90, seed, layer=1), rec("lora", good, 0.70, seed, layer=2)]
        # ffn: on test better than lora's chosen layer, on validation worse
        records += [rec("ffn", good, 0.80, seed, layer=1, method="ffn")]
        # prefix at a learning-rate axis: 1e-3 best on validation, 1e-2 on test; 1e-2 ran on seed 1 only (a tuned sweep's way)
        records += [rec("prefix", bad, 0.85, seed, layer=1, method="prefix", setting={"learning_rate": 1e-3})]
    records += [rec("prefix", good, 0.50, 1, layer=1, method="prefix", setting={"learning_rate": 1e-2})]
    study = TaskStudy(records)
    assert study.best_layer("lora").layer == 1
    assert study.best_petl().label == "lora@1"
    prefix = next(a for a in study.arms if a.name == "prefix")
    assert prefix.chosen == {"learning_rate": 1e-3} and prefix.seeds == [1, 2] and prefix.choice_seeds == [1]
    assert prefix.setting == {}  # the learning rate is a candidate to choose from, not a study axis
    rows = {r[0]: r for r in glue_table(records, resamples=200)[1]}
    assert rows["lora"][1].startswith("**") and "@1" in rows["lora"][1] and not rows["ffn"][1].startswith("**")


def test_a_tuned_sweeps_choice_is_trusted_and_its_candidates_are_not_arms():
    candidates = [{"arguments": {"learning_rate": lr}, "validation_score": score} for lr, score in ((1e-3, 0.6), (1e-2, 0.5))]
    tune = {"chosen": {"learning_rate": 1e-3}, "candidates": candidates}
    final = {**rec("lora", noisy(0.7, 1), 0.6, 1, layer=1), "tune_role": "final", "reused_from": "x", "tune": tune}
    candidate = {**rec("lora", noisy(0.9, 2), 0.5, 1, layer=1), "tune_role": "candidate", "cell_id": "c"}
    (arm,) = build_arms([final, candidate])
    assert arm.trusted and arm.chosen == {"learning_rate": 1e-3} and arm.records == [final] and len(arm.candidates) == 2


def test_derived_rows_carry_intervals_and_are_na_when_the_denominator_includes_zero():
    best, probe = list(LABELS), noisy(0.6, 5)
    records = [rec("lora", best, 0.9, s, layer=1) for s in (1, 2)] + [rec("raw", probe, 0.6, s, layer=1, method="head") for s in (1, 2)]
    clear = records + [rec("full", noisy(0.95, 6), 0.95, s, method="full") for s in (1, 2)]
    cells = derived_cells(TaskStudy(clear, resamples=500))
    assert cells["gap bridged"].endswith("%]") and "[" in cells["relative improvement"]
    assert "lora@1 better" in cells["best PETL - best probe"]
    # full fine-tuning no better than the probe (identical predictions): the gap has no denominator
    tied = records + [rec("full", probe, 0.95, s, method="full") for s in (1, 2)]
    cells = derived_cells(TaskStudy(tied, resamples=500))
    assert cells["gap bridged"].startswith("n/a: the CI of full - best probe includes 0")


def test_old_records_without_predictions_get_means_and_say_cis_are_unavailable(tmp_path):
    records = [rec("lora", None, 0.6 + 0.1 * layer, s, layer=layer, test=0.7 + 0.01 * s) for layer in (0, 1) for s in (1, 2)]
    records += [rec("raw", None, 0.6, s, layer=layer, method="head", test=0.6) for layer in (0, 1) for s in (1, 2)]
    path = tmp_path / "old.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    written = {p.name: p for p in write_report(str(path), str(tmp_path / "fig"))}
    assert {"layers_mrpc_tiny.png", "layers_mrpc_tiny.md", "comparisons_mrpc_tiny.md", "table_old_tiny.md"} <= set(written)
    assert NO_CI in written["comparisons_mrpc_tiny.md"].read_text()
    assert "t-interval over seeds" in written["layers_mrpc_tiny.md"].read_text()


def test_run_glue_records_carry_the_test_predictions_they_were_scored_on(tmp_path, glue_dir):
    from conftest import run_glue_main

    from petl.data import load_glue_dir, plan_splits
    from petl.tasks import get_task

    args = ["--task_name", "mrpc", "--split_mode", "heldout", "--method", "head", "--max_train_samples", "32",
            "--max_eval_samples", "48", "--num_train_epochs", "1", "--pooler_type", "avg"]  # fmt: skip
    code, out = run_glue_main(args, tmp_path, glue_dir=glue_dir)
    assert code == 0
    record = json.loads((out / "results.json").read_text())
    predictions = record["test_predictions"]
    task = get_task("mrpc")
    plan = plan_splits(load_glue_dir(str(glue_dir), task, False), task.dev_splits, task.test_splits, "heldout", 42, 32, None, 48)
    assert predictions["split"] == "test" and predictions["ids"] == [str(i) for i in plan.eval_sets["test"].ids]
    assert predictions["labels"] == plan.eval_sets["test"].labels
    recomputed = glue_metrics("mrpc", np.eye(2)[predictions["values"]], np.array(predictions["labels"]), False)
    for name in ("accuracy", "f1"):
        assert recomputed[name] == pytest.approx(record["test_metrics"][name], abs=1e-12)


def test_runs_still_improving_at_their_last_epoch_are_listed():
    from petl.report import comparison_table, ended_at_best

    history = [{"epoch": 1.0}, {"epoch": 2.0}, {"epoch": 3.0}]
    assert ended_at_best({"evaluation_history": history, "best_epoch": 3.0}) is True
    assert ended_at_best({"evaluation_history": history, "best_epoch": 2.0}) is False
    assert ended_at_best({"linear_probe": {}, "evaluation_history": [{"l2": 1.0}]}) is None
    records = [{**rec("full", list(LABELS), 0.9, s, method="full"), "evaluation_history": history, "best_epoch": 3.0 - (s == 2)}
               for s in (1, 2)]  # fmt: skip
    assert "| full | 1 of 2 |" in "\n".join(comparison_table(TaskStudy(records, resamples=200)))


def test_a_metric_that_is_the_tasks_own_writes_no_duplicate_files(tmp_path):
    records = [rec("lora", noisy(0.7, s), 0.7, s, layer=layer) for layer in (0, 1) for s in (1, 2)]
    path = tmp_path / "acc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert {p.name for p in write_report(str(path), str(tmp_path / "fig"), resamples=200)} >= {"layers_mrpc_tiny.png"}
    assert write_report(str(path), str(tmp_path / "fig"), metric="accuracy", resamples=200) == []  # accuracy is this task's metric


def test_a_choice_at_the_edge_of_its_candidate_grid_is_flagged():
    """A learning rate chosen at the top or bottom of its grid may be under-tuned: the report says so."""
    from petl.report import grid_edge

    grid = ['{"learning_rate": 0.001}', '{"learning_rate": 0.003}', '{"learning_rate": 0.01}']
    assert grid_edge({"learning_rate": 0.01}, grid) == "edge: highest learning_rate"
    assert grid_edge({"learning_rate": 0.001}, grid) == "edge: lowest learning_rate"
    assert grid_edge({"learning_rate": 0.003}, grid) is None
    assert grid_edge({"learning_rate": 0.01}, grid[1:]) is None  # two values: no inside to miss
    assert grid_edge({}, grid) is None


def test_a_bound_at_zero_claims_nothing():
    """2.5% of the draws at exactly zero: the lower bound is zero (no interpolation towards the next draw),
    and a bound shown as +0.0 is no difference in the report's verdict either."""
    import numpy as np

    from petl.report import NOT_SEPARABLE, Comparison
    from petl.stats import Estimate

    draws = np.array([0.0] * 25 + [0.49] * 975)
    estimate = Estimate(0.49, draws)
    assert estimate.interval()[0] == 0.0 and not estimate.excludes_zero()
    assert Comparison("a", "b", 4.4, (0.02, 8.8), "1").verdict == NOT_SEPARABLE
    assert Comparison("a", "b", 4.4, (0.06, 8.8), "1").verdict == "a better"
    # an end within 0.2 of zero is marked: another bootstrap seed may flip the verdict (both ends at zero: no difference)
    assert Comparison("a", "b", 4.4, (0.02, 8.8), "1").cells()[3] == "not separable at this budget (borderline)"
    assert Comparison("a", "b", 4.4, (0.15, 8.8), "1").cells()[3] == "a better (borderline)"
    assert Comparison("a", "b", 4.4, (0.25, 8.8), "1").cells()[3] == "a better"
    assert Comparison("a", "b", 0.0, (0.0, 0.0), "1").cells()[3] == "not separable at this budget"


def test_each_arm_is_compared_with_the_constant_predictor_on_the_same_draws():
    """The dynamic range: an arm that predicts the majority class everywhere is exactly the constant
    predictor (difference 0, interval [0, 0]); a good arm is separable from it."""
    majority = int(np.bincount(LABELS).argmax())
    constant = 100 * float(np.mean(np.array(LABELS) == majority))
    baselines = {"test": {"constant": {"accuracy": constant / 100}}}
    flat = [rec("lora", [majority] * len(LABELS), 0.6, s, layer=1) for s in (1, 2)]
    good = [rec("ffn", noisy(0.95, s), 0.9, s, layer=1, method="ffn") for s in (1, 2)]
    for r in [*flat, *good]:
        r["baselines"] = baselines
    study = TaskStudy([*flat, *good], resamples=500)
    arms = {a.name: a for a in study.arms}
    same = study.constant_comparison(arms["lora"])
    assert same.difference == pytest.approx(0.0) and same.interval == (0.0, 0.0) and same.verdict == NOT_SEPARABLE
    better = study.constant_comparison(arms["ffn"])
    assert better.interval[0] > 0 and better.verdict.endswith("better") and better.right == "constant predictor"


def test_full_fine_tuning_records_that_counted_the_head_in_report_the_backbone():
    """Records written before the fix counted full fine-tuning's head as trained "without head"
    (head_parameters 0); the report's parameter column shows the backbone, as for new records."""
    from petl.report import trainable_without_head

    legacy = {**rec("full", noisy(0.8, 1), 0.8, method="full"), "trainable_parameters_without_head": 22_713_986,
              "head_parameters": 0, "backbone_parameters": 22_565_376}  # fmt: skip
    fixed = {**legacy, "trainable_parameters_without_head": 22_565_376, "head_parameters": 148_610}
    lora = {**rec("lora", noisy(0.7, 1), 0.7), "trainable_parameters_without_head": 12_288, "head_parameters": 0,
            "backbone_parameters": 22_565_376}  # fmt: skip
    assert trainable_without_head(legacy) == trainable_without_head(fixed) == 22_565_376
    assert trainable_without_head(lora) == 12_288  # only full fine-tuning trains exactly its backbone


def test_a_named_reference_takes_full_fine_tunings_place(tmp_path):
    """Where full fine-tuning is out of reach (SmolLM2 on a CPU), --reference names the row compared in its
    place: every chosen row against it, and the best-PETL and gap-bridged rows use it."""
    records = [rec("lora", noisy(0.7, s), 0.7, s, layer=layer) for layer in (0, 1) for s in (1, 2)]
    records += [rec("raw", noisy(0.6, 10 + s), 0.6, s, layer=layer, method="head") for layer in (0, 1) for s in (1, 2)]
    records += [rec("lora-all", noisy(0.9, 20 + s), 0.9, s) for s in (1, 2)]
    path = tmp_path / "ref.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    written = write_report(str(path), str(tmp_path / "fig"), resamples=200, reference="lora-all")
    written = {p.name: p.read_text() for p in written if p.suffix == ".md"}
    assert "### Each method at its validation-chosen layer vs the reference (lora-all)" in written["comparisons_mrpc_tiny.md"]
    table = written["table_ref_tiny.md"]
    assert "| best PETL - lora-all | -" in table and "lora-all better" in table  # 0.7 vs 0.9: separable
    assert "| lora | **" in table and "| lora-all | 90.0" in table  # the reference is a row, never the best PETL row
    plain = {p.name: p.read_text() for p in write_report(str(path), str(tmp_path / "plain"), resamples=200) if p.suffix == ".md"}
    assert "| best PETL - full |  |" in plain["table_ref_tiny.md"]  # without it: no full fine-tuning, nothing compared
    with pytest.raises(PetlError, match=r"^--reference 'full' names no method of .*ref.jsonl; allowed: lora, lora-all, raw$"):
        write_report(str(path), str(tmp_path / "none"), reference="full")


def test_methods_are_also_compared_each_at_its_own_chosen_layer(tmp_path):
    """Finding 1 compares FFN methods with the others at the same layer AND at each one's chosen layer."""
    records = [rec("ffn", noisy(0.8 if layer == 1 else 0.6, 10 * layer + s), 0.8 if layer == 1 else 0.6, s, layer=layer, method="ffn")
               for layer in (0, 1) for s in (1, 2)]  # fmt: skip
    records += [rec("lora", noisy(0.7 if layer == 0 else 0.5, 50 + 10 * layer + s), 0.7 if layer == 0 else 0.5, s, layer=layer)
                for layer in (0, 1) for s in (1, 2)]  # fmt: skip
    path = tmp_path / "chosen.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    written = write_report(str(path), str(tmp_path / "fig"), resamples=200)
    text = next(p for p in written if p.name == "comparisons_mrpc_tiny.md").read_text()
    section = text.split("### Method vs method, each at its own validation-chosen layer")[1].split("###")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ffn")]
    assert len(rows) == 1 and rows[0].startswith("| ffn@1 (chosen) | lora@0 (chosen) | +"), rows


def test_cell_time_counts_a_reused_run_once():
    """A first-seed final that reuses its chosen candidate's run carries that run's cell_seconds: not twice."""
    from petl.report import compute_summary

    hardware = {"cpu_count": 2}
    candidate = {**rec("lora", None, 0.7, test=0.7), "cell_seconds": 1800.0, "hardware": hardware}
    final = {**candidate, "cell_id": "final", "reused_from": candidate["cell_id"]}
    other = {**candidate, "cell_id": "seed2", "seed": 2}
    assert compute_summary([candidate, final, other]) == "cell time recorded: 1.00 h on CPU (2 cores)"


def test_a_scale_up_compares_every_pair_of_petl_arms_at_its_layer(tmp_path):
    """Widths meet each other and the arms that spend parameters another way (two layers) at the same layer;
    probes are not in these pairs (they have their own section)."""
    records = [rec("width", noisy(0.6 + dim / 1000, 10 * dim + s), 0.7, s, layer=1, method="pfeiffer", setting={"adapter_dim": dim})
               for dim in (1, 64, 16) for s in (1, 2)]  # fmt: skip
    records += [rec("two-layers", noisy(0.75, 90 + s), 0.75, s, layer=1, method="pfeiffer") for s in (1, 2)]
    records += [rec("raw", noisy(0.6, 95 + s), 0.6, s, layer=1, method="head") for s in (1, 2)]
    path = tmp_path / "scale.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    written = write_report(str(path), str(tmp_path / "fig"), resamples=200)
    assert "comparisons_mrpc_tiny.md" not in {p.name for p in written}  # a layer study's file of the same task and model stays
    fair = next(p for p in written if p.name == "comparisons_scale_up_mrpc_tiny.md").read_text()
    fair = fair.split("### Each method at its validation-chosen layer vs the validation-chosen probe over all layers")[1].split("###")[0]
    assert "| two-layers@1 (chosen) | raw@1 (chosen) | +" in fair and "| width@1 adapter_dim=64 (chosen) | raw@1 (chosen) | +" in fair
    text = next(p for p in written if p.name == "comparisons_scale_up_mrpc_tiny.md").read_text()
    section = text.split("### Settings: every pair of PETL arms at a layer where a setting varies")[1].split("###")[0]
    pairs = [tuple(c.strip() for c in line.split("|")[1:3]) for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    assert pairs[1:] == [
        ("width@1 adapter_dim=1", "width@1 adapter_dim=16"),
        ("width@1 adapter_dim=1", "width@1 adapter_dim=64"),
        ("width@1 adapter_dim=1", "two-layers@1"),
        ("width@1 adapter_dim=16", "width@1 adapter_dim=64"),
        ("width@1 adapter_dim=16", "two-layers@1"),
        ("width@1 adapter_dim=64", "two-layers@1"),
    ], pairs  # numeric order


def test_seeds_that_predicted_identically_are_marked_in_the_tables(tmp_path):
    """The linear probe is a deterministic fit: its 3 "seeds" are one run, and the layer table says so."""
    same = noisy(0.7, 1)
    records = [rec("linear-probe", same, 0.7, s, layer=layer, method="linear-probe") for layer in (0, 1) for s in (1, 2, 3)]
    records += [rec("lora", noisy(0.7, 10 * layer + s), 0.7, s, layer=layer) for layer in (0, 1) for s in (1, 2, 3)]
    path = tmp_path / "probe.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    table = next(p for p in write_report(str(path), str(tmp_path / "fig"), resamples=200) if p.name == "layers_mrpc_tiny.md").read_text()
    probe_row = next(line for line in table.splitlines() if line.startswith("| linear-probe"))
    lora_row = next(line for line in table.splitlines() if line.startswith("| lora"))
    assert probe_row.count("(n=3, identical)") == 2 and "identical" not in lora_row and lora_row.count("(n=3)") == 2


def test_verdicts_that_rest_on_the_tuning_seed_are_listed_and_reused_choices_say_where_they_were_made():
    """The seed a tuned sweep chose on is also reported, and the chosen rate suits it best: the report shows that
    seed's lead over the others and every verdict that changes without it. A rate chosen at layer 2 (tune_layer)
    and reused at layer 1 says so in the hyperparameter table."""
    candidates = [{"cell_id": f"mrpc/lora/layer=2/tune.learning_rate={lr}/seed=1", "arguments": {"learning_rate": lr},
                   "validation_score": v} for lr, v in ((1e-3, 0.6), (1e-2, 0.7))]  # fmt: skip
    tune = {"chosen": {"learning_rate": 1e-2}, "chosen_cell_id": candidates[1]["cell_id"], "candidates": candidates}
    records = []
    for layer in (1, 2):
        for seed, accuracy in ((1, 0.97), (2, 0.5), (3, 0.5)):  # only the tuning seed learned
            records.append({**rec("lora", noisy(accuracy, 10 * layer + seed), 0.7, seed, layer=layer), "tune_role": "final", "tune": tune})
        records += [rec("linear-probe", noisy(0.75, 100 + 10 * layer + seed), 0.6, seed, layer=layer, method="linear-probe")
                    for seed in (1, 2, 3)]  # fmt: skip
    text = "\n".join(comparison_table(TaskStudy(records, resamples=500)))
    section = text.split("### Without the tuning seed")[1].split("###")[0]
    assert "Seed 1 chose every tuned hyperparameter" in section and "above them in 2 of 2" in section
    # lora@2 vs the probe: ahead with seed 1's 97%, behind on seeds 2 and 3 alone
    row = next(line for line in section.splitlines() if line.startswith("| lora@2 | linear-probe@2 |"))
    assert row.endswith("| linear-probe@2 better |") and "(seeds 2,3)" in row
    assert "| tuned sweep at layer 2 (tune.chosen), reused at layer 1 |" in text
    assert "| lora@2 | learning_rate=0.01 |" in text and "(seeds 1) | tuned sweep (tune.chosen) |" in text
    assert text.startswith("tiny, MRPC") and "; cell time recorded: 0.00 h on CPU." in text.splitlines()[0]  # the compute, stated

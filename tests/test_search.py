"""Hyperparameter search: mutated hyperparameters take effect on resume, spaces are validated, and a
small PBT search runs to completion through Ray Tune."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from transformers import TrainerCallback

import run_glue
from argument_classes import DataArguments, ModelArguments, PetlArguments, PetlTrainingArguments
from petl.errors import PetlError
from petl.search import load_space, validate_space

FAST = dict(model_name_or_path="minilm-l6", num_hidden_layers=2, pooler_type="avg")


class RecordLearningRates(TrainerCallback):
    def __init__(self):
        self.seen = []

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.seen.append((state.global_step, {g["group_name"]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups}))


def _args(tmp_path, glue_dir, **training):
    model = ModelArguments(**FAST)
    data = DataArguments(task_name="mrpc", glue_dir=str(glue_dir), max_train_samples=64)
    petl = PetlArguments(method="lora", lora_layers="1")
    defaults = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=16,
        disable_tqdm=True,
        report_to=[],
        seed=3,
        lr_scheduler_type="linear",
    )
    return model, data, petl, PetlTrainingArguments(**{**defaults, **training})


def test_resumed_run_uses_the_new_learning_rates_not_the_checkpointed_ones(tmp_path, glue_dir):
    """What PBT relies on: restore the donor's state, then train with the mutated values."""
    first = _args(tmp_path / "a", glue_dir, num_train_epochs=2, learning_rate=1e-3, head_lr=2e-3, weight_decay=0.0, save_strategy="epoch")
    run_glue.run(*first, trial=True)
    checkpoint = tmp_path / "a" / "checkpoint-4"  # 64 examples / 16 = 4 steps per epoch; 2 epochs keep the last
    checkpoints = sorted(p.name for p in (tmp_path / "a").glob("checkpoint-*"))
    assert "checkpoint-4" in checkpoints or "checkpoint-8" in checkpoints, checkpoints
    checkpoint = tmp_path / "a" / checkpoints[0]
    step = int(checkpoint.name.split("-")[1])
    assert (checkpoint / "petl_weights.safetensors").is_file() and (checkpoint / "optimizer.pt").is_file()
    assert not any(p.name.startswith(("model.safetensors", "pytorch_model")) for p in checkpoint.iterdir())  # delta only
    second = _args(tmp_path / "b", glue_dir, num_train_epochs=2, learning_rate=5e-2, head_lr=7e-2, weight_decay=0.03)
    second[3].resume_from_checkpoint = str(checkpoint)
    recorder = RecordLearningRates()
    run_glue.run(*second, callbacks=[recorder], trial=True)
    first_step, lrs = recorder.seen[0]
    assert first_step == step
    total = 8
    factor = (total - step) / total  # linear decay, no warm-up
    assert lrs["petl"][0] == pytest.approx(5e-2 * factor, rel=1e-6)
    assert lrs["head"][0] == pytest.approx(7e-2 * factor, rel=1e-6)
    assert lrs["head"][1] == pytest.approx(0.03) and lrs["head/no_decay"][1] == 0.0


@pytest.mark.parametrize(
    "space,message",
    [
        ({"learning_rte": {"loguniform": [1e-5, 1e-3]}}, "'learning_rte' is not a run_glue.py argument"),
        ({"learning_rate": {"lognormal": [1e-5, 1e-3]}}, "give exactly one of loguniform, uniform, choice, randint"),
        ({"learning_rate": {"loguniform": [1e-3, 1e-5]}}, "needs [low, high] with low < high"),
        ({"learning_rate": {"loguniform": [0, 1e-3]}}, "loguniform needs low > 0"),
        ({"adapter_dim": {"choice": []}}, "choice needs a list of values"),
        ({"per_device_train_batch_size": {"choice": [8, 16]}}, "is not a run_glue.py argument that can be searched"),
        ({}, "non-empty mapping"),
    ],
)
def test_bad_search_spaces_get_one_clear_error(space, message):
    with pytest.raises(PetlError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_space(space, "space.yaml")


def test_space_files_yaml_json_and_unreadable(tmp_path):
    yaml_file = tmp_path / "s.yaml"
    yaml_file.write_text("learning_rate: {loguniform: [1.0e-4, 1.0e-2]}\nadapter_dim: {choice: [8, 16]}\n")
    assert load_space(str(yaml_file), ["adapter"])["adapter_dim"] == {"choice": [8, 16]}
    json_file = tmp_path / "s.json"
    json_file.write_text(json.dumps({"weight_decay": {"uniform": [0.0, 0.1]}}))
    assert list(load_space(str(json_file), ["lora"])) == ["weight_decay"]
    broken = tmp_path / "broken.yaml"
    broken.write_text("learning_rate: {loguniform: [1e-4,\n")
    with pytest.raises(PetlError, match="is not valid yaml"):
        load_space(str(broken), ["lora"])
    with pytest.raises(PetlError, match="does not exist"):
        load_space(str(tmp_path / "missing.yaml"), ["lora"])
    default = load_space(None, ["lora"])
    assert {"learning_rate", "head_lr", "lora_rank"} <= set(default)


def test_pbt_search_runs_to_completion_and_retrains_the_best(tmp_path, glue_dir, monkeypatch):
    import run_glue_hyper_search

    monkeypatch.setenv("PETL_SEARCH_KEY_FILE", str(tmp_path / "search.key"))  # the marker's key: not the user's ~/.config

    space = tmp_path / "space.json"
    space.write_text(json.dumps({"learning_rate": {"loguniform": [1e-4, 1e-2]}, "head_lr": {"choice": [1e-5, 3e-3]}}))
    argv = ["--task_name", "mrpc", "--glue_dir", str(glue_dir), "--model_name_or_path", "minilm-l6", "--num_hidden_layers", "2",
            "--pooler_type", "avg", "--method", "lora", "--lora_layers", "1", "--max_train_samples", "192",
            "--num_train_epochs", "3", "--per_device_train_batch_size", "16", "--search_trials", "2",
            "--cpus_per_trial", "1", "--search_space", str(space), "--output_dir", str(tmp_path / "search"),
            "--disable_tqdm", "true", "--keep_trials", "true"]  # fmt: skip
    # Ray's result files (result.json) reach the storage folder by an asynchronous sync and were once
    # found empty after fit() (a trial's best score came back None): the summary must not read them
    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis

    monkeypatch.setattr(ExperimentAnalysis, "_fetch_trial_dataframe", lambda self, trial: pd.DataFrame())
    staged_before = set(Path("/tmp/ray").glob("session_*/artifacts/*/search"))
    summary = run_glue_hyper_search.run_search(argv)
    assert summary["failed_trials"] == 0 and len(summary["trials"]) == 2
    from petl.trial_log import read_trial_log

    history, latest = read_trial_log(tmp_path / "search" / "ray" / "search")  # written by the driver
    assert all(t["best_objective"] == max(history[f"trial_{t['trial_id']}"]) for t in summary["trials"]), (history, summary["trials"])
    # every trial scored and ended (how many scores varies: a PBT exploit may jump a trial to its donor's later epoch)
    assert len(history) == 2 and all(history.values()) and set(latest.values()) == {"end"}, (history, latest)
    # nor does Ray Tune's staging copy of the trials stay in the system temp folder
    assert set(Path("/tmp/ray").glob("session_*/artifacts/*/search")) == staged_before
    scores = [t["best_objective"] for t in summary["trials"]]
    assert summary["best_validation_score"] == max(scores) and summary["metric"] == "f1"
    # the chosen configuration, retrained with a fresh seed, is at least as good as the worst trial
    final = summary["final_retrain"]
    assert final["validation_metrics"]["f1"] >= min(scores) - 0.02, (final, scores)
    assert final["test_metrics"]["f1"] > 0 and (tmp_path / "search" / "best" / "results.json").is_file()
    assert json.loads((tmp_path / "search" / "search_results.json").read_text())["best_config"] == summary["best_config"]
    # trial folders carry Ray's trial id, not sampled values; the folder is signed and may be resumed
    assert all(p.name.startswith("trial_") for p in (tmp_path / "search" / "ray" / "search").iterdir() if p.is_dir())
    # the trials trained in folders under the search's output_dir (--keep_trials kept them), never the system temp directory
    assert len(list((tmp_path / "search" / "trials").glob("trial_*"))) >= 2
    from petl.search import check_resumable

    check_resumable(tmp_path / "search")
    # without --keep_trials they go at the end; a finished search then has nothing to resume
    from petl.hyper_search import remove_trial_folders

    remove_trial_folders(tmp_path / "search")
    left = {p.name for p in (tmp_path / "search").iterdir()}
    assert {"best", "search_results.json"} <= left and not {"trials", "ray"} & left
    with pytest.raises(PetlError, match="finished .search_results.json. and its trial folders were removed; nothing to resume"):
        run_glue_hyper_search.run_search([*argv[:-2], "--resume", "true"])


def test_trial_values_take_the_declared_argument_types(tmp_path, glue_dir):
    """warmup_steps defaults to int 0 but a sampled 0.06 must stay a ratio, not become 0."""
    from run_glue_hyper_search import apply_config

    base = _args(tmp_path, glue_dir)
    model, data, petl, training = apply_config(base, {"warmup_steps": 0.06, "lora_rank": 16.0, "learning_rate": 3e-4})
    assert training.warmup_steps == 0.06 and petl.lora_rank == 16 and isinstance(petl.lora_rank, int)
    assert training.learning_rate == 3e-4 and base[3].learning_rate != 3e-4  # the base arguments are untouched
    with pytest.raises(PetlError, match="'lora_rnk', which no argument class has"):
        apply_config(base, {"lora_rnk": 4})


def test_local_ray_in_tests_is_on_the_loopback_address():
    """The tests' Ray nodes never bind the machine's network address (conftest sets the switch)."""
    from ray._private import ray_constants, services

    assert not ray_constants.ENABLE_RAY_CLUSTER
    assert services.get_node_ip_address() == "127.0.0.1"


def test_trial_log_keeps_scores_and_ends_across_a_torn_line_and_a_restart(tmp_path):
    """The driver's log of each trial: scores (NaN left out), starts and ends; a line cut short by a crash is
    skipped without swallowing the next; a trial is unfinished unless its latest start was followed by an end
    (a trial that failed, then was started again by --resume, must end again); a trial's best joins Ray's record."""
    from types import SimpleNamespace

    from petl.hyper_search import collect_trials
    from petl.trial_log import LOG_FILE, TrialLog, read_trial_log, unfinished_trials

    log = TrialLog("objective")
    a, b, c, d = (SimpleNamespace(path=str(tmp_path / f"trial_{n}"), trial_id=n) for n in "abcd")
    log.on_trial_start(0, [], a)
    log.on_trial_result(0, [], a, {"objective": float("nan"), "training_iteration": 1})
    log.on_trial_result(0, [], a, {"objective": 0.7, "training_iteration": 2})
    log.on_trial_result(0, [], a, {"eval_loss": 0.3})  # no objective: not a score
    with (tmp_path / LOG_FILE).open("a") as torn:
        torn.write('{"trial": "trial_a", "eve')  # a crash mid-write; the next line stands alone
    log.on_trial_complete(0, [], a)
    log.on_trial_start(0, [], b)
    log.on_trial_result(0, [], b, {"objective": 0.6})
    log.on_trial_error(0, [], b)
    log.on_trial_start(0, [], b)  # --resume runs the failed trial again ...
    log.on_trial_start(0, [], c)  # ... and c, interrupted; d never started
    history, latest = read_trial_log(tmp_path)
    assert history == {"trial_a": [0.7], "trial_b": [0.6]} and read_trial_log(tmp_path / "absent") == ({}, {})
    assert latest == {"trial_a": "end", "trial_b": "start", "trial_c": "start"}
    results = [SimpleNamespace(path=t.path) for t in (a, b, c, d)]
    assert unfinished_trials(results, latest) == ["trial_b", "trial_c", "trial_d"]
    frame_b = pd.DataFrame({"objective": [0.6, 0.65, float("nan")]})
    grid = [SimpleNamespace(path=a.path, metrics={"objective": 0.5}, metrics_dataframe=pd.DataFrame(), config={}, error=None),
            SimpleNamespace(path=b.path, metrics={"trial_id": "b"}, metrics_dataframe=frame_b, config={}, error=None),
            SimpleNamespace(path=c.path, metrics={}, metrics_dataframe=None, config={}, error=RuntimeError("x\ny"))]  # fmt: skip
    trials = collect_trials(grid, "max", history)
    assert [(t["trial_id"], t["best_objective"]) for t in trials] == [("a", 0.7), ("b", 0.65), ("c", None)] and trials[2]["error"] == "x"
    assert [t["best_objective"] for t in collect_trials(grid, "min", history)] == [0.7, 0.6, None]


def test_an_interrupted_search_chooses_and_writes_nothing_and_resumes(tmp_path, glue_dir, monkeypatch, capsys):
    """Ctrl+C ends Ray Tune's fit() early and without an error: the search must not choose among unfinished
    trials, retrain or write search_results.json (nor remove the trial folders --resume needs); it says so
    in one line, exits 130, and --resume finishes it."""
    from tune_interrupt import interrupting_tune_configs

    import run_glue_hyper_search

    monkeypatch.setenv("PETL_SEARCH_KEY_FILE", str(tmp_path / "search.key"))
    interrupting_tune_configs(monkeypatch)
    out = tmp_path / "search"
    argv = ["--task_name", "mrpc", "--glue_dir", str(glue_dir), "--model_name_or_path", "minilm-l6", "--num_hidden_layers", "2",
            "--pooler_type", "avg", "--method", "lora", "--lora_layers", "1", "--max_train_samples", "64", "--max_eval_samples", "64",
            "--num_train_epochs", "2", "--per_device_train_batch_size", "16", "--search_trials", "2", "--cpus_per_trial", "1",
            "--search_scheduler", "asha", "--output_dir", str(out), "--disable_tqdm", "true"]  # fmt: skip
    assert run_glue_hyper_search.main(argv) == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("interrupted: the search stopped before") and "--resume true" in lines[-1], lines[-3:]
    assert not (out / "search_results.json").exists() and not (out / "best").exists() and (out / "ray" / "search").is_dir()
    assert run_glue_hyper_search.main([*argv, "--resume", "true"]) == 0
    summary = json.loads((out / "search_results.json").read_text())
    assert len(summary["trials"]) == 2 and all(t["best_objective"] is not None for t in summary["trials"])

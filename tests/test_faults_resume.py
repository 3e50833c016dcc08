"""Exact resume: a run killed with SIGKILL after a checkpoint and resumed with --resume_from_checkpoint
ends as the uninterrupted run (metrics, best step and epoch, evaluation history, train_loss, and a
byte-identical delta); bad checkpoint arguments are one line and exit status 2."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, REPO, tiny_model

import run_glue
from petl.errors import PetlError
from petl.training import (
    BEST_STATE_FILE,
    RESUME_STATE_FILE,
    TRAINER_STATE_FILE,
    BestStateCallback,
    read_resume_state,
    resolve_resume_checkpoint,
)

# 64 examples, 4 steps an epoch, a checkpoint each epoch. Selected by validation loss: epoch 2 (step 8)
# is the best, epoch 3 is worse and early stopping (patience 1) ends the run there, at step 12.
RUN = [
    "--task_name", "mrpc", "--max_train_samples", "64", "--max_eval_samples", "64", "--per_device_train_batch_size", "16",
    "--num_train_epochs", "4", "--save_strategy", "epoch", "--early_stopping_patience", "1", "--metric_for_best_model", "loss",
]  # fmt: skip
PETL = ["--method", "lora", "--learning_rate", "5e-2"]
FULL = ["--method", "full", "--learning_rate", "1e-3"]
KILL_AT_STEP = 10  # two steps after checkpoint-8 was written: the work since is lost
# A real process running run_glue, killed by SIGKILL from inside the training loop (no cleanup runs).
KILLER = """
import os, signal, sys
import run_glue
from transformers import TrainerCallback
from petl.errors import exit_status

class KillAtStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == int(os.environ["KILL_AT_STEP"]):
            os.kill(os.getpid(), signal.SIGKILL)

sys.exit(exit_status(lambda: run_glue.run(*run_glue.parse_args(sys.argv[1:]), callbacks=[KillAtStep()])))
"""
VOLATILE = ("runtime", "samples_per_second", "steps_per_second")  # timings differ between any two runs
SAME_FIELDS = ("best_step", "best_epoch", "best_validation_score", "evaluation_history", "train_loss", "selection_metric")


def run_cli(out: Path, glue_dir: Path, *args: str, script: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "KILL_AT_STEP": str(KILL_AT_STEP)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-c", script] if script else [sys.executable, str(REPO / "run_glue.py")]
    argv = [*FAST, *RUN, "--glue_dir", str(glue_dir), "--output_dir", str(out), *args]
    return subprocess.run([*command, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def assert_same_run(straight: Path, resumed: Path) -> None:
    a, b = (json.loads((folder / "results.json").read_text()) for folder in (straight, resumed))
    for field in SAME_FIELDS:
        assert a[field] == b[field], (field, a[field], b[field])
    for split in ("validation_metrics", "test_metrics"):
        stable = [{k: v for k, v in rec[split].items() if k not in VOLATILE} for rec in (a, b)]
        assert stable[0] == stable[1], (split, stable)
    assert (straight / "petl_weights.safetensors").read_bytes() == (resumed / "petl_weights.safetensors").read_bytes()


def straight_run(tmp_path_factory, glue_dir: Path, method: list[str]) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("straight") / "run"
    proc = run_cli(out, glue_dir, *method)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "results.json").read_text())
    return out, record


@pytest.fixture(scope="module")
def straight_petl(tmp_path_factory, glue_dir):
    out, record = straight_run(tmp_path_factory, glue_dir, PETL)
    # the case the test is about: the best is not the last evaluation, and early stopping ended the run
    assert record["best_step"] == 8 and [h["step"] for h in record["evaluation_history"]] == [4, 8, 12], record["evaluation_history"]
    return out


def kill_then_resume(out: Path, glue_dir: Path, method: list[str]) -> subprocess.CompletedProcess:
    killed = run_cli(out, glue_dir, *method, script=KILLER)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (out / "results.json").exists()
    assert (out / "checkpoint-8" / TRAINER_STATE_FILE).is_file() and not (out / "checkpoint-12").exists()
    # the same command again, into the same folder (it holds no results.json), resuming the latest checkpoint
    resumed = run_cli(out, glue_dir, *method, "--resume_from_checkpoint", "true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from the latest checkpoint" in resumed.stderr and "checkpoint-8" in resumed.stderr
    return resumed


def test_killed_and_resumed_petl_run_ends_as_the_straight_run(straight_petl, tmp_path, glue_dir):
    kill_then_resume(tmp_path / "run", glue_dir, PETL)
    assert_same_run(straight_petl, tmp_path / "run")


def test_resume_from_the_checkpoint_where_early_stopping_ended_the_run(straight_petl, tmp_path, glue_dir, caplog):
    """Killed after the last checkpoint (e.g. during the test evaluation): resuming trains no
    further step and ends as the straight run. (In this process: no kill needed, imports are paid.)"""
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(straight_petl / "checkpoint-12", out / "checkpoint-12")
    argv = [*FAST, *RUN, *PETL, "--glue_dir", str(glue_dir), "--output_dir", str(out)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the straight run's process: float sums then add up in the same order
    try:
        with caplog.at_level(logging.INFO, logger="petl.training"):
            assert run_glue.main([*argv, "--resume_from_checkpoint", str(out / "checkpoint-12")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert "early stopping ended training; no more steps" in caplog.text
    assert_same_run(straight_petl, out)


@pytest.mark.slow
def test_killed_and_resumed_full_fine_tuning_ends_as_the_straight_run(tmp_path_factory, tmp_path, glue_dir):
    straight, _ = straight_run(tmp_path_factory, glue_dir, FULL)
    kill_then_resume(tmp_path / "run", glue_dir, FULL)
    assert_same_run(straight, tmp_path / "run")


# ---- bad checkpoint arguments: one line, exit status 2, nothing written


@pytest.mark.parametrize(
    "value,message",
    [
        ("{tmp}/no/such/checkpoint-3", "--resume_from_checkpoint '{tmp}/no/such/checkpoint-3' is not a folder"),
        ("{tmp}/cut_short", "--resume_from_checkpoint '{tmp}/cut_short' has no trainer_state.json"),
        ("true", "--resume_from_checkpoint true: --output_dir '{tmp}/run' holds no complete checkpoint-N folder"),
    ],
)
def test_bad_checkpoint_is_one_line_and_exit_2(value, message, tmp_path, capsys, glue_dir):
    (tmp_path / "cut_short").mkdir()
    (tmp_path / "cut_short" / "petl_weights.safetensors").write_bytes(b"")
    out = tmp_path / "run"
    code = run_glue.main([*FAST, *RUN, *PETL, "--glue_dir", str(glue_dir), "--output_dir", str(out),
                          "--resume_from_checkpoint", value.format(tmp=tmp_path)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err and err[-1].startswith("error: ") and message.format(tmp=tmp_path) in err[-1], err[-1:]
    assert not out.exists()


def _checkpoint(folder: Path, complete: bool = True) -> Path:
    folder.mkdir(parents=True)
    if complete:
        (folder / TRAINER_STATE_FILE).write_text("{}")
    return folder


def test_true_is_the_latest_complete_checkpoint(tmp_path):
    _checkpoint(tmp_path / "checkpoint-4")
    _checkpoint(tmp_path / "checkpoint-12")
    _checkpoint(tmp_path / "checkpoint-16", complete=False)  # killed while being saved
    (tmp_path / "checkpoint-20").write_text("a file, not a checkpoint")
    assert resolve_resume_checkpoint("true", tmp_path) == str(tmp_path / "checkpoint-12")  # 12 > 4 by number, not by name
    assert resolve_resume_checkpoint(True, tmp_path) == str(tmp_path / "checkpoint-12")
    assert resolve_resume_checkpoint(None, tmp_path) is None
    with pytest.raises(PetlError, match="has no trainer_state.json"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-16"), tmp_path)


def test_checkpoint_without_resume_state_is_refused(tmp_path):
    folder = _checkpoint(tmp_path / "checkpoint-4")
    with pytest.raises(PetlError, match=f"has no {RESUME_STATE_FILE}.*older version"):
        read_resume_state(folder)
    (folder / RESUME_STATE_FILE).write_text('{"format_version": 1, "train_loss": {"total": "x"}}')
    with pytest.raises(PetlError, match="not a resume state"):
        read_resume_state(folder)
    (folder / RESUME_STATE_FILE).write_text("{not json")
    with pytest.raises(PetlError, match="is not valid JSON"):
        read_resume_state(folder)


def _evaluated_callback(model, metric="accuracy", greater=True) -> BestStateCallback:
    from transformers import TrainerControl, TrainerState

    callback = BestStateCallback(model, metric, greater, patience=2)
    for step, value in ((4, 0.5), (8, 0.75), (12, 0.625)):
        state = TrainerState(global_step=step, epoch=step / 4)
        callback.on_evaluate(None, state, TrainerControl(), metrics={f"eval_{metric}": value})
        with torch.no_grad():
            next(model.parameters()).add_(1.0)  # training moves the weights on
    return callback


def test_best_state_round_trips_through_a_checkpoint(tmp_path):
    model = tiny_model("bert")
    saved = _evaluated_callback(model)
    record = json.loads(json.dumps(saved.save_checkpoint_state(tmp_path)))
    assert (tmp_path / BEST_STATE_FILE).is_file()
    loaded = BestStateCallback(model, "accuracy", True, patience=2)
    loaded.load_checkpoint_state(record, tmp_path)
    assert (loaded.best_step, loaded.best_epoch, loaded.best_value, loaded.bad_evals) == (8, 2.0, 0.75, 1)
    assert loaded.history == saved.history and len(loaded.history) == 3
    assert loaded.best_metrics == saved.best_metrics == {"epoch": 2.0, "eval_accuracy": 0.75}  # the final report reuses them
    assert loaded.best_state.keys() == saved.best_state.keys()
    assert all(torch.equal(loaded.best_state[n], saved.best_state[n]) for n in saved.best_state)


def test_checkpoint_of_another_selection_or_model_is_refused(tmp_path):
    model = tiny_model("bert")
    record = json.loads(json.dumps(_evaluated_callback(model).save_checkpoint_state(tmp_path)))
    with pytest.raises(PetlError, match="selected the best state by 'eval_accuracy'.*this run by 'eval_loss'"):
        BestStateCallback(model, "loss", False).load_checkpoint_state(record, tmp_path)
    other = tiny_model("bert", hidden_size=48)
    with pytest.raises(PetlError, match="does not fit this model's trainable parameters"):
        BestStateCallback(other, "accuracy", True).load_checkpoint_state(record, tmp_path)
    with pytest.raises(PetlError, match="holds no best state"):
        BestStateCallback(model, "accuracy", True).load_checkpoint_state(None, tmp_path)

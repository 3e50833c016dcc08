"""HF TrainingArguments flags do what HF documents, mapped onto the project's own machinery, or are
refused with one line that says what to use instead (issue 21): --load_best_model_at_end and
--greater_is_better act on the in-memory best-state selection by the task's metric, --push_to_hub is
refused, method parameters without a learning rate train at their method's documented default, and
replica ranks log at WARNING."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import pytest
import transformers
from conftest import FAST, tiny_model

import run_glue
from argument_classes import PetlTrainingArguments, arguments_from_dict
from petl.core import apply_petl
from petl.errors import PetlError
from petl.experiment import method_default_learning_rates, quiet_replica_logging
from petl.metrics import selection_direction
from petl.registry import METHODS
from petl.training import build_param_groups

TINY_RUN = ["--max_train_samples", "16", "--max_eval_samples", "16", "--num_train_epochs", "1", "--report_to", "none"]


def run_main(argv, capsys) -> tuple[int, list[str]]:
    code = run_glue.main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def mrpc_argv(glue_dir, out) -> list[str]:
    return [*FAST, *TINY_RUN, "--task_name", "mrpc", "--glue_dir", str(glue_dir), "--output_dir", str(out)]


def assert_refused(code: int, err: list[str], out, *fragments: str) -> None:
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err[-5:]
    for fragment in fragments:
        assert fragment in err[0], err[0]
    assert not out.exists()


# ---- --load_best_model_at_end: what every run does, by the task's metric


def test_load_best_model_at_end_keeps_the_task_metric_and_skips_hfs_reload(glue_dir, tmp_path, capsys, caplog):
    """It used to switch the selection to the loss (HF's default for it) and HF's checkpoint reload
    then failed with a warning. Also: no learning rate given, so LoRA trains at its default."""
    out = tmp_path / "run"
    argv = [*mrpc_argv(glue_dir, out), "--method", "lora", "--lora_layers", "1", "--load_best_model_at_end", "--save_strategy", "epoch"]
    with caplog.at_level(logging.INFO):
        code, err = run_main(argv, capsys)
    assert code == 0, err[-5:]
    record = json.loads((out / "results.json").read_text())
    assert record["selection_metric"] == "f1"
    assert record["best_validation_score"] == record["evaluation_history"][0]["eval_f1"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any("best model" in w.lower() or "checkpoint" in w.lower() for w in warnings), warnings
    # the learning rates actually used, per group, with where each came from
    rates = record["learning_rates"]
    assert rates["petl"] == {"lr": 5e-4, "source": "default for lora"}, rates
    assert rates["head"] == {"lr": 5e-5, "source": "--learning_rate"}, rates
    assert any("param group petl" in m and "lr=5.00e-04 (default for lora)" in m for m in caplog.messages), caplog.messages


def test_load_best_model_at_end_sets_no_loss_metric():
    args = PetlTrainingArguments(output_dir="x", load_best_model_at_end=True)  # HF: metric_for_best_model = "loss"
    assert args.metric_for_best_model is None and args.greater_is_better is None


# ---- --greater_is_better: checked against the metric's direction


def test_greater_is_better_that_contradicts_the_metric_is_refused(glue_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_main([*mrpc_argv(glue_dir, out), "--metric_for_best_model", "loss", "--greater_is_better", "true"], capsys)
    assert_refused(code, err, out, "--greater_is_better true contradicts", "'loss'", "lower is better", "omit --greater_is_better")


def test_greater_is_better_false_with_the_task_metric_is_refused(glue_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_main([*mrpc_argv(glue_dir, out), "--greater_is_better", "false"], capsys)
    assert_refused(code, err, out, "--greater_is_better false contradicts", "'f1'", "higher is better")


def test_greater_is_better_that_agrees_is_accepted(glue_dir, tmp_path, capsys):
    argv = [*mrpc_argv(glue_dir, tmp_path / "run"), "--metric_for_best_model", "loss", "--greater_is_better", "false", "--dry_run"]
    code, err = run_main(argv, capsys)
    assert code == 0, err[-3:]


def test_selection_direction():
    assert selection_direction("f1", None) is True and selection_direction("loss", None) is False
    assert selection_direction("mse", None) is False and selection_direction("mse", False) is False
    with pytest.raises(PetlError, match="--greater_is_better true contradicts the selection metric 'mse'"):
        selection_direction("mse", True)
    # HF would derive greater_is_better=True for mse (it only knows names ending in "loss"); it is left unset
    assert PetlTrainingArguments(output_dir="x", metric_for_best_model="mse").greater_is_better is None


# ---- --push_to_hub: refused, saying what to upload instead


def test_push_to_hub_is_refused_saying_what_to_upload(glue_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    code, err = run_main([*mrpc_argv(glue_dir, out), "--push_to_hub"], capsys)
    assert_refused(code, err, out, "--push_to_hub", "petl_weights.safetensors", "petl_config.json", "huggingface-cli upload")
    assert os.listdir(tmp_path) == []


# ---- learning rates: a method's parameters with no rate given train at its documented default


def test_every_method_with_new_parameters_has_a_default_learning_rate():
    for name, entry in METHODS.items():
        if entry.new_parameters:
            assert entry.default_lr is not None and 0 < entry.default_lr < 1, name
        else:
            assert entry.default_lr is None, name  # its weights train at --learning_rate
    assert METHODS["lora"].default_lr == 5e-4 and METHODS["prefix"].default_lr == 5e-3 and METHODS["houlsby"].default_lr == 1e-3


def test_learning_rate_counts_as_given_however_it_was_set():
    base = run_glue.parse_args(["--task_name", "mrpc", "--method", "lora"])[3]
    assert method_default_learning_rates(base, ["lora"]) == {"lora": 5e-4}
    explicit = run_glue.parse_args(["--task_name", "mrpc", "--method", "lora", "--learning_rate", "5e-5"])[3]  # HF's default, given
    assert method_default_learning_rates(explicit, ["lora"]) is None
    assert method_default_learning_rates(dataclasses.replace(base, learning_rate=5e-5), ["lora"]) is None  # a search trial
    assert method_default_learning_rates(dataclasses.replace(base, seed=3), ["lora"]) == {"lora": 5e-4}  # other changes keep it unset
    cell = arguments_from_dict({"task_name": "mrpc", "method": "lora", "learning_rate": 5e-5})[3]  # a sweep cell
    assert method_default_learning_rates(cell, ["lora"]) is None
    assert method_default_learning_rates(dataclasses.replace(base, petl_lr=1e-3), ["lora"]) is None
    assert method_default_learning_rates(base, ["full"]) is None  # nothing new to train


def test_param_groups_at_method_defaults():
    model = apply_petl(tiny_model("bert"), "adapter,lora")
    groups = {g["group_name"]: g for g in build_param_groups(model, 5e-5, 0.0, None, None, {"adapter": 1e-3, "lora": 5e-4})}
    assert groups["petl:lora"]["lr"] == 5e-4 and groups["petl:lora"]["lr_source"] == "default for lora"
    assert groups["petl:adapter/no_decay"]["lr"] == 1e-3 and groups["head"]["lr"] == 5e-5
    same = {g["group_name"] for g in build_param_groups(apply_petl(tiny_model("bert"), "lora"), 5e-5, 0.0, None, None, {"lora": 5e-4})}
    assert "petl" in same  # one method: one petl group, named as with a given rate
    explicit = {g["group_name"]: g for g in build_param_groups(model, 5e-5, 0.0, None, 2e-3)}
    assert explicit["petl"]["lr"] == 2e-3 and explicit["petl"]["lr_source"] == "--petl_lr"


# ---- replica ranks log at WARNING


class _Rank:
    def __init__(self, main: bool):
        self.should_log = main

    def get_process_log_level(self) -> int:
        return logging.INFO if self.should_log else logging.WARNING  # HF: --log_level_replica, default warning


def test_replica_ranks_log_at_warning():
    root = logging.getLogger()
    before = root.level, transformers.logging.get_verbosity()
    try:
        root.setLevel(logging.INFO)
        transformers.logging.set_verbosity_info()
        quiet_replica_logging(_Rank(main=True))
        assert root.level == logging.INFO and transformers.logging.get_verbosity() == logging.INFO
        quiet_replica_logging(_Rank(main=False))
        assert root.level == logging.WARNING and transformers.logging.get_verbosity() == logging.WARNING
        assert not logging.getLogger("run_glue").isEnabledFor(logging.INFO)
    finally:
        root.setLevel(before[0])
        transformers.logging.set_verbosity(before[1])


def test_group_by_length_leaves_evaluation_in_dataset_order(tmp_path):
    """transformers 5 applies group_by_length to evaluation too (a length-grouped shuffle); metrics
    survive it, but predictions must line up with their examples (prediction files, test_predictions,
    the linear probe's features against their labels)."""
    import datasets
    import torch
    from torch import nn

    from petl.training import PetlTrainer

    class LengthModel(nn.Module):  # "predicts" each example's length: the order of the predictions shows
        def __init__(self):
            super().__init__()
            self.unused = nn.Linear(1, 1)

        def forward(self, input_ids, attention_mask, labels=None):
            logits = attention_mask.sum(-1, keepdim=True).float()
            return {"loss": (logits * 0).sum(), "logits": logits}

    def pad(batch):
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.tensor([b["input_ids"] + [0] * (width - len(b["input_ids"])) for b in batch])
        return {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": torch.tensor([b["labels"] for b in batch])}

    lengths = [3, 9, 1, 7, 2, 8, 5, 4, 6, 10, 2, 9]
    ds = datasets.Dataset.from_dict({"input_ids": [[1] * n for n in lengths], "labels": [0] * len(lengths)})
    args = PetlTrainingArguments(
        output_dir=str(tmp_path),
        group_by_length=True,
        per_device_eval_batch_size=4,
        report_to=[],
        use_cpu=True,
        eval_strategy="no",
        save_strategy="no",
    )
    trainer = PetlTrainer(model=LengthModel(), args=args, data_collator=pad)
    assert trainer.predict(ds).predictions.reshape(-1).tolist() == lengths

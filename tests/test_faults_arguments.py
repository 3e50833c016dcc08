"""Bad arguments as a user gives them (command line, args file, grid cell, a saved delta): each is one
`error:` line naming the value, exit status 2, refused before any heavy work, and nothing written."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from conftest import FAST

import run_glue
from argument_classes import arguments_from_dict, given_argument_names
from petl.errors import PetlError
from petl.experiment import finite_or_null

# a run that got past its checks (a check missing) stays short: a few seconds of training, not minutes
TINY_RUN = ["--max_train_samples", "16", "--max_eval_samples", "16", "--num_train_epochs", "1", "--report_to", "none"]


def run_main(argv, capsys) -> tuple[int, list[str]]:
    code = run_glue.main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def assert_one_error_line(code: int, err: list[str], *fragments: str) -> None:
    """Exit status 2 and the last stderr line is the error; argparse's usage or a traceback never precedes it."""
    assert code == 2, err[-5:]
    assert err and err[-1].startswith("error: "), err[-5:]
    assert not any(line.startswith(("usage:", "Traceback")) for line in err), err[:5]
    for fragment in fragments:
        assert fragment in err[-1], err[-1]


# (arguments, fragments the one error line must hold): each refused before the model or data are read
BAD_FLAGS = [
    (["--num_train_epochs", "-1"], ["--num_train_epochs -1.0 trains nothing"]),
    (["--num_train_epochs", "0"], ["--num_train_epochs 0.0 trains nothing", "--max_steps"]),
    (["--early_stopping_patience", "-1"], ["--early_stopping_patience -1 is invalid", ">= 1"]),
    (["--early_stopping_patience", "0"], ["--early_stopping_patience 0 is invalid"]),
    (["--max_seq_length", "0"], ["--max_seq_length 0 is invalid"]),
    (["--max_seq_length", "-5"], ["--max_seq_length -5 is invalid"]),
    (["--per_device_train_batch_size", "0"], ["--per_device_train_batch_size 0 is invalid"]),
    (["--per_device_eval_batch_size", "0"], ["--per_device_eval_batch_size 0 is invalid"]),
    (["--gradient_accumulation_steps", "0"], ["--gradient_accumulation_steps 0 is invalid"]),
    (["--max_train_samples", "-5"], ["--max_train_samples -5 is invalid"]),
    (["--max_eval_samples", "0"], ["--max_eval_samples 0 is invalid"]),
    (["--heldout_validation_size", "0"], ["--heldout_validation_size 0 is invalid", ">= 1"]),
    (["--train_fraction", "1.5"], ["--train_fraction 1.5 is out of range", "(0, 1]"]),
    (["--seed", "99999999999999999999"], ["--seed 99999999999999999999 is out of range"]),
    (["--split_seed", "-1"], ["--split_seed -1 is out of range"]),
    (["--method", "lora", "--lora_alpha", "nan"], ["--lora_alpha nan", "finite"]),
    (["--method", "lora", "--lora_alpha=-inf"], ["--lora_alpha -inf", "finite"]),
    (["--learning_rate", "inf"], ["--learning_rate inf", "finite"]),
    (["--method", "adapter", "--adapter_scaling", "nan"], ["--adapter_scaling 'nan'", "finite"]),
    (["--method", "lora", "--lora_dropout", "-1"], ["--lora_dropout -1.0", "[0, 1)"]),
    (["--weight_decay", "nan"], ["--weight_decay nan", "finite"]),
    (["--weight_decay=-0.1"], ["--weight_decay -0.1", "negative"]),
    (["--head_lr", "nan"], ["--head_lr nan", "finite"]),
    (["--petl_lr", "inf"], ["--petl_lr inf", "finite"]),
    (["--learning_rate=-1e-3"], ["--learning_rate -0.001", "negative"]),
    (["--pooler_type", "avg", "--classifier_dropout", "1.5"], ["--classifier_dropout 1.5", "[0, 1)"]),
    (["--method", "lora", "--lora_layers", ","], ["--lora_layers ','", "selects no layer"]),
    (["--method", "lora", "--lora_layers", ""], ["--lora_layers ''", "selects no layer"]),
    (["--method", "adapter", "--adapter_layers", " , "], ["--adapter_layers ' , '", "selects no layer"]),
    (["--method", "ffn", "--ffn_layers", ""], ["--ffn_layers ''", "selects no layer"]),
    (["--method", "prefix", "--prefix_layers", ","], ["--prefix_layers ','", "selects no layer"]),
    (["--method", "bitfit", "--bitfit_layers", ""], ["--bitfit_layers ''", "selects no layer"]),
    (["--method", "lora", "--lora_targets", ""], ["--lora_targets ''", "selects nothing", "q, k, v"]),
    (["--method", "bitfit", "--bitfit_targets", ","], ["--bitfit_targets ','", "selects nothing", "attn_ln"]),
    (["--method", "adapter", "--adapter_placement", ""], ["--adapter_placement ''", "selects nothing", "ffn, attn"]),
    (["--method", "adapter", "--lora_rank", "8"], ["--lora_rank was given", "--method 'adapter' does not use it"]),
    (["--method", "lora", "--adapter-dim=64"], ["--adapter_dim was given", "--method 'lora' does not use it"]),
    (["--method", "head", "--adapter_layernorm_affine"], ["--adapter_layernorm_affine was given"]),  # true: its default
    (["--method", "head", "--no_adapter_layernorm_affine"], ["--adapter_layernorm_affine was given"]),
    (["--method", "houlsby", "--adapter_placement", "ffn"], ["--adapter_placement 'ffn' conflicts with --method houlsby"]),
    (["--method", "lora", "--lora_rank", "abc"], ["argument --lora_rank: invalid int value: 'abc'"]),
    (["--num_train_epochs", "x"], ["argument --num_train_epochs: invalid float value: 'x'"]),
    (["--model_name_or_path", "minilm-l7"], ["'minilm-l7' is no packaged alias", "did you mean 'minilm-l6'"]),
    (["--model_name_or_path", "./no/such/model"], ["'./no/such/model' does not exist", "minilm-l6"]),
    (["--model_name_or_path", "no such model!"], ["'no such model!' does not exist and is not a hub id"]),
]


@pytest.mark.parametrize("args,fragments", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag_is_one_line_exit_2_and_nothing_written(args, fragments, tmp_path, capsys, glue_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default output folder would land here
    out = tmp_path / "run"
    argv = [*FAST, *TINY_RUN, "--task_name", "mrpc", "--glue_dir", str(glue_dir), "--output_dir", str(out)]
    code, err = run_main([*argv, *args], capsys)
    assert_one_error_line(code, err, *fragments)
    assert len(err) == 1 or "--model_name_or_path" in args, err  # nothing logged before the error (no model load)
    assert not out.exists() and os.listdir(tmp_path) == []


def test_argparse_error_is_one_line_without_usage(capsys):
    code, err = run_main(["--lora_rank", "abc"], capsys)
    assert err == ["error: argument --lora_rank: invalid int value: 'abc'"] and code == 2


def test_selected_method_flags_at_default_are_accepted(glue_dir, tmp_path, capsys):
    """The explicit-flag rule refuses only flags of unselected methods."""
    argv = [*FAST, "--task_name", "mrpc", "--glue_dir", str(glue_dir), "--output_dir", str(tmp_path / "run"), "--dry_run"]
    code, err = run_main([*argv, "--method", "lora", "--lora_rank", "8", "--lora_layers", "0,,1"], capsys)
    assert code == 0, err[-3:]


def test_given_argument_names_however_spelt():
    names = given_argument_names(["--lora-rank", "8", "--lora_alpha=3", "--no_adapter_layernorm_affine", "--dry_run"])
    assert names == {"lora_rank", "lora_alpha", "adapter_layernorm_affine", "dry_run"}


# ---- args files (run_glue.py args.json) and grid cells (arguments_from_dict)

# (values, fragments of the error line, whether the line names the file: type errors do, run checks do not)
BAD_ARGS_FILES = [
    ({"lora_rank": "eight"}, ["'lora_rank' is \"eight\"", "expected an integer", "line 2"], True),
    ({"num_train_epochs": "x"}, ["'num_train_epochs' is \"x\"", "expected a number", "line 2"], True),
    ({"task_name": ["mrpc"]}, ["'task_name' is [\"mrpc\"]", "expected a string or null", "line 2"], True),
    ({"dry_run": "yes"}, ["'dry_run' is \"yes\"", "expected true or false", "line 2"], True),
    ({"lora_rnak": 4}, ["'lora_rnak' (= 4) is not a run_glue.py argument", "did you mean 'lora_rank'", "line 2"], True),
    ({"learning_rate": "1e-3"}, ["'learning_rate' is \"1e-3\"", "without quotes"], True),
    ({"method": "adapter", "lora_rank": 8}, ["--lora_rank was given but --method 'adapter'"], False),
    ({"method": "lora", "lora_alpha": float("nan")}, ["'lora_alpha' is NaN", "expected a finite number", "line 3"], True),
]


@pytest.mark.parametrize("values,fragments,names_file", BAD_ARGS_FILES, ids=[json.dumps(v) for v, _, _ in BAD_ARGS_FILES])
def test_bad_args_file_names_key_file_line_value_and_type(values, fragments, names_file, tmp_path, capsys, glue_dir):
    out = tmp_path / "run"
    base = {"task_name": "mrpc", "glue_dir": str(glue_dir), "output_dir": str(out), "dry_run": True, "num_hidden_layers": 2}
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({**values, **{k: v for k, v in base.items() if k not in values}}, indent=2))  # bad key: line 2
    code, err = run_main([str(args_file)], capsys)
    assert_one_error_line(code, err, *fragments, *([str(args_file)] if names_file else []))
    assert not out.exists()


def test_args_file_that_is_not_json_names_file_and_line(tmp_path, capsys):
    args_file = tmp_path / "args.json"
    args_file.write_text('{\n  "task_name": "mrpc",\n  "lora_rank": 8,,\n}\n')
    code, err = run_main([str(args_file)], capsys)
    assert_one_error_line(code, err, str(args_file), "line 3", "not valid JSON")


def test_grid_cell_values_are_type_checked():
    with pytest.raises(PetlError, match=r"cell c1: 'lora_rank' is \"8\"; expected an integer"):
        arguments_from_dict({"lora_rank": "8"}, "cell c1")
    with pytest.raises(PetlError, match=r"cell c1: 'report_to' is \{\"wandb\": 1\}; expected a string or a list of strings or null"):
        arguments_from_dict({"report_to": {"wandb": 1}}, "cell c1")
    # JSON numbers where a string belongs are what the user meant
    _, _, petl_args, training_args = arguments_from_dict({"lora_layers": 5, "adapter_scaling": 2.0, "report_to": []}, "cell c1")
    assert petl_args.lora_layers == "5" and petl_args.adapter_scaling == "2.0" and training_args.report_to == []


# ---- output paths: checked writable before anything is done


def _output_cases(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    return {
        "output_dir under a file": (["--output_dir", str(a_file / "run")], ["--output_dir", "is a file"]),
        "output_dir is a file": (["--output_dir", str(a_file)], ["--output_dir", "is a file; give a folder"]),
        "results_file is a folder": (["--results_file", str(folder)], ["--results_file", "is a folder"]),
        "results_file under a file": (["--results_file", str(a_file / "r.jsonl")], ["--results_file", "is a file"]),
        "export_peft under a file": (["--method", "lora", "--export_peft", str(a_file / "peft")], ["--export_peft", "is a file"]),
        "cache_dir under a file": (
            ["--method", "lora", "--lora_layers", "1", "--cache_frozen_layers", "--cache_dir", str(a_file / "c")],
            ["--cache_dir", "is a file"],
        ),  # fmt: skip
    }


@pytest.mark.parametrize(
    "case",
    ["output_dir under a file", "output_dir is a file", "results_file is a folder", "results_file under a file",
     "export_peft under a file", "cache_dir under a file"],
)  # fmt: skip
def test_unwritable_output_path_refused_before_training(case, tmp_path, capsys, glue_dir):
    args, fragments = _output_cases(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    argv = [*FAST, *TINY_RUN, "--task_name", "mrpc", "--glue_dir", str(glue_dir)]
    if "--output_dir" not in args:
        argv += ["--output_dir", str(tmp_path / "run")]
    code, err = run_main([*argv, *args], capsys)
    assert_one_error_line(code, err, *fragments)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing trained, nothing written


def test_read_only_output_dir_refused_before_training(tmp_path, capsys, glue_dir, monkeypatch):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.access(read_only, os.W_OK):  # root ignores permission bits: answer as the kernel would for another user
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(read_only) else real_access(p, mode, **kw))
    argv = [*FAST, *TINY_RUN, "--task_name", "mrpc", "--glue_dir", str(glue_dir), "--output_dir", str(read_only / "run")]
    code, err = run_main(argv, capsys)
    read_only.chmod(0o755)
    assert_one_error_line(code, err, "--output_dir", "is not writable")
    assert list(read_only.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is for machines without a GPU")
def test_deepspeed_without_gpu_needs_use_cpu(tmp_path, capsys, glue_dir):
    ds_config = os.path.join(os.path.dirname(run_glue.__file__), "ds_configs", "zero2.json")
    argv = [*FAST, "--task_name", "mrpc", "--glue_dir", str(glue_dir), "--output_dir", str(tmp_path / "run"), "--deepspeed", ds_config]
    code, err = run_main([*argv, "--dry_run"], capsys)
    assert_one_error_line(code, err, "--deepspeed", "without a GPU", "--use_cpu")
    assert not (tmp_path / "run").exists()


def test_offline_hub_failure_is_one_line(tmp_path, capsys, glue_dir, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    argv = [*FAST, "--task_name", "mrpc", "--glue_dir", str(glue_dir), "--output_dir", str(tmp_path / "run")]
    code, err = run_main([*argv, "--model_name_or_path", "nobody-petl/no-such-model"], capsys)
    assert_one_error_line(code, err, "'nobody-petl/no-such-model'", "could not be loaded from the hub or its local cache")


# ---- results files stay JSON


def test_non_finite_values_are_recorded_as_null(caplog):
    record = {"train_loss": float("nan"), "test_metrics": {"pearson": float("inf"), "loss": 0.5}, "history": [{"f1": float("-inf")}]}
    cleaned = finite_or_null(record)
    assert json.loads(json.dumps(cleaned, allow_nan=False)) == {
        "train_loss": None,
        "test_metrics": {"pearson": None, "loss": 0.5},
        "history": [{"f1": None}],
    }
    assert "train_loss=nan" in caplog.text and "test_metrics.pearson=inf" in caplog.text
    assert math.isnan(record["train_loss"])  # the caller's record is left as it was


# ---- a saved delta (--load_petl) edited by hand or cut short


@pytest.fixture(scope="module")
def saved_delta(tmp_path_factory) -> str:
    """A LoRA delta for the 2-layer MiniLM on MRPC, saved without training (its tensors as initialised)."""
    from petl.core import apply_petl, save_petl
    from petl.models import load_model, resolve_model_path
    from petl.state import get_state

    model = load_model(resolve_model_path("minilm-l6"), 2, "auto", 2, seed=1)
    apply_petl(model, [{"method": "lora", "rank": 2}])
    folder = tmp_path_factory.mktemp("delta")
    save_petl(model, folder, extra={"model_name_or_path": "minilm-l6", "pooler_type": get_state(model).pooler_type, "pair_template": None})
    return str(folder)


def _copy_delta(source: str, target) -> None:
    import shutil

    shutil.copytree(source, target)


def _edit_config(folder, edit) -> None:
    path = folder / "petl_config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


BAD_DELTAS = {
    "rank as a string": (lambda c: c["methods"][0].update(rank="8"), ["methods[0]", "lora option 'rank' is \"8\"", "an integer"]),
    "methods missing": (lambda c: c.pop("methods"), ['"methods" is null', "non-empty list"]),
    "methods a string": (lambda c: c.update(methods="lora"), ['"methods" is "lora"', "non-empty list"]),
    "method name missing": (lambda c: c["methods"][0].pop("method"), ["methods[0]", 'a "method" name']),
    "unknown method": (lambda c: c["methods"][0].update(method="dora"), ["methods[0]", "--method 'dora' is unknown"]),
    "num_labels a string": (lambda c: c.update(num_labels="2"), ["'num_labels' is \"2\"", "an integer or null"]),
    "model name a number": (lambda c: c.update(model_name_or_path=5), ["'model_name_or_path' is 5", "a string or null"]),
    "layers a list": (lambda c: c["methods"][0].update(layers=[0, 1]), ["lora option 'layers' is [0, 1]", "expected a string"]),
    "newer format": (lambda c: c.update(format_version=99), ["format_version 99 is newer"]),
}


@pytest.mark.parametrize("case", list(BAD_DELTAS))
def test_hand_edited_delta_config_is_one_line_naming_the_file(case, saved_delta, tmp_path, capsys, glue_dir):
    edit, fragments = BAD_DELTAS[case]
    delta = tmp_path / "delta"
    _copy_delta(saved_delta, delta)
    _edit_config(delta, edit)
    argv = [*FAST, *TINY_RUN, "--task_name", "mrpc", "--glue_dir", str(glue_dir), "--output_dir", str(tmp_path / "run")]
    code, err = run_main([*argv, "--load_petl", str(delta)], capsys)
    assert_one_error_line(code, err, str(delta / "petl_config.json"), *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("keep", [0, 5, 100, -10])
def test_truncated_delta_weights_are_one_line_naming_the_file(keep, saved_delta, tmp_path, capsys, glue_dir):
    delta = tmp_path / "delta"
    _copy_delta(saved_delta, delta)
    weights = delta / "petl_weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    argv = [*FAST, *TINY_RUN, "--task_name", "mrpc", "--glue_dir", str(glue_dir), "--output_dir", str(tmp_path / "run")]
    code, err = run_main([*argv, "--load_petl", str(delta)], capsys)
    assert_one_error_line(code, err, str(weights), "damaged or incomplete")
    assert not (tmp_path / "run").exists()


def test_load_petl_api_refuses_a_truncated_weights_file(saved_delta, tmp_path):
    from petl.core import load_petl
    from petl.models import load_model, resolve_model_path

    delta = tmp_path / "delta"
    _copy_delta(saved_delta, delta)
    weights = delta / "petl_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    model = load_model(resolve_model_path("minilm-l6"), 2, "auto", 2, seed=1)
    with pytest.raises(PetlError, match="damaged or incomplete"):
        load_petl(model, delta)


def test_intact_delta_still_loads(saved_delta, tmp_path, capsys, glue_dir):
    argv = [*FAST, "--task_name", "mrpc", "--glue_dir", str(glue_dir), "--output_dir", str(tmp_path / "run"), "--load_petl", saved_delta]
    code, err = run_main([*argv, "--dry_run"], capsys)
    assert code == 0, err[-3:]


def test_a_selection_metric_the_task_does_not_report_is_refused_before_the_model_loads(tmp_path, capsys, glue_dir):
    out = tmp_path / "run"
    argv = [*FAST, *TINY_RUN, "--task_name", "mrpc", "--glue_dir", str(glue_dir), "--output_dir", str(out)]
    code, err = run_main([*argv, "--metric_for_best_model", "bogus"], capsys)
    assert code == 2 and err[-1].startswith("error: --metric_for_best_model 'bogus' is not reported for this task"), err[-2:]
    assert "allowed: f1, accuracy, combined_score, loss" in err[-1] or "allowed: accuracy, f1, combined_score, loss" in err[-1]
    assert not out.exists()


def test_a_heldout_validation_size_the_task_cannot_use_is_one_line_and_nothing_written(tmp_path, capsys, glue_dir):
    """MRPC (3,668 training examples) splits its dev set 50/50: a held-out size would be silently ignored."""
    out = tmp_path / "run"
    argv = [*FAST, *TINY_RUN, "--task_name", "mrpc", "--glue_dir", str(glue_dir), "--output_dir", str(out)]
    code, err = run_main([*argv, "--heldout_validation_size", "500"], capsys)
    assert_one_error_line(code, err, "--heldout_validation_size 500 applies to tasks with 10,000+ training examples; this one has 3,668")
    assert not out.exists()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--method", "adapter"], "--method 'adapter' differs from the saved delta's 'lora' (--load_petl); omit --method"),
        (["--lora_rank", "4"], "--lora_rank was given with --load_petl"),
        (["--model_name_or_path", "mpnet-base"], "--model_name_or_path 'mpnet-base' differs from the saved delta's 'minilm-l6'"),
    ],
)
def test_flags_that_a_loaded_delta_would_silently_override_are_refused(extra, message, tmp_path, capsys, glue_dir):
    """--load_petl fixes the methods and base model: a --method, method option or model given with it is refused."""
    delta = tmp_path / "delta"
    base = [*FAST, *TINY_RUN, "--task_name", "mrpc", "--glue_dir", str(glue_dir)]
    assert run_glue.main([*base, "--method", "lora", "--output_dir", str(delta)]) == 0
    capsys.readouterr()
    out = tmp_path / "eval"
    code, err = run_main([*base, "--load_petl", str(delta), "--output_dir", str(out), *extra], capsys)  # the last flag given wins
    assert code == 2 and message in err[-1], err[-2:]
    assert not out.exists()

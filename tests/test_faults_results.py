"""Results files under faults: torn JSONL lines, a full disk (simulated ENOSPC, and a tiny tmpfs where
mounting is allowed), a results file that is a folder, a changed grid, a torn sweep record, and
grid names that would leave the output folder."""

from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest
from conftest import FAST as FAST_MODEL

import petl.experiment
import run_glue
from petl.errors import PetlError
from petl.report import load_records
from petl.results import append_jsonl, check_appendable, read_jsonl, remove_appended
from petl.sweep import main as sweep_main
from petl.sweep import run_sweep

FAST = [*FAST_MODEL, "--task_name", "mrpc", "--method", "head", "--split_mode", "heldout", "--max_train_samples", "32",
        "--max_eval_samples", "32", "--num_train_epochs", "1", "--per_device_train_batch_size", "16"]  # fmt: skip


def _torn_file(path) -> bytes:
    """Two records, the second cut short by a full disk or kill -9."""
    data = json.dumps({"cell_id": "a", "status": "ok"}).encode() + b'\n{"cell_id": "b", "status": "o'
    path.write_bytes(data)
    return data


def test_a_torn_last_line_is_isolated_and_the_next_record_is_intact(tmp_path):
    target = tmp_path / "r.jsonl"
    before = _torn_file(target)
    append_jsonl(target, {"cell_id": "c", "status": "ok"})
    records, unreadable = read_jsonl(target)
    assert [r["cell_id"] for r in records] == ["a", "c"] and unreadable == [2]
    assert target.read_bytes().startswith(before + b"\n")  # the fragment is kept, on a line of its own
    # a torn line that ends inside a character, or a line that is JSON but not a record, is reported too
    target.write_bytes(b'{"cell_id": "a"}\n{"x": "\xc3')
    append_jsonl(target, {"cell_id": "d"})
    target.write_bytes(target.read_bytes() + b"null\n")
    records, unreadable = read_jsonl(target)
    assert [r["cell_id"] for r in records] == ["a", "d"] and unreadable == [2, 4]


def _fail_after_part(monkeypatch, target, part: int = 7):
    """os.write writes `part` bytes to `target`, then the disk is full (ENOSPC); other files write normally."""
    real_write = os.write
    calls = []

    def write(fd, data):
        if os.path.realpath(f"/proc/self/fd/{fd}") != os.path.realpath(target):
            return real_write(fd, data)
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data)[:part])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", write)
    return calls


def test_a_full_disk_mid_append_is_an_error_and_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    target = tmp_path / "r.jsonl"
    target.write_text('{"cell_id": "a"}\n')
    calls = _fail_after_part(monkeypatch, target)
    with pytest.raises(PetlError, match=r"results file '.*r\.jsonl': cannot append the record \(No space left on device\)"):
        append_jsonl(target, {"cell_id": "b", "pad": "x" * 100})
    assert len(calls) == 2 and target.read_text() == '{"cell_id": "a"}\n'
    # the same over a torn last line: the fragment stays as it was, unterminated, and nothing is glued to it
    before = _torn_file(target)
    calls.clear()
    with pytest.raises(PetlError, match="No space left on device"):
        append_jsonl(target, {"cell_id": "b"})
    assert target.read_bytes() == before


def test_a_results_line_written_by_a_failed_run_is_taken_back(tmp_path):
    target = tmp_path / "r.jsonl"
    target.write_text('{"cell_id": "a"}\n')
    span = append_jsonl(target, {"cell_id": "b"})
    assert remove_appended(target, span) and target.read_text() == '{"cell_id": "a"}\n'
    span = append_jsonl(target, {"cell_id": "b"})
    append_jsonl(target, {"cell_id": "c"})  # another writer appended since: nothing is cut
    assert not remove_appended(target, span) and len(read_jsonl(target)[0]) == 3


def test_a_full_tmpfs_mid_append_leaves_the_file_as_it_was(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], capture_output=True).returncode == 0
    except OSError:
        mounted = False
    if not mounted:
        pytest.skip("mounting a tmpfs is not permitted here (the simulated ENOSPC test covers the same path)")
    try:
        target = small / "r.jsonl"
        append_jsonl(target, {"cell_id": "a"})
        filler = os.open(small / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError, match="No space left"):  # fill every free page
                while True:
                    os.write(filler, b"x" * 4096)
        finally:
            os.close(filler)
        before = target.read_bytes()
        with pytest.raises(PetlError, match="No space left on device"):
            append_jsonl(target, {"cell_id": "b", "pad": "x" * 20_000})  # part of it fits in the last page
        assert target.read_bytes() == before
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_run_glue_full_disk_at_the_end_is_exit_2_and_nothing_half_written(tmp_path, monkeypatch, capsys, glue_dir):
    target = tmp_path / "all.jsonl"
    target.write_text('{"earlier": 1}\n')
    _fail_after_part(monkeypatch, target)
    out = tmp_path / "run"
    code = run_glue.main([*FAST, "--output_dir", str(out), "--glue_dir", str(glue_dir), "--results_file", str(target)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: --results_file ") and "No space left on device" in err[-1]
    assert target.read_text() == '{"earlier": 1}\n'
    assert not (out / "results.json").exists()  # so a re-run is not refused as "occupied"


@pytest.mark.parametrize("kind", ["folder", "under a file"])
def test_results_file_that_cannot_take_a_record_is_refused_before_training(kind, tmp_path, monkeypatch, capsys, glue_dir):
    if kind == "folder":
        target = tmp_path / "results"
        target.mkdir()
        message = "is a folder"
    else:
        (tmp_path / "plain").write_text("x")
        target = tmp_path / "plain" / "sub" / "all.jsonl"
        message = "is a file, so the folder for it cannot be created"
    before = sorted(tmp_path.rglob("*"))

    def no_training(*args, **kwargs):
        raise AssertionError("data was loaded before --results_file was checked")

    monkeypatch.setattr(petl.experiment, "load_data", no_training)
    out = tmp_path / "run"
    code = run_glue.main([*FAST, "--output_dir", str(out), "--glue_dir", str(glue_dir), "--results_file", str(target)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(f"error: --results_file {str(target)!r}") and message in err[-1], err[-1:]
    assert sorted(tmp_path.rglob("*")) == before  # nothing written
    check_appendable(tmp_path / "new" / "deeper" / "all.jsonl")  # a folder still to be made is fine, and is not made
    assert not (tmp_path / "new").exists()


# ---- sweeps, with petl.experiment.run replaced by a stand-in: only the bookkeeping is under test


def _grid(tmp_path, glue_dir, epochs: int = 1, **methods) -> str:
    grid = {
        "name": "faults",
        "results": str(tmp_path / "faults.jsonl"),
        "output_dir": str(tmp_path / "a" / "b" / "out"),
        "model_name_or_path": "minilm-l6",
        "tasks": ["mrpc"],
        "seeds": [1],
        "layers": [0, 1],
        "arguments": {"glue_dir": str(glue_dir), "num_hidden_layers": 2, "num_train_epochs": epochs, "learning_rate": 1e-3},
        "methods": methods or {"lora": {"method": "lora", "lora_layers": "{layer}"}, "head": {"method": "head"}},
    }
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(grid))
    return str(path)


@pytest.fixture
def ran(monkeypatch) -> list[str]:
    """petl.experiment.run recording which cells ran (by output folder) instead of training."""
    calls = []

    def fake_run(model_args, data_args, petl_args, training_args, cache_when_valid=False):
        calls.append(training_args.output_dir)
        return {"task": data_args.task_name, "selection_metric": "accuracy", "reported_metrics": {"test": {"accuracy": 0.5}}}

    monkeypatch.setattr(petl.experiment, "run", fake_run)
    return calls


def test_a_changed_grid_runs_its_cells_again(tmp_path, glue_dir, ran, capsys):
    path = _grid(tmp_path, glue_dir)
    assert run_sweep(path)["ran"] == 3 and run_sweep(path, dry_run=True)["to_run"] == 0
    capsys.readouterr()
    path = _grid(tmp_path, glue_dir, epochs=2)
    assert run_sweep(path, dry_run=True)["to_run"] == 3
    assert "3 recorded cell(s) ran with other arguments than the grid now gives (changed: num_train_epochs)" in capsys.readouterr().out
    assert run_sweep(path)["ran"] == 3 and run_sweep(path, dry_run=True)["to_run"] == 0
    # the report uses each cell's latest record only
    assert len(load_records(str(tmp_path / "faults.jsonl"))) == 3
    # records from before the hash (the committed figures/results/*.jsonl) are trusted while their cell arguments match
    results = tmp_path / "faults.jsonl"
    old = [{k: v for k, v in r.items() if k not in ("run_arguments", "arguments_hash")} for r in read_jsonl(results)[0]]
    results.write_text("".join(json.dumps(r) + "\n" for r in old))
    assert run_sweep(_grid(tmp_path, glue_dir, epochs=5), dry_run=True)["to_run"] == 0
    changed = {"lora": {"method": "lora", "lora_layers": "{layer}", "lora_rank": 4}, "head": {"method": "head"}}
    assert run_sweep(_grid(tmp_path, glue_dir, **changed), dry_run=True)["to_run"] == 2
    assert "(changed: lora_rank)" in capsys.readouterr().out


def test_the_report_never_uses_a_result_made_with_arguments_since_changed(tmp_path):
    def rec(status, digest):
        return {"cell_id": "mrpc/lora/seed=1", "status": status, "arguments_hash": digest, "reported_metrics": {"test": {"f1": 0.5}}}

    results = tmp_path / "r.jsonl"
    other = {"cell_id": "mrpc/head/seed=1", "status": "ok", "reported_metrics": {"test": {"f1": 0.6}}}
    results.write_text("".join(json.dumps(r) + "\n" for r in [other, rec("ok", "aaa"), rec("failed", "bbb")]))
    assert [r["cell_id"] for r in load_records(str(results))] == ["mrpc/head/seed=1"]
    results.write_text("".join(json.dumps(r) + "\n" for r in [other, rec("ok", "aaa"), rec("failed", "aaa")]))
    assert len(load_records(str(results))) == 2  # a retry with the same arguments that failed: the result stands


def test_a_sweep_with_a_torn_record_runs_that_cell_once_and_goes_on(tmp_path, glue_dir, ran, capsys):
    path = _grid(tmp_path, glue_dir)
    run_sweep(path)
    results = tmp_path / "faults.jsonl"
    data = results.read_bytes()
    results.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 40])  # the last cell's record cut short
    last_cell = ran[-1]
    ran.clear()
    capsys.readouterr()
    assert run_sweep(path) == {"cells": 3, "to_run": 1, "ran": 1, "failed": 0}
    assert ran == [last_cell]
    assert "1 unreadable line(s) (line 3; a write cut short?)" in capsys.readouterr().out
    records, unreadable = read_jsonl(results)
    assert unreadable == [3] and len(records) == 3 and records[-1]["status"] == "ok"
    assert run_sweep(path)["to_run"] == 0  # never again


@pytest.mark.parametrize(
    "where,value",
    [("method", "../../../escaped"), ("method", "/abs"), ("method", "a/b"), ("method", ".."), ("method", "nul\0"),
     ("task", "../../x"), ("setting", "../../../y"), ("name", "../../up")],
)  # fmt: skip
def test_grid_names_that_would_leave_the_output_folder_are_refused(where, value, tmp_path, glue_dir, ran, capsys, monkeypatch):
    home = tmp_path / "a" / "b" / "c"  # deep enough that even an escape would stay inside tmp_path
    home.mkdir(parents=True)
    monkeypatch.chdir(home)  # the default results/ and outputs/ of a grid without them
    methods = {"head": {"method": "head"}}
    if where == "method":
        methods = {value: {"method": "head"}}
    elif where == "setting":
        methods = {"pf": {"method": "pfeiffer", "adapter_layers": "1", "adapter_activation": ["relu", value]}}
    path = _grid(home, glue_dir, **methods)
    grid = json.loads((home / "grid.json").read_text())
    if where == "task":
        grid["tasks"] = [value]
    if where == "name":
        grid["name"] = value
        del grid["results"], grid["output_dir"]
    (home / "grid.json").write_text(json.dumps(grid))
    before = sorted(tmp_path.rglob("*"))
    assert sweep_main([path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: grid file {path!r}: ") and repr(value) in err[0], err
    assert ran == [] and sorted(tmp_path.rglob("*")) == before


def test_a_sweep_whose_record_cannot_be_appended_stops_with_the_file_as_it_was(tmp_path, glue_dir, ran, monkeypatch, capsys):
    path = _grid(tmp_path, glue_dir)
    results = tmp_path / "faults.jsonl"
    results.write_text('{"earlier": 1}\n')
    _fail_after_part(monkeypatch, results)
    assert sweep_main([path, "--no_ray"]) == 2  # in-process: the stand-in for experiment.run applies
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: results file {str(results)!r}: cannot append the record (No space left on device)")
    assert "ran but is not recorded, so the sweep stops" in err[-1] and len(ran) == 1
    assert results.read_text() == '{"earlier": 1}\n'


@pytest.mark.parametrize("fault", ["predictions fail", "results line cannot be appended", "disk full writing the delta"])
def test_a_run_that_fails_leaves_the_earlier_run_s_files(fault, tmp_path, monkeypatch, capsys, glue_dir):
    """--overwrite_output_dir replaces an earlier run only once the new one has finished and recorded
    itself: whatever fails (an evaluation, the results line, a full disk), the earlier delta,
    predictions and results.json stay as they were, and no staging folder is left."""
    import petl.core
    from petl.training import PetlTrainer

    out = tmp_path / "run"
    argv = [*FAST, "--glue_dir", str(glue_dir), "--output_dir", str(out), "--do_predict", "--overwrite_output_dir"]
    assert run_glue.main(argv) == 0
    earlier = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    paths_before = [p.name for p in out.iterdir()]
    assert any(p.name == "petl_weights.safetensors" for p in earlier) and any(p.suffix == ".tsv" for p in earlier)
    again = [*argv, "--seed", "2"]  # another seed (the last --seed wins): another delta, had it been saved
    if fault == "predictions fail":

        def predict_fails(self, *args, **kwargs):
            raise RuntimeError("out of memory in the test predictions")

        monkeypatch.setattr(PetlTrainer, "predict", predict_fails)
        with pytest.raises(RuntimeError, match="out of memory"):
            run_glue.main(again)
    else:
        if fault == "results line cannot be appended":
            results = tmp_path / "all.jsonl"
            results.write_text('{"earlier": 1}\n')
            _fail_after_part(monkeypatch, results)
            again += ["--results_file", str(results)]
            expected = "error: --results_file "
        else:

            def disk_full(tensors, filename):
                open(filename, "wb").write(b"part")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(petl.core, "save_file", disk_full)
            expected = f"error: --output_dir {str(out)!r}: the run's files could not be written (No space left on device)"
        capsys.readouterr()
        assert run_glue.main(again) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(expected), err[-1:]
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == earlier
    assert sorted(p.name for p in out.iterdir()) == sorted(paths_before)  # no staging folder left over


@pytest.mark.parametrize(
    "methods,message",
    [
        ({"typo": {"method": "lroa"}}, "--method 'lroa' is unknown"),
        ({"drop": {"method": "lora", "lora_dropout": [0.1, 1.5]}}, "--lora_dropout 1.5 is out of range"),
        ({"mixed": {"method": "head", "lora_rank": 8}}, "--lora_rank was given but --method 'head' does not use it"),
        ({"rank": {"method": "lora", "lora_rank": "eight"}}, "'lora_rank' is \"eight\"; expected an integer"),
    ],
)
def test_a_bad_cell_anywhere_in_a_grid_is_refused_before_any_cell_trains(methods, message, tmp_path, glue_dir, ran, capsys):
    path = _grid(tmp_path, glue_dir, good={"method": "lora", "lora_layers": "{layer}"}, **methods)
    assert sweep_main([path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: grid file {path!r}: ") and message in err[-1], err[-1:]
    assert ran == [] and not (tmp_path / "faults.jsonl").exists()


def test_a_results_file_appended_to_does_not_make_the_tree_dirty(tmp_path, monkeypatch):
    """A sweep appends to its committed JSONL: records stay "clean" until code changes, which they name."""
    import subprocess

    from petl import results

    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "runs.jsonl").write_text("{}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    monkeypatch.setattr(results, "REPO_ROOT", tmp_path)
    (tmp_path / "runs.jsonl").write_text("{}\n{}\n")
    assert results.git_commit()["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert results.git_commit() == {"commit": results.git_commit()["commit"], "dirty": True, "changed_files": ["code.py"]}


def test_a_runs_peak_memory_is_its_own_not_an_earlier_runs_in_the_same_process():
    """A sweep worker runs cell after cell in one process: each record's peak RSS must be that cell's, not the
    process's lifetime peak (which carried a LoRA cell's 4.4 GiB into the IDPG cells after it)."""
    import numpy as np

    from petl.results import peak_memory, reset_peak_memory

    earlier = np.ones(60_000_000)  # an earlier cell: ~460 MiB touched, then freed
    del earlier
    lifetime = peak_memory()["peak_rss_mib"]
    reset_peak_memory()  # what petl.experiment.run does first
    later = np.ones(1_000_000)
    own = peak_memory()
    assert lifetime - own["peak_rss_mib"] > 300 and "peak_rss_scope" not in own
    del later

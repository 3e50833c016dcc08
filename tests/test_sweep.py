"""Sweeps: grid expansion, one JSONL record per cell, resume, failed cells recorded, report files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, write_grid

from petl.errors import PetlError
from petl.report import baseline_score, glue_table, write_report
from petl.sweep import expand_cells, load_grid, main, run_sweep


def _grid(tmp_path, glue_dir, **extra) -> str:
    """Three methods (two layers, one raw head at layer 1, an adapter-width axis); `extra` adds methods."""
    arguments = {"num_hidden_layers": 2, "pooler_type": "avg", "split_mode": "heldout", "max_train_samples": 96,
                 "max_eval_samples": 64, "num_train_epochs": 1, "learning_rate": 1e-3, "per_device_train_batch_size": 16}  # fmt: skip
    methods = {
        "lora": {"method": "lora", "lora_layers": "{layer}"},
        "raw": {"method": "head", "num_hidden_layers": "{next}", "layers": [1]},
        "adapter-dim": {"method": "pfeiffer", "adapter_layers": "1", "adapter_dim": [1, 4]},
        **extra,
    }
    return write_grid(tmp_path, glue_dir, "tiny", arguments, methods)


def test_grid_expands_layers_settings_and_seeds(tmp_path, glue_dir):
    grid = load_grid(_grid(tmp_path, glue_dir))
    grid["seeds"] = [1, 2]
    cells = expand_cells(grid, num_layers=2)
    ids = [c.cell_id for c in cells]
    assert len(ids) == 2 * 2 + 1 * 2 + 2 * 2
    assert "mrpc/lora/layer=0/seed=2" in ids and "mrpc/adapter-dim/adapter_dim=4/seed=1" in ids
    raw = next(c for c in cells if c.method_name == "raw")
    assert raw.arguments["num_hidden_layers"] == 2 and raw.layer == 1
    assert next(c for c in cells if c.cell_id == "mrpc/lora/layer=1/seed=1").arguments["lora_layers"] == 1


def test_out_of_range_layers_and_bad_grids_are_clear_errors(tmp_path, glue_dir):
    grid = load_grid(_grid(tmp_path, glue_dir))
    grid["layers"] = [0, 5]
    with pytest.raises(PetlError, match="layer 5 is out of range for a 2-layer model"):
        expand_cells(grid, num_layers=2)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tasks": ["mrpc"], "methods": {"x": {"method": "lora"}}, "sedes": [1]}))
    with pytest.raises(PetlError, match="unknown key 'sedes'"):
        load_grid(str(bad))
    assert main([str(tmp_path / "missing.yaml")]) == 2


def test_shards_partition_the_grid_and_appends_from_parallel_writers_stay_whole(tmp_path, glue_dir):
    path = _grid(tmp_path, glue_dir)
    everything = [c.cell_id for c in expand_cells(load_grid(path), num_layers=2)]
    shards = [run_sweep(path, dry_run=True, shard=f"{k}/3")["to_run"] for k in range(3)]
    assert sum(shards) == len(everything) and max(shards) - min(shards) <= 1
    with pytest.raises(PetlError, match="--shard '3/3': K must be in 0..N-1"):
        run_sweep(path, dry_run=True, shard="3/3")
    with pytest.raises(PetlError, match="expected K/N"):
        run_sweep(path, dry_run=True, shard="half")
    # records far larger than a pipe buffer, written by 4 processes at once, come back as whole lines
    import multiprocessing

    target = tmp_path / "shared.jsonl"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.starmap(_append_many, [(str(target), w) for w in range(4)])
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert sorted((r["worker"], r["i"]) for r in records) == [(w, i) for w in range(4) for i in range(25)]


def _append_many(path: str, worker: int) -> None:
    from petl.results import append_jsonl

    for i in range(25):
        append_jsonl(path, {"worker": worker, "i": i, "pad": "x" * 70_000})


def test_sweep_records_resumes_keeps_failures_and_reports(tmp_path, glue_dir, monkeypatch):
    # a rank larger than the hidden size fails that cell only; the others run
    path = _grid(tmp_path, glue_dir, broken={"method": "lora", "lora_layers": "1", "lora_rank": 100000})
    summary = run_sweep(path)
    assert summary == {"cells": 6, "to_run": 6, "ran": 6, "failed": 1}
    lines = [json.loads(x) for x in (tmp_path / "tiny.jsonl").read_text().splitlines()]
    assert len(lines) == 6
    failed = [x for x in lines if x["status"] == "failed"]
    assert len(failed) == 1 and "rank" in failed[0]["error"] and failed[0]["cell_id"] == "mrpc/broken/seed=1"
    ok = {x["cell_id"]: x for x in lines if x["status"] == "ok"}
    assert ok["mrpc/lora/layer=0/seed=1"]["frozen_layer_cache"] is None  # layer 0: nothing to cache
    assert ok["mrpc/lora/layer=1/seed=1"]["frozen_layer_cache"]["start_layer"] == 1
    assert ok["mrpc/raw/layer=1/seed=1"]["trainable_parameters_without_head"] == 0
    dims = {x["setting"]["adapter_dim"]: x["trainable_parameters_without_head"] for x in lines if x["method_name"] == "adapter-dim"}
    assert dims[4] > dims[1] > 0
    # re-run: only the failed cell is tried again; nothing already finished is repeated or lost
    again = run_sweep(path)
    assert again["to_run"] == 1 and len((tmp_path / "tiny.jsonl").read_text().splitlines()) == 7
    assert run_sweep(path, retry_failed=False)["to_run"] == 0
    # report: figures and the table from the JSONL alone
    written = {p.name for p in write_report(str(tmp_path / "tiny.jsonl"), str(tmp_path / "fig"))}
    assert {"scale_up_mrpc_minilm-l6.png", "scale_up_mrpc_minilm-l6.md", "table_tiny_minilm-l6.md"} <= written
    # a grid with a setting axis is a scale-up study: its per-layer view goes into the scale_up_ files,
    # so it never overwrites the layers_ files of a layer study of the same task and model
    assert not any(name.startswith("layers_") for name in written)
    scale_md = (tmp_path / "fig" / "scale_up_mrpc_minilm-l6.md").read_text()
    assert "| adapter-dim: adapter_dim | 1 | 4 |" in scale_md and "| lora |" in scale_md
    layer_only = tmp_path / "layer_only.jsonl"
    layer_only.write_text("".join(json.dumps(x) + "\n" for x in lines if x["method_name"] != "adapter-dim"))
    written = {p.name for p in write_report(str(layer_only), str(tmp_path / "fig2"))}
    assert {"layers_mrpc_minilm-l6.png", "layers_mrpc_minilm-l6.md"} <= written and not any("scale_up" in n for n in written)
    table = (tmp_path / "fig" / "table_tiny_minilm-l6.md").read_text()
    assert "MRPC, split heldout" in table and "seeds 1" in table and "gap bridged" in table
    # the constant predictor: stored by run_glue, or recomputed from the data for records without it
    record = next(x for x in lines if x["status"] == "ok")
    stored = baseline_score(record)
    assert 50 < stored < 100 and f"| constant predictor | {stored:.1f} | 0 |" in table
    old = {k: v for k, v in record.items() if k != "baselines"}
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    assert baseline_score(old) == pytest.approx(stored)
    old["split"] = {**old["split"], "fingerprints": {**old["split"]["fingerprints"], "test": "0" * 12}}
    assert baseline_score(old) is None  # a different split than the one recorded: no baseline
    # another metric than the selection metric (F1 on MRPC): accuracy, in files of their own
    written = {p.name for p in write_report(str(tmp_path / "tiny.jsonl"), str(tmp_path / "fig"), metric="accuracy")}
    assert {"scale_up_mrpc_minilm-l6_accuracy.png", "scale_up_mrpc_minilm-l6_accuracy.md", "table_tiny_minilm-l6_accuracy.md"} <= written
    lora = ok["mrpc/lora/layer=1/seed=1"]["reported_metrics"]["test"]["accuracy"]
    by_layer = (tmp_path / "fig" / "scale_up_mrpc_minilm-l6_accuracy.md").read_text()
    lora_row = next(line for line in by_layer.splitlines() if line.startswith("| lora |")).split(" | ")  # mean [95% CI] per layer
    first = 100 * ok["mrpc/lora/layer=0/seed=1"]["reported_metrics"]["test"]["accuracy"]
    assert "accuracy (%) on the reported split" in by_layer
    assert lora_row[1].startswith(f"{first:.1f}") and lora_row[2].startswith(f"{100 * lora:.1f} [")
    with pytest.raises(PetlError, match="--metric 'pearson': no record"):
        write_report(str(tmp_path / "tiny.jsonl"), str(tmp_path / "fig"), metric="pearson")


def test_ctrl_c_keeps_the_finished_cells_and_says_how_to_go_on_in_one_line(tmp_path, glue_dir, monkeypatch, capsys):
    """Ctrl+C in the middle of a sweep: the cells already recorded stay, one `interrupted:` line (not a
    traceback) says how many and how to continue, exit status 130; the same command then runs the rest."""
    import petl.experiment

    calls = []

    def fake_run(model_args, data_args, petl_args, training_args, cache_when_valid=False):
        calls.append(training_args.seed)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return {"task": data_args.task_name, "selection_metric": "accuracy", "best_validation_score": 0.5,
                "validation_metrics": {"accuracy": 0.5}, "test_metrics": {"accuracy": 0.5}}  # fmt: skip

    monkeypatch.setattr(petl.experiment, "run", fake_run)
    path = write_grid(tmp_path, glue_dir, "ctrlc", {"num_hidden_layers": 2}, {"head": {"method": "head"}}, seeds=[1, 2, 3])
    assert main([path, "--no_ray"]) == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    results = tmp_path / "ctrlc.jsonl"
    assert line == f"interrupted: the sweep stopped after 1 of 3 cells; finished cells are in {results}: run the same command to go on"
    assert len(results.read_text().splitlines()) == 1
    assert main([path, "--no_ray"]) == 0 and len(results.read_text().splitlines()) == 3


def test_table_relative_improvement_and_gap_bridged():
    def rec(name, value, seed=1, layer=None):
        return {"method_name": name, "layer": layer, "task": "rte", "seed": seed, "selection_metric": "accuracy",
                "reported_metrics": {"test": {"accuracy": value}}, "validation_metrics": {"accuracy": value}, "setting": {}}  # fmt: skip

    records = [rec("raw-avg", 0.50), rec("raw-cls", 0.55), rec("lora", 0.60, layer=5), rec("lora", 0.62, seed=2, layer=5),
               rec("full", 0.71)]  # fmt: skip
    header, rows, csv_rows = glue_table(records)
    assert header[1] == "rte"
    by = {r[0]: r for r in rows}
    assert by["lora"][1] == "**61.0 ± 1.4 @5**"  # records without test predictions: mean ± std, no CI
    assert by["relative improvement"][1] == "+10.9% (no CI)"  # (61 - 55) / 55
    assert by["gap bridged"][1] == "37.5% (no CI)"  # (61 - 55) / (71 - 55)

    # where a denominator carries no signal the derived rows say so instead of printing a ratio
    def with_floor(recs, floor):
        return [{**r, "baselines": {"test": {"constant": {"accuracy": floor}}}} for r in recs]

    below_raw = [rec("raw-avg", 0.56), rec("lora", 0.55, layer=5), rec("full", 0.54)]  # RTE on MiniLM-L6
    by = {r[0]: r for r in glue_table(below_raw)[1]}
    assert by["gap bridged"][1] == "n/a: full ≤ raw" and by["relative improvement"][1] == "-1.8% (no CI)"
    by = {r[0]: r for r in glue_table(with_floor(below_raw + [rec("full", 0.60, seed=2)], 0.58))[1]}
    assert by["constant predictor"][1] == "58.0" and by["gap bridged"][1] == "n/a: full ≤ constant"
    negative_raw = [rec("raw-avg", -0.03), rec("lora", 0.05, layer=5), rec("full", 0.10)]  # CoLA's MCC
    by = {r[0]: r for r in glue_table(negative_raw)[1]}
    assert by["relative improvement"][1] == "n/a: raw ≤ 0" and by["gap bridged"][1] == "61.5% (no CI)"  # 8 / 13
    by = {r[0]: r for r in glue_table(with_floor(negative_raw, float("nan")))[1]}  # STS-B: no correlation
    assert by["constant predictor"][1] == "undefined" and by["gap bridged"][1] == "61.5% (no CI)"


def test_the_gpu_study_script_lists_both_grids_and_its_tiny_mode_shrinks_them(tmp_path):
    """scripts/study_gpu.sh (issue 20's GPU grids): --dry_run lists the full grids; --tiny derives 1-task, 1-seed,
    1-layer grids writing under /tmp, the smoke test to run before spending a GPU on it."""
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    script = str(REPO / "scripts" / "study_gpu.sh")
    full = subprocess.run(["bash", script, "--dry_run"], env=env, capture_output=True, text=True, check=True).stdout
    assert "sweep study_smollm2: 408 cells" in full and "sweep study_mpnet: 1262 cells" in full
    tiny = subprocess.run(["bash", script, "--tiny", "--dry_run"], env=env, capture_output=True, text=True, check=True).stdout
    heads = [line for line in tiny.splitlines() if line.startswith("sweep ")]
    assert [h.split(":")[0] for h in heads] == ["sweep study_smollm2_tiny", "sweep study_mpnet_tiny"]
    assert all(f"{tmp_path}/study_gpu_tiny." in h for h in heads) and "figures/results" not in tiny
    cells = [line for line in tiny.splitlines() if line.startswith("  ")]
    assert cells and all("/seed=1" in c or "seed(s) 1" in c for c in cells) and not any("sst2/" in c for c in cells)
    (grids,) = tmp_path.glob("study_gpu_tiny.*")
    tiny_grid = load_grid(str(grids / "study_smollm2.yaml"))
    assert tiny_grid["arguments"]["max_train_samples"] == 32 and tiny_grid["arguments"]["num_train_epochs"] == 1

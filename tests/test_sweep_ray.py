"""Sweeps on Ray: cells as Ray tasks give the sequential path's metrics, run on a 2-node cluster through
--ray_address, a killed worker's cell is retried into one record, tuned groups choose on validation,
bad addresses / resources / tune blocks are one-line errors, and the frozen-layer cache is built once."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import write_grid

from petl.results import read_jsonl
from petl.sweep import main, run_sweep

ray = pytest.importorskip("ray")

ARGUMENTS = {
    "num_hidden_layers": 2,
    "pooler_type": "avg",
    "split_mode": "heldout",
    "max_train_samples": 32,
    "max_eval_samples": 32,
    "num_train_epochs": 1,
    "learning_rate": 1e-3,
    "per_device_train_batch_size": 16,
}
SIX_CELLS = {
    "lora": {"method": "lora", "lora_layers": "{layer}"},  # layer 0 uncached, layer 1 from the shared cache
    "adapter-dim": {"method": "pfeiffer", "adapter_layers": "1", "adapter_dim": [1, 4]},
    "head": {"method": "head"},
    "raw": {"method": "head", "num_hidden_layers": "{next}", "layers": [0]},
}


def _grid(folder: Path, glue_dir, methods: dict, **extra) -> str:
    arguments = extra.pop("arguments", None)
    if arguments is not None:
        arguments = {k: v for k, v in arguments.items() if k != "glue_dir"}
    return write_grid(folder, glue_dir, "ray", ARGUMENTS if arguments is None else arguments, methods, **extra)


def _records(folder: Path) -> dict[str, dict]:
    records, unreadable = read_jsonl(folder / "ray.jsonl")
    assert not unreadable
    return {r["cell_id"]: r for r in records}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module: 2 CPUs, on the loopback (conftest)."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_six_cells_on_ray_two_at_a_time_give_the_sequential_metrics(tmp_path, glue_dir, local_ray):
    on_ray = _grid(tmp_path / "ray", glue_dir, SIX_CELLS, arguments={"glue_dir": str(glue_dir), **ARGUMENTS, "report_to": "tensorboard"})
    summary = run_sweep(on_ray, use_ray=True, cpus_per_cell=1)
    assert summary == {"cells": 6, "to_run": 6, "ran": 6, "failed": 0}
    sequential = _grid(tmp_path / "seq", glue_dir, SIX_CELLS)
    assert run_sweep(sequential)["ran"] == 6
    ray_records, seq_records = _records(tmp_path / "ray"), _records(tmp_path / "seq")
    assert set(ray_records) == set(seq_records) and len(ray_records) == 6
    for cell_id, rec in ray_records.items():
        seq = seq_records[cell_id]
        assert rec["status"] == seq["status"] == "ok" and rec["attempts"] == 1
        assert rec["arguments_hash"] == seq["arguments_hash"]
        for split in ("validation_metrics", "test_metrics"):
            for metric in ("accuracy", "f1", "loss"):
                assert rec[split][metric] == pytest.approx(seq[split][metric], rel=1e-4, abs=1e-5), (cell_id, split, metric)
        assert rec["hardware"]["torch_threads"] == 1  # torch threads follow cpus_per_cell
    # two at a time: some cells ran side by side
    spans = sorted((r["cell_started"], r["cell_started"] + r["cell_seconds"]) for r in ray_records.values())
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))
    # report_to in the grid's arguments reached the Ray workers' cells: TensorBoard logs under the sweep's output_dir
    assert list((tmp_path / "ray" / "out" / "runs").rglob("events.out.tfevents.*"))
    # resume: nothing runs again
    assert run_sweep(on_ray, use_ray=True, cpus_per_cell=1)["ran"] == 0


def test_a_killed_worker_is_retried_into_one_record(tmp_path, glue_dir, local_ray, monkeypatch):
    marker = tmp_path / "killed-once"
    monkeypatch.setenv("PETL_SWEEP_TEST_KILL_ONCE", str(marker))  # the first training step SIGKILLs its worker
    path = _grid(tmp_path, glue_dir, {"lora": {"method": "lora", "lora_layers": "1"}})
    assert run_sweep(path, use_ray=True, cpus_per_cell=1) == {"cells": 1, "to_run": 1, "ran": 1, "failed": 0}
    assert marker.is_file()
    lines = read_jsonl(tmp_path / "ray.jsonl")[0]
    assert len(lines) == 1 and lines[0]["status"] == "ok" and lines[0]["attempts"] == 2
    assert len(lines[0]["retried_after"]) == 1 and "Worker" in lines[0]["retried_after"][0]
    # without retries, a lost worker is a failed cell, still one record
    marker.unlink()
    (tmp_path / "ray.jsonl").unlink()
    assert run_sweep(path, use_ray=True, cpus_per_cell=1, max_retries=0)["failed"] == 1
    lines = read_jsonl(tmp_path / "ray.jsonl")[0]
    assert len(lines) == 1 and lines[0]["status"] == "failed" and lines[0]["attempts"] == 1 and "worker lost" in lines[0]["error"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "flags,extra,message",
    [
        (["--ray_address", "127.0.0.1:{port}"], {}, "--ray_address '127.0.0.1:{port}': no Ray cluster answers there"),
        (["--cpus_per_cell", "3"], {}, "cpus_per_cell 3 (--cpus_per_cell): no node of the Ray cluster has that many CPUs"),
        ([], {"gpus_per_cell": 0.5}, "gpus_per_cell 0.5 (grid file"),
        ([], {"tune": {"lerning_rate": [1e-4, 1e-3]}}, "tune: 'lerning_rate' is not a run_glue.py argument that can be searched"),
        ([], {"tune": {"learning_rate": {"loguniform": [0, 1]}}}, "learning_rate: loguniform needs low > 0"),
        ([], {"tune": {"learning_rate": [1e-3], "scheduler": "pbt"}}, "tune scheduler 'pbt' is not one of fifo, asha"),
    ],
)  # fmt: skip
def test_bad_addresses_resources_and_tune_blocks_are_one_line_and_write_nothing(flags, extra, message, tmp_path, glue_dir, local_ray,
                                                                                capsys):  # fmt: skip
    port = _free_port()
    path = _grid(tmp_path, glue_dir, {"head": {"method": "head"}}, **extra)
    began = time.time()
    assert main([path, *[f.format(port=port) for f in flags]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message.format(port=port) in err[0], err
    assert time.time() - began < 20
    assert not (tmp_path / "ray.jsonl").exists() and not (tmp_path / "out").exists()


def test_a_tuned_group_chooses_on_validation_never_on_test(tmp_path, glue_dir, monkeypatch):
    """Three learning rates on seed 1: 1e-3 is best on validation, 1e-2 best on test. 1e-3 is chosen,
    seed 1's final record is its run, seeds 2 and 3 train with it; a re-run trains nothing."""
    import petl.experiment

    validation = {1e-4: 0.60, 1e-3: 0.80, 1e-2: 0.70}
    test = {1e-4: 0.60, 1e-3: 0.65, 1e-2: 0.90}
    calls = []

    def fake_run(model_args, data_args, petl_args, training_args, cache_when_valid=False):
        lr = training_args.learning_rate
        calls.append((training_args.seed, lr))
        return {"task": data_args.task_name, "selection_metric": "f1", "best_validation_score": validation[lr],
                "validation_metrics": {"f1": validation[lr]}, "test_metrics": {"f1": test[lr]},
                "reported_metrics": {"test": {"f1": test[lr]}}, "test_predictions": {"ids": [0, 1], "values": [1, 0]}}  # fmt: skip

    monkeypatch.setattr(petl.experiment, "run", fake_run)
    path = _grid(tmp_path, glue_dir, {"lora": {"method": "lora", "lora_layers": "1"}}, seeds=[1, 2, 3],
                 tune={"learning_rate": [1e-4, 1e-3, 1e-2]})  # fmt: skip
    assert run_sweep(path, dry_run=True)["to_run"] == 6  # 3 candidates, then 3 finals at most
    run_sweep(path)
    assert sorted(calls) == [(1, 1e-4), (1, 1e-3), (1, 1e-2), (2, 1e-3), (3, 1e-3)]
    records = _records(tmp_path)
    candidates = [r for r in records.values() if r.get("tune_role") == "candidate"]
    finals = {r["seed"]: r for r in records.values() if r.get("tune_role") == "final"}
    assert len(candidates) == 3 and all(r["seed"] == 1 and r["tune_group"] == "mrpc/lora" for r in candidates)
    assert sorted(finals) == [1, 2, 3] and all(r["cell_id"] == f"mrpc/lora/seed={s}" for s, r in finals.items())
    for rec in finals.values():
        assert rec["tune"]["chosen"] == {"learning_rate": 1e-3} and rec["tune"]["metric"] == "f1" and rec["tune"]["split"] == "validation"
        assert rec["run_arguments"]["learning_rate"] == 1e-3 and rec["test_predictions"] == {"ids": [0, 1], "values": [1, 0]}
        scores = {c["arguments"]["learning_rate"]: c["validation_score"] for c in rec["tune"]["candidates"]}
        assert scores == validation
    assert finals[1]["reused_from"] == "mrpc/lora/tune.learning_rate=0.001/seed=1" and finals[1]["test_metrics"]["f1"] == 0.65
    assert all(rec["attempts"] == 1 for rec in finals.values())  # every finished record says how often it ran
    calls.clear()
    assert run_sweep(path, dry_run=True)["to_run"] == 0  # the choice is known from the records: nothing left
    assert run_sweep(path)["ran"] == 0 and calls == []  # resumed: no candidate and no final trains again


def test_two_cells_wanting_one_cache_build_it_once(tmp_path, monkeypatch):
    """The second cell waits on the cache's lock while the first builds it, then reuses it."""
    from conftest import collate, perturbed_petl_model, token_dataset

    import petl.cache as cache

    computed = []
    compute = cache._compute_cache

    def slow_compute(*args, **kwargs):
        computed.append(threading.get_ident())
        time.sleep(0.5)  # the other cell arrives while this one builds
        return compute(*args, **kwargs)

    monkeypatch.setattr(cache, "_compute_cache", slow_compute)
    model = perturbed_petl_model("bert", "lora", {"layers": "1-2"})
    dataset = token_dataset()
    built = [None, None]

    def build(i: int) -> None:
        built[i] = cache.build_cache(model, 1, dataset, collate, cache_dir=tmp_path / "cache")

    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(computed) == 1
    assert built[0].states.equal(built[1].states) and len(list((tmp_path / "cache").glob("[0-9a-f]*"))) == 1


def test_a_grid_runs_on_a_two_node_cluster_through_ray_address(tmp_path, glue_dir):
    """Two Ray nodes on this machine (own processes, loopback): the sweep connects with --ray_address."""
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the module's local Ray: this test's driver connects to the cluster instead
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        path = _grid(tmp_path, glue_dir, {"head": {"method": "head", "learning_rate": [1e-3, 1e-2]}})
        assert main([path, "--ray_address", cluster.address, "--cpus_per_cell", "1"]) == 0
        records = _records(tmp_path)
        assert len(records) == 2 and all(r["status"] == "ok" for r in records.values())
        assert len({r["ray_node_id"] for r in records.values()}) == 2  # one cell on each node
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_tuned_group_whose_candidates_all_failed_is_recorded_once(tmp_path, glue_dir, monkeypatch):
    """Every candidate fails: each seed gets one failed final record, and a resume with --skip_failed
    appends nothing more (it once appended the failed finals again on every resume)."""
    import petl.experiment

    def failing_run(*args, **kwargs):
        raise RuntimeError("diverged")

    monkeypatch.setattr(petl.experiment, "run", failing_run)
    path = _grid(tmp_path, glue_dir, {"lora": {"method": "lora", "lora_layers": "1"}}, seeds=[1, 2], tune={"learning_rate": [1e-4, 1e-3]})
    run_sweep(path)
    lines = read_jsonl(tmp_path / "ray.jsonl")[0]
    assert len(lines) == 4 and sum(r.get("tune_role") == "final" for r in lines) == 2
    for _ in range(2):
        assert run_sweep(path, retry_failed=False)["failed"] == 0
        assert len(read_jsonl(tmp_path / "ray.jsonl")[0]) == 4


@pytest.mark.parametrize("name", ["split_mode", "max_eval_samples", "metric_for_best_model"])
def test_a_tune_block_cannot_vary_what_candidates_are_scored_on(name, tmp_path, glue_dir, capsys):
    values = {"split_mode": ["heldout", "official"], "max_eval_samples": [16, 1000], "metric_for_best_model": ["accuracy", "f1"]}
    path = _grid(tmp_path, glue_dir, {"head": {"method": "head"}}, tune={name: values[name]})
    assert main([path, "--no_ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"tune: {name!r} decides what the candidates are scored on" in err[0], err
    assert not (tmp_path / "ray.jsonl").exists()


def test_a_grid_cannot_give_cells_a_results_file_of_their_own(tmp_path, glue_dir, capsys):
    """Only the driver writes the sweep's JSONL: a results_file in the grid's arguments is refused."""
    path = _grid(tmp_path, glue_dir, {"head": {"method": "head", "results_file": str(tmp_path / "ray.jsonl")}})
    assert main([path, "--no_ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "results_file is the sweep's own" in err[0], err
    assert not (tmp_path / "ray.jsonl").exists()


def test_an_address_where_something_else_listens_is_one_line_within_seconds(tmp_path, glue_dir, capsys):
    """A port that accepts TCP but is no Ray GCS (say the dashboard's 8265): ray.init would retry for a
    minute and print Ray's own warnings; the probe answers in seconds."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        path = _grid(tmp_path, glue_dir, {"head": {"method": "head"}})
        began = time.time()
        assert main([path, "--ray_address", address]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no Ray GCS answers within" in err[0], err
    assert time.time() - began < 20 and not (tmp_path / "ray.jsonl").exists()


def test_a_tune_search_with_asha_records_candidates_and_leaves_no_folders(tmp_path, glue_dir, local_ray):
    """A `tune:` block with a distribution and ASHA runs one Ray Tune search on seed 1 (real trainings):
    each trial is a candidate record (finished or stopped by ASHA), the validation-best one is seed 1's
    final, seed 2 trains with its values, and neither <output_dir>/ray nor Ray's staging copy is left."""
    from ray._private import worker

    if not ray.is_initialized():  # an earlier test of the module (the two-node cluster) shut the module's Ray down
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    arguments = {"glue_dir": str(glue_dir), **ARGUMENTS, "metric_for_best_model": "f1", "eval_strategy": "steps", "eval_steps": 1}
    tune = {"learning_rate": {"loguniform": [1e-4, 1e-2]}, "trials": 2, "scheduler": "asha"}
    path = _grid(tmp_path, glue_dir, {"head": {"method": "head"}}, seeds=[1, 2], arguments=arguments, tune=tune)
    assert run_sweep(path, use_ray=True, cpus_per_cell=1)["failed"] == 0
    records = list(_records(tmp_path).values())
    candidates = [r for r in records if r.get("tune_role") == "candidate"]
    finals = {r["seed"]: r for r in records if r.get("tune_role") == "final"}
    assert len(candidates) == 2 and {r["status"] for r in candidates} <= {"ok", "stopped"}
    assert all(r["tune_search"] and "/trial=" in r["cell_id"] for r in candidates)
    assert sorted(finals) == [1, 2] and finals[1]["tune"]["metric"] == "f1" and finals[1]["tune"]["split"] == "validation"
    chosen = finals[1]["tune"]["chosen"]["learning_rate"]
    assert finals[2]["run_arguments"]["learning_rate"] == chosen and finals[1]["reused_from"] == finals[1]["tune"]["chosen_cell_id"]
    assert not (tmp_path / "out" / "ray").exists()
    session = Path(worker._global_node.get_session_dir_path())
    assert not list((session / "artifacts").glob("*/tune-*"))
    assert run_sweep(path, use_ray=True, cpus_per_cell=1)["ran"] == 0  # resumed: the search is not run again


def test_an_interrupted_tune_search_records_no_candidate_and_runs_again(tmp_path, glue_dir, local_ray, monkeypatch, capsys):
    """Ctrl+C ends Ray Tune's fit() early and without an error: its unfinished trials are not candidates
    "stopped by ASHA" (a later run would reuse them and choose among them): the sweep records none, says
    so in one line, exits 130, and the next run searches again."""
    from tune_interrupt import interrupting_tune_configs

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    interrupting_tune_configs(monkeypatch)
    arguments = {"glue_dir": str(glue_dir), **ARGUMENTS, "metric_for_best_model": "f1", "eval_strategy": "steps", "eval_steps": 1}
    tune = {"learning_rate": {"loguniform": [1e-4, 1e-2]}, "trials": 2, "scheduler": "asha"}
    path = _grid(tmp_path, glue_dir, {"head": {"method": "head"}}, arguments=arguments, tune=tune)
    assert main([path, "--cpus_per_cell", "1"]) == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("interrupted: ") and "run the same command to go on" in line, line
    jsonl = tmp_path / "ray.jsonl"
    assert not jsonl.exists() or not [r for r in read_jsonl(jsonl)[0] if r.get("tune_role") == "candidate"]
    assert run_sweep(path, use_ray=True, cpus_per_cell=1)["failed"] == 0
    records = list(_records(tmp_path).values())
    assert len([r for r in records if r.get("tune_role") == "candidate"]) == 2 and [r["tune_role"] for r in records].count("final") == 1


def test_tune_candidates_report_the_grids_own_selection_metric():
    """ASHA stops candidates on what the run selects by: the grid's metric_for_best_model, else the task's."""
    from petl.tune_cells import _selection_metric

    assert _selection_metric({}, "mrpc") == ("f1", "max")  # the task's own
    assert _selection_metric({"metric_for_best_model": "accuracy"}, "mrpc") == ("accuracy", "max")  # the grid's wins
    assert _selection_metric({"metric_for_best_model": "eval_loss"}, "mrpc") == ("loss", "min")


def test_a_tuned_groups_finals_run_before_the_next_tasks_cells(tmp_path, glue_dir, monkeypatch):
    """Cells run in the grid's order, tasks outermost: MRPC's finals (seed 2) come before RTE's candidates,
    so a sweep cut short has its first task whole (finals once waited behind every other candidate)."""
    import petl.experiment

    calls = []

    def fake_run(model_args, data_args, petl_args, training_args, cache_when_valid=False):
        calls.append((data_args.task_name, training_args.seed))
        return {"task": data_args.task_name, "selection_metric": "accuracy", "best_validation_score": training_args.learning_rate,
                "validation_metrics": {"accuracy": 0.5}, "test_metrics": {"accuracy": 0.5}}  # fmt: skip

    monkeypatch.setattr(petl.experiment, "run", fake_run)
    path = _grid(tmp_path, glue_dir, {"lora": {"method": "lora", "lora_layers": "1"}}, tasks=["mrpc", "rte"], seeds=[1, 2],
                 tune={"learning_rate": [1e-4, 1e-3]})  # fmt: skip
    run_sweep(path)
    assert calls == [("mrpc", 1), ("mrpc", 1), ("mrpc", 2), ("rte", 1), ("rte", 1), ("rte", 2)]


def test_ray_tune_groups_keep_max_cells_and_retry_failed_trials(tmp_path, glue_dir, monkeypatch):
    """Ray Tune groups obey the cell queue's rules: a search counts as `trials` cells against --max_cells
    (later groups wait for the next run); a recorded search with a failed trial is searched again unless
    --skip_failed; a whole one is reused."""
    from types import SimpleNamespace

    import petl.experiment
    import petl.tune_cells

    searches, outcome = [], {"fail": False}

    def fake_search(driver, seed_cell, spec, key, cpus, gpus):
        searches.append(seed_cell.group_id)
        n = len(searches)
        ok = {"status": "ok", "selection_metric": "accuracy", "best_validation_score": 0.7, "validation_metrics": {"accuracy": 0.7}}
        results = [SimpleNamespace(config={"learning_rate": 1e-3}, metrics={"record_json": json.dumps(ok), "trial_id": f"a{n}"},
                                   error=None, path=f"x/trial_a{n}")]  # fmt: skip
        if outcome["fail"]:
            failed = SimpleNamespace(config={"learning_rate": 1e-2}, metrics={}, error=RuntimeError("diverged"), path=f"x/trial_b{n}")
            results.append(failed)
        else:
            results.append(SimpleNamespace(config={"learning_rate": 1e-2}, metrics={"record_json": json.dumps(ok), "trial_id": f"b{n}"},
                                           error=None, path=f"x/trial_b{n}"))  # fmt: skip
        return results

    def fake_run(model_args, data_args, petl_args, training_args, cache_when_valid=False):
        return {"task": data_args.task_name, "selection_metric": "accuracy", "best_validation_score": 0.7,
                "validation_metrics": {"accuracy": 0.7}, "test_metrics": {"accuracy": 0.5}}  # fmt: skip

    monkeypatch.setattr(petl.tune_cells, "_tune_search", fake_search)
    monkeypatch.setattr(petl.experiment, "run", fake_run)
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    tune = {"learning_rate": {"loguniform": [1e-4, 1e-2]}, "trials": 2}
    path = _grid(tmp_path, glue_dir, {"lora": {"method": "lora", "lora_layers": "{layer}"}}, seeds=[1, 2], tune=tune)
    run_sweep(path, max_cells=1)
    assert searches == ["mrpc/lora/layer=0"]  # layer 1's search waits: the budget is spent
    outcome["fail"] = True
    run_sweep(path)
    assert searches == ["mrpc/lora/layer=0", "mrpc/lora/layer=1"]  # layer 0's whole search is reused
    run_sweep(path, retry_failed=False)
    assert len(searches) == 2  # --skip_failed: layer 1's failed trial stays
    outcome["fail"] = False
    run_sweep(path)
    assert searches[2:] == ["mrpc/lora/layer=1"]  # retried: searched again
    run_sweep(path)
    assert len(searches) == 3


def test_a_choice_on_the_grids_edge_extends_the_grid_on_validation(tmp_path, glue_dir, monkeypatch):
    """`extend: 2`: validation peaks past the grid's top (at 0.05), so 1e-2 wins, 0.0333 is tried and wins,
    0.111 is tried and loses; seeds 2 and 3 train with 0.0333. Test scores (best at 1e-3) choose nothing.
    A resumed sweep trains nothing and its dry run counts nothing left."""
    import math

    import petl.experiment

    calls = []

    def fake_run(model_args, data_args, petl_args, training_args, cache_when_valid=False):
        lr = training_args.learning_rate
        calls.append((training_args.seed, lr))
        validation = 0.9 - (math.log10(lr) - math.log10(0.05)) ** 2 / 10
        test = 0.9 - (math.log10(lr) - math.log10(1e-3)) ** 2 / 10
        return {"task": data_args.task_name, "selection_metric": "accuracy", "best_validation_score": validation,
                "validation_metrics": {"accuracy": validation}, "test_metrics": {"accuracy": test}}  # fmt: skip

    monkeypatch.setattr(petl.experiment, "run", fake_run)
    tune = {"learning_rate": [1e-3, 3e-3, 1e-2], "extend": 2}
    path = _grid(tmp_path, glue_dir, {"lora": {"method": "lora", "lora_layers": "1"}}, seeds=[1, 2, 3], tune=tune)
    run_sweep(path)
    assert calls == [(1, 1e-3), (1, 3e-3), (1, 1e-2), (1, 0.0333), (1, 0.111), (2, 0.0333), (3, 0.0333)]
    finals = {r["seed"]: r for r in _records(tmp_path).values() if r.get("tune_role") == "final"}
    assert sorted(finals) == [1, 2, 3] and all(r["tune"]["chosen"] == {"learning_rate": 0.0333} for r in finals.values())
    assert len(finals[1]["tune"]["candidates"]) == 5
    calls.clear()
    assert run_sweep(path, dry_run=True)["to_run"] == 0
    assert run_sweep(path)["ran"] == 0 and calls == []


def test_extend_is_refused_where_it_cannot_apply(tmp_path, glue_dir, capsys):
    for tune, message in [
        ({"learning_rate": [1e-3, 1e-2], "extend": -1}, "tune extend -1 is invalid"),
        ({"learning_rate": {"loguniform": [1e-4, 1e-2]}, "extend": 1}, "tune extend applies to lists of values"),
    ]:
        path = _grid(tmp_path, glue_dir, {"lora": {"method": "lora", "lora_layers": "1"}}, tune=tune)
        assert main([path, "--no_ray"]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "ray.jsonl").exists()


def test_candidates_added_past_the_edge_after_the_finals_reach_the_report(tmp_path, glue_dir, monkeypatch):
    """A grid that gains `extend: 1` after its finals ran: the candidate past the edge trains, loses, the
    finals stand (not re-run), and the report's evidence for the choice lists all four candidates."""
    import petl.experiment
    from petl.report import build_arms, load_records

    validation = {1e-3: 0.80, 3e-3: 0.70, 1e-2: 0.60, 0.000333: 0.75}

    def fake_run(model_args, data_args, petl_args, training_args, cache_when_valid=False):
        score = validation[training_args.learning_rate]
        return {"task": data_args.task_name, "selection_metric": "accuracy", "best_validation_score": score,
                "validation_metrics": {"accuracy": score}, "test_metrics": {"accuracy": 0.5}}  # fmt: skip

    monkeypatch.setattr(petl.experiment, "run", fake_run)
    methods = {"lora": {"method": "lora", "lora_layers": "1"}}
    run_sweep(_grid(tmp_path, glue_dir, methods, seeds=[1, 2], tune={"learning_rate": [1e-3, 3e-3, 1e-2]}))
    lines = len(read_jsonl(tmp_path / "ray.jsonl")[0])
    run_sweep(_grid(tmp_path, glue_dir, methods, seeds=[1, 2], tune={"learning_rate": [1e-3, 3e-3, 1e-2], "extend": 1}))
    assert len(read_jsonl(tmp_path / "ray.jsonl")[0]) == lines + 1  # the candidate past the edge, nothing else
    (arm,) = build_arms(load_records(str(tmp_path / "ray.jsonl")))
    assert arm.chosen == {"learning_rate": 1e-3} and len(arm.candidates) == 4
    assert arm.candidates['{"learning_rate": 0.000333}'] == pytest.approx(75.0)


def test_tune_layer_chooses_once_at_one_layer_for_every_layer(tmp_path, glue_dir, monkeypatch):
    """`tune_layer: 1`: the candidates train at layer 1 on seed 1, the validation-best value trains every
    layer and seed (layer 1 seed 1 reuses the candidate's run); one group, named by its tune layer."""
    import petl.experiment

    calls = []
    validation, test = {1e-4: 0.6, 1e-3: 0.8}, {1e-4: 0.9, 1e-3: 0.5}

    def fake_run(model_args, data_args, petl_args, training_args, cache_when_valid=False):
        lr = training_args.learning_rate
        calls.append((petl_args.lora_layers, training_args.seed, lr))
        return {"task": data_args.task_name, "selection_metric": "accuracy", "best_validation_score": validation[lr],
                "validation_metrics": {"accuracy": validation[lr]}, "test_metrics": {"accuracy": test[lr]}}  # fmt: skip

    monkeypatch.setattr(petl.experiment, "run", fake_run)
    methods = {"lora": {"method": "lora", "lora_layers": "{layer}", "tune_layer": 1, "tune": {"learning_rate": [1e-4, 1e-3]}}}
    path = _grid(tmp_path, glue_dir, methods, seeds=[1, 2])
    run_sweep(path)
    assert calls[:2] == [("1", 1, 1e-4), ("1", 1, 1e-3)]
    assert sorted(calls[2:]) == [("0", 1, 1e-3), ("0", 2, 1e-3), ("1", 2, 1e-3)]
    finals = {(r["layer"], r["seed"]): r for r in _records(tmp_path).values() if r.get("tune_role") == "final"}
    assert sorted(finals) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert {r["tune_group"] for r in finals.values()} == {"mrpc/lora/tune_layer=1"}
    assert finals[(1, 1)]["reused_from"] == "mrpc/lora/layer=1/tune.learning_rate=0.001/seed=1"
    calls.clear()
    assert run_sweep(path)["ran"] == 0 and calls == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [({"tune_layer": 5, "tune": {"learning_rate": [1e-4, 1e-3]}}, "tune_layer 5 is not one of its layers; allowed: 0, 1"),
     ({"tune_layer": 1}, "tune_layer 1 without a tune: block of its own")],
)  # fmt: skip
def test_a_bad_tune_layer_is_one_line(spec, message, tmp_path, glue_dir, capsys):
    path = _grid(tmp_path, glue_dir, {"lora": {"method": "lora", "lora_layers": "{layer}", **spec}})
    assert main([path, "--no_ray"]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "ray.jsonl").exists()

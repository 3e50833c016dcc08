"""Tuned cells: a grid's `tune:` block, its candidates, and the choice made on validation only.

    tune: {learning_rate: [1.0e-4, 3.0e-4, 1.0e-3]}                      # a grid: every value is a candidate
    tune: {learning_rate: {loguniform: [1.0e-5, 1.0e-3]}, trials: 8, scheduler: asha}   # Ray Tune draws them
    tune: {learning_rate: [1.0e-4, 3.0e-4, 1.0e-3], extend: 2}           # a grid that grows past its edge

A block sits at the grid's top (every method) or in one method (replacing the top one; `tune: {}`
switches it off for that method). Its keys are run_glue.py arguments that a search may set
(petl/search.py: `is_searchable`), each a list of values or one distribution of petl/search.py
(loguniform, uniform, choice, randint), plus `trials` (how many draws, default 4) and `scheduler`
(`fifo`, default, or `asha`: stop poor draws early), and `extend` (lists only, default 0). A block of
lists alone is expanded into candidate cells that run as ordinary cells; one with a distribution or
`scheduler: asha` runs its candidates as one Ray Tune search per group.

`extend: N`: when the validation-best candidate holds the highest (lowest) of three or more numeric
values of an axis, the best value may lie beyond the grid: one more candidate is trained one step
further (the ratio of the last two values, or their difference where a value is not positive), and
the choice is made again, up to N steps per group. The step is decided by validation scores alone.

For each task x method x layer x setting, the candidates train on the grid's FIRST seed; the one with
the best validation score (the record's `best_validation_score`, the run's selection metric on the
validation split; the test split is never read) is chosen; its run is that seed's final record, and
the chosen values train on every other seed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from petl.errors import Interrupted, PetlError

if TYPE_CHECKING:
    from petl.grid import Cell

TUNE_OPTIONS = {"trials": 4, "scheduler": "fifo", "extend": 0}
SCHEDULERS = ("fifo", "asha")


@dataclass(frozen=True)
class TuneSpec:
    values: dict[str, list] = field(default_factory=dict)  # grid axes
    space: dict[str, dict] = field(default_factory=dict)  # distributions (Ray Tune)
    trials: int = 4
    scheduler: str = "fifo"
    extend: int = 0  # steps past an edge of a list axis (see the module docstring)

    @property
    def uses_ray_tune(self) -> bool:
        return bool(self.space) or self.scheduler == "asha"

    def grid_candidates(self) -> list[dict[str, Any]]:
        """Every combination of the listed values, in the grid's order."""
        return [dict(zip(self.values, combo, strict=True)) for combo in itertools.product(*self.values.values())]

    def describe(self) -> dict:
        described = {"values": self.values, "space": self.space, "trials": self.trials, "scheduler": self.scheduler}
        return {**described, "extend": self.extend} if self.extend else described


# arguments that define the split, the metric or the data a candidate is scored on: never a tuning axis
EVALUATION_ARGUMENTS = frozenset({"split_mode", "split_seed", "heldout_validation_size", "max_eval_samples", "metric_for_best_model",
                                  "greater_is_better", "eval_strategy", "eval_steps", "task_name", "glue_dir", "train_file",
                                  "validation_file", "test_file", "max_train_samples", "train_fraction"})  # fmt: skip


def parse_tune(block: Any, where: str) -> TuneSpec | None:
    """A `tune:` block, checked: every name a searchable run_glue.py argument, every list of values it
    takes, every distribution well-formed (one line naming the key otherwise). None for an empty block."""
    from petl.search import validate_space

    if block is None or block == {}:
        return None
    if not isinstance(block, dict):
        raise PetlError(f"{where}: tune must be a mapping of argument name to a list of values or a distribution, got {block!r}")
    options = {k: block[k] for k in TUNE_OPTIONS if k in block}
    trials, scheduler = options.get("trials", TUNE_OPTIONS["trials"]), options.get("scheduler", TUNE_OPTIONS["scheduler"])
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise PetlError(f"{where}: tune trials {trials!r} is invalid; allowed: an integer >= 1")
    if scheduler not in SCHEDULERS:
        raise PetlError(f"{where}: tune scheduler {scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    extend = options.get("extend", 0)
    if isinstance(extend, bool) or not isinstance(extend, int) or extend < 0:
        raise PetlError(f"{where}: tune extend {extend!r} is invalid; allowed: an integer >= 0 (steps past a grid's edge)")
    names = {k: v for k, v in block.items() if k not in TUNE_OPTIONS}
    if not names:
        raise PetlError(f"{where}: tune names no argument; give e.g. learning_rate: [1.0e-4, 1.0e-3]")
    for name in names:
        if name in EVALUATION_ARGUMENTS:
            raise PetlError(
                f"{where}: tune: {name!r} decides what the candidates are scored on, so their scores could not "
                "be compared (or would read the test split); tune what trains: learning_rate, head_lr, method options"
            )
    as_space = {}
    for name, value in names.items():
        if isinstance(value, list):
            as_space[name] = {"choice": value}
        else:
            as_space[name] = value
    validate_space(as_space, f"{where}: tune")
    values = {k: v for k, v in names.items() if isinstance(v, list)}
    space = {k: v for k, v in names.items() if not isinstance(v, list)}
    if extend and (space or scheduler == "asha"):
        raise PetlError(f"{where}: tune extend applies to lists of values, not to Ray Tune draws (distributions, asha)")
    return TuneSpec(values, space, trials, scheduler, extend)


def beyond_edge(values: dict[str, list], chosen: dict) -> dict | None:
    """The next candidate past an edge when `chosen` holds the highest or lowest value of a numeric axis
    of `values` (the grid's lists, with the values already added past their edges); None when it holds
    no edge or the axis has fewer than three values. One step: the ratio of the edge value to its
    neighbour (3 significant digits), or their difference where a value is not positive."""
    for key, listed in values.items():
        if key not in chosen or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in listed):
            continue
        axis = sorted(set(listed))
        if len(axis) < 3 or chosen[key] not in (axis[0], axis[-1]):
            continue
        edge, inner = (axis[-1], axis[-2]) if chosen[key] == axis[-1] else (axis[0], axis[1])
        nxt = edge * (edge / inner) if edge > 0 and inner > 0 else edge + (edge - inner)
        nxt = int(round(nxt)) if all(isinstance(v, int) for v in listed) else float(f"{nxt:.3g}")
        if nxt not in axis:
            return {**chosen, key: nxt}
    return None


def tune_for_method(grid: dict, spec: dict, where: str) -> TuneSpec | None:
    block = spec["tune"] if "tune" in spec else grid.get("tune")
    return parse_tune(block, where)


def validation_score(record: dict) -> float | None:
    """A finished run's score on the validation split by its selection metric, never the test split."""
    if record.get("status") != "ok":
        return None
    score = record.get("best_validation_score")
    if score is None:
        score = (record.get("validation_metrics") or {}).get(record.get("selection_metric"))
    return None if score is None else float(score)


def choose(candidates: list[tuple[dict, dict]]) -> tuple[dict, dict, dict]:
    """(values, record) pairs of one group's candidates -> (chosen values, chosen record, the `tune`
    block for final records). Ties go to the first candidate in the grid's order."""
    from petl.metrics import greater_is_better

    scored = [(values, rec, validation_score(rec)) for values, rec in candidates]
    ok = [s for s in scored if s[2] is not None]
    if not ok:
        first = next((rec.get("error") for _, rec in candidates if rec.get("error")), "no candidate finished")
        raise PetlError(f"every tuning candidate failed: {first}")
    metric = ok[0][1].get("selection_metric")
    higher = greater_is_better(metric) if metric else True
    best = ok[0]
    for item in ok[1:]:
        if (item[2] > best[2]) if higher else (item[2] < best[2]):
            best = item
    block = {
        "metric": metric,
        "mode": "max" if higher else "min",
        "split": "validation",
        "candidates": [
            {"cell_id": rec.get("cell_id"), "arguments": values, "validation_score": score, "status": rec.get("status")}
            for values, rec, score in scored
        ],
        "chosen": best[0],
        "chosen_cell_id": best[1].get("cell_id"),
    }
    return best[0], best[1], block


def values_key(values: dict) -> str:
    return json.dumps(values, sort_keys=True, default=str)


# ---- groups with distributions or ASHA: one Ray Tune search per group, on the first seed -------------------


def _selection_metric(run_values: dict, task: str) -> tuple[str, str]:
    """The metric the candidates report to Tune (what ASHA stops on) and its direction: the run's own
    metric_for_best_model where the grid sets one, else the task's selection metric."""
    from petl.metrics import greater_is_better, selection_metric
    from petl.tasks import get_task

    metric = run_values.get("metric_for_best_model")
    if not metric:
        info = get_task(task)
        metric = selection_metric(info.name, bool(info.is_regression))
    metric = metric.removeprefix("eval_")
    return metric, "max" if greater_is_better(metric) else "min"


def search_key(grid: dict, seed_cell, spec: TuneSpec) -> str:
    """What a group's Tune search depends on: the seed cell's run arguments and the block. Candidates
    recorded under another key (the grid changed) are not reused."""
    from petl.grid import arguments_hash, run_arguments

    return arguments_hash({"run": run_arguments(grid, seed_cell), "tune": spec.describe()})


def run_tune_groups(driver, groups: list, cpus: float, gpus: float, ray_address: str | None, keep_trials: bool) -> None:
    """Each group's candidates as one Ray Tune search (groups one after another; a search's trials run
    side by side), recorded through the driver. A group whose latest search is recorded whole under the
    same search key is not searched again (unless one of its trials failed and failed cells are retried,
    i.e. no --skip_failed). A search counts as `trials` cells against --max_cells; groups past the budget
    wait for the next run. Tune's folders go to <output_dir>/ray/tune-<key>, removed after the search
    unless `keep_trials`."""
    from petl.grid import record_base
    from petl.ray_runtime import start_ray, stop_ray

    started = start_ray(ray_address)
    try:
        for group in groups:
            seed_cell = group.seeds[0]
            key = search_key(driver.grid, seed_cell, group.spec)
            earlier = [r for r in driver.recorded.values() if r.get("tune_role") == "candidate" and r.get("tune_search") == key
                       and r.get("tune_group") == seed_cell.tune_group_id]  # fmt: skip
            earlier = earlier[-group.spec.trials :]  # the latest search's (records are in the file's order)
            failed = any(r.get("status") not in ("ok", "stopped") for r in earlier)
            if len(earlier) == group.spec.trials and not (failed and driver.retry_failed):
                for rec in earlier:
                    values = rec.get("tune_values") or {}
                    cell = candidate_cell(seed_cell, values, rec.get("tune_trial"))
                    group.candidates.append(cell)
                    group.finished[cell.cell_id] = rec
                continue
            if driver.budget is not None and driver.submitted >= driver.budget:
                continue  # --max_cells reached: the group's search runs in a later run of the sweep
            driver.submitted += group.spec.trials
            try:
                results = _tune_search(driver, seed_cell, group.spec, key, cpus, gpus)
            finally:
                if not keep_trials:
                    remove_search_folders(driver.out, key)
            cells = []
            for result in results:
                values = {k: result.config[k] for k in (*group.spec.values, *group.spec.space)}
                trial = (result.metrics or {}).get("trial_id") or result.path.rsplit("trial_", 1)[-1]
                cell = candidate_cell(seed_cell, values, trial)
                group.candidates.append(cell)
                driver.group_of[cell.cell_id] = group
                cells.append((cell, result))
            for cell, result in cells:
                metrics = result.metrics or {}
                if isinstance(metrics.get("record_json"), str):
                    entry = json.loads(metrics["record_json"])
                    entry.update({k: v for k, v in record_base(driver.grid, cell).items()})
                else:  # stopped early by ASHA, or lost
                    error = None if result.error is None else str(result.error).splitlines()[0]
                    entry = {**record_base(driver.grid, cell), "status": "failed" if error else "stopped",
                             "error": error or "stopped early by the ASHA scheduler"}  # fmt: skip
                    entry["last_validation_score"] = metrics.get("objective")
                entry["tune_search"] = key
                entry.setdefault("attempts", 1)
                driver.finish(cell, entry)
    finally:
        stop_ray(started)


def candidate_cell(first: Cell, values: dict, trial: str | None = None) -> Cell:
    """A tuned group's candidate: its first cell (first seed, tune layer) with the candidate's values;
    `trial`, a Ray Tune candidate's trial id (its draws may repeat values)."""
    return replace(first, arguments={**first.arguments, **values}, tune_role="candidate", candidate=values, trial=trial)


def remove_search_folders(out: Path, key: str) -> None:
    """A group's Tune folder, <output_dir>/ray/tune-<key>, and <output_dir>/ray once empty."""
    shutil.rmtree(out / "ray" / f"tune-{key}", ignore_errors=True)
    with contextlib.suppress(OSError):
        (out / "ray").rmdir()  # when no other search's folder is kept there


def _tune_search(driver, seed_cell, spec: TuneSpec, key: str, cpus: float, gpus: float):
    """One Tuner.fit over the group's space on its first seed: its results, one per trial (Interrupted if it was cut short)."""
    import os

    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from petl.grid import record_base, run_values
    from petl.ray_runtime import asha_scheduler, remove_tune_staging, tune_configs, validation_reporter
    from petl.search import to_tune
    from petl.sweep_engine import CellJob, run_cell
    from petl.trial_log import read_trial_log, unfinished_trials

    grid, cwd = driver.grid, os.getcwd()
    metric, mode = _selection_metric(run_values(grid, seed_cell, driver.out), seed_cell.task)
    threads = max(1, int(cpus))
    param_space = to_tune({**{k: {"choice": v} for k, v in spec.values.items()}, **spec.space})

    def trainable(config: dict) -> None:
        values = {k: config[k] for k in param_space}
        trial = tune.get_context().get_trial_id()
        cell = candidate_cell(seed_cell, values, trial)
        job = CellJob(cell, run_values(grid, cell, driver.out), record_base(grid, cell))
        entry = run_cell(job, threads=threads, cwd=cwd, callbacks=[validation_reporter(f"eval_{metric}")])
        score = validation_score(entry)
        tune.report({"objective": float("nan") if score is None else score, "record_json": json.dumps(entry, default=str)})

    scheduler = asha_scheduler() if spec.scheduler == "asha" else FIFOScheduler()
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": cpus, "gpu": gpus}),
        param_space=param_space,
        **tune_configs(
            name=f"tune-{key}",
            storage=driver.out / "ray",
            mode=mode,
            scheduler=scheduler,
            num_samples=spec.trials,
            max_failures=driver.max_retries,
        ),
    )
    try:
        results = tuner.fit()
    finally:
        remove_tune_staging(f"tune-{key}")
    unfinished = unfinished_trials(results, read_trial_log(Path(results.experiment_path))[1])
    if unfinished:  # Ctrl+C: Ray Tune returned early; its trials are not candidates (a later run would choose among them)
        raise Interrupted(f"the sweep stopped while tuning {seed_cell.cell_id} ({len(unfinished)} of {spec.trials} trials unfinished, "
                          f"none recorded); finished cells are in {driver.results}: run the same command to go on")  # fmt: skip
    return list(results)

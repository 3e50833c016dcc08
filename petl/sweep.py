"""Grid sweeps through run_glue.py's training pipeline (petl/experiment.py): tasks x methods x layers x settings x seeds.

    python -m petl.sweep sweeps/layers_minilm.yaml                 # run on a local Ray (resumes where it stopped)
    python -m petl.sweep sweeps/layers_minilm.yaml --dry_run       # list the cells
    python -m petl.sweep GRID --cpus_per_cell 2 --gpus_per_cell 0.125   # 8 cells packed on each GPU
    python -m petl.sweep GRID --ray_address auto                   # an existing cluster (`ray start --head`)
    python -m petl.sweep GRID --no_ray                             # one cell after another in this process (debugging)
    python -m petl.report results/layers_minilm.jsonl --out figures/

A grid file (YAML or JSON):

    name: layers_minilm
    results: results/layers_minilm.jsonl      # JSONL, one record per finished cell
    model_name_or_path: minilm-l6
    tasks: [mrpc, rte]
    seeds: [1, 2]
    layers: all                                # or a list, or "1-4"
    arguments: {split_mode: heldout, num_train_epochs: 3, learning_rate: 1.0e-3}
    cpus_per_cell: 2                           # Ray resources of a cell (the flags of the same name win)
    gpus_per_cell: 0.125
    tune: {learning_rate: [1.0e-4, 3.0e-4, 1.0e-3]}   # tuned cells (below); or per method
    methods:
      ffn-adapter: {method: pfeiffer, adapter_layers: "{layer}"}
      raw:         {method: head, num_hidden_layers: "{next}"}   # backbone truncated to layer+1 layers
      two-layers:  {method: pfeiffer, adapter_layers: "{layer},{next}", layers: [0, 1, 2, 3, 4]}
      dims:        {method: pfeiffer, adapter_layers: "3", adapter_dim: [1, 4, 16, 64]}   # a list is an axis
      full:        {method: full, learning_rate: 5.0e-5}     # no {layer}: one cell per task and seed

In a method's arguments, "{layer}" is the target layer and "{next}" the one above it; a method
whose arguments name no layer runs once per task and seed. A list value is a setting axis (cross
product). `layers` inside a method overrides the global list; `tasks` likewise.

Each cell is one `petl.experiment.run` call. Its record (the run_glue results record, minus the bulky
parts, plus the cell's coordinates, its run arguments and their hash) is appended to the JSONL file
as soon as it finishes; a re-run skips cells already recorded as finished (failed ones are retried
unless --skip_failed). A cell's latest record decides, and only while it was made with the same
arguments: a grid whose epochs, learning rate or any other run argument changed runs the changed
cells again (a line names the changed keys). Records written before the hash existed are compared
on their cell arguments only (the grid's shared `arguments` are not stored in them), and trusted
where those match. Where files live (output_dir, cache_dir, glue_dir) is not part of the hash.
Unreadable lines of the results file (a write cut short) are reported and skipped; their cells run
again, once. A failed cell is recorded with its error and the sweep goes on; a record that cannot
be appended (a full disk) stops the sweep with an error, the file left as it was. The frozen-prefix
cache is used wherever it is valid, on disk under <output_dir>/cache so cells at the same layer
share one forward pass. Names from the grid that become folder names (name, tasks, method names,
setting axes) must be plain names: no '/', '\\', NUL, '.' or '..'.

Execution (petl/sweep_engine.py): each cell is a Ray task with `cpus_per_cell` CPUs (default 2; torch
threads follow it) and `gpus_per_cell` GPUs (fractions pack cells on one GPU), on an embedded local Ray
or the cluster at `--ray_address`. The driver alone appends to the results file, as each cell comes
back. A cell whose worker or node dies is resubmitted (`--max_retries`, default 2); its record carries
`attempts` and `retried_after`; a Python error in a cell is a failed cell, not a retry. An unreachable
address, a cell asking for more CPUs or GPUs than any node has, or a bad `tune:` block is one error
line before anything is written. `--no_ray` (and the Python API's default, `run_sweep(use_ray=False)`)
runs the cells one after another in this process. Cells wanting the same frozen-layer cache wait on
its lock while one builds it (petl/cache.py), on one node or on a shared file system with flock.
`--shard K/N` runs units K, K+N, ... (a cell, or a whole tuned group) for a SLURM job array whose
tasks share one results file (appends are atomic); nothing else splits a grid by hand.

Tuned cells (petl/tune_cells.py): `tune:` at the grid's top or in a method (a method's own block
replaces the top one; `tune: {}` switches it off). Lists are a grid of candidates run as ordinary
cells; distributions (`{loguniform: [1.0e-5, 1.0e-3]}`, petl/search.py) with `trials: N` and
`scheduler: fifo|asha` are one Ray Tune search per group, its folders under <output_dir>/ray/tune-<key>,
removed afterwards unless --keep_trials. `tune_layer: L` in a method makes one group of all its layers,
tuned at layer L. For each task x method x layer x setting the candidates train
on the FIRST seed and the best by the validation score (`best_validation_score`, the run's selection
metric on the validation split; never test) is chosen; its run becomes that seed's final record and the
chosen values train on every other seed. Records (one JSONL line each):

    candidate: {..., "cell_id": "mrpc/lora/layer=3/tune.learning_rate=0.001/seed=1",  # Ray Tune: ".../trial=<id>/tune..."
                "tune_role": "candidate", "tune_group": "mrpc/lora/layer=3", "tune_values": {"learning_rate": 0.001},
                "status": "ok" | "failed" | "stopped" (ASHA), "tune_search": key (Ray Tune only), run record...}
    final:     {..., "cell_id": "mrpc/lora/layer=3/seed=2", "tune_role": "final", "tune_group": "mrpc/lora/layer=3",
                "run_arguments": {... the chosen values ...}, run record...,
                "tune": {"metric": "f1", "mode": "max", "split": "validation", "chosen": {"learning_rate": 0.001},
                         "chosen_cell_id": "<the candidate's cell_id>",
                         "candidates": [{"cell_id", "arguments": {...}, "validation_score": x | null, "status"}, ...]},
                "reused_from": "<candidate cell_id>"   # the first seed only: the chosen candidate's run, not retrained}

A report reads final and untuned records (no "tune_role": "candidate"). A resumed tuned sweep runs no
recorded candidate again (a Ray Tune group is searched again only if fewer than `trials` candidates
were recorded under its key), and re-chooses from the recorded candidates.
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from petl.errors import Interrupted, PetlError, exit_status, invoked_as
from petl.grid import (
    Cell,
    changed_arguments,
    check_cell,
    expand_cells,
    load_grid,
    model_depth,
    record_base,
    recorded_cells,
    run_values,
)
from petl.results import check_appendable
from petl.tune_cells import TuneSpec, beyond_edge, candidate_cell, choose, tune_for_method

logger = logging.getLogger("petl.sweep")


def parse_shard(spec: str | None) -> tuple[int, int]:
    """'K/N' -> (K, N) with 0 <= K < N; None -> the whole grid."""
    if spec is None:
        return 0, 1
    try:
        index, count = (int(part) for part in spec.split("/"))
    except ValueError:
        raise PetlError(f"--shard {spec!r}: expected K/N, e.g. 0/2 (worker K of N, counted from 0)") from None
    if count < 1 or not 0 <= index < count:
        raise PetlError(f"--shard {spec!r}: K must be in 0..N-1 and N >= 1")
    return index, count


@dataclass
class TuneGroup:
    """One task x method x layer x setting with a `tune:` block: its seeds' cells (first seed first),
    its candidates on the first seed, and their finished records."""

    spec: TuneSpec
    seeds: list[Cell]
    candidates: list[Cell] = field(default_factory=list)
    finished: dict[str, dict] = field(default_factory=dict)  # candidate cell_id -> record
    resolved: bool = False

    def complete(self) -> bool:
        return all(c.cell_id in self.finished for c in self.candidates)


def method_tunes(grid: dict, grid_path: str) -> dict[str, TuneSpec | None]:
    """Each method's tune block (its own, else the grid's), checked."""
    out = {}
    for name, spec in grid["methods"].items():
        where = f"grid file {grid_path!r}: method {name!r}" if isinstance(spec, dict) and "tune" in spec else f"grid file {grid_path!r}"
        out[name] = tune_for_method(grid, spec if isinstance(spec, dict) else {}, where)
    return out


def plan_units(grid: dict, cells: list[Cell], tunes: dict[str, TuneSpec | None]) -> list[Cell | TuneGroup]:
    """The grid as units of work in the grid's order: untuned cells, and one TuneGroup per tuned group
    (a task x method x layer x setting, or with `tune_layer` a task x method x setting over all its layers,
    whose candidates train at that layer)."""
    units: list[Cell | TuneGroup] = []
    groups: dict[str, TuneGroup] = {}
    for cell in cells:
        spec = tunes.get(cell.method_name)
        if spec is None:
            units.append(cell)
            continue
        group = groups.get(cell.tune_group_id)
        if group is None:
            group = groups[cell.tune_group_id] = TuneGroup(spec, [])
            units.append(group)
        group.seeds.append(cell)
    for group in groups.values():
        first = next((c for c in group.seeds if c.tune_layer is None or c.layer == c.tune_layer), group.seeds[0])
        group.seeds.remove(first)
        group.seeds.insert(0, first)  # the cell whose final reuses the chosen candidate's run
        if not group.spec.uses_ray_tune:
            for values in group.spec.grid_candidates():
                group.candidates.append(candidate_cell(first, values))
    return units


def edge_step(spec: TuneSpec, added: list[dict], chosen: dict) -> dict | None:
    """The next candidate past the grid's edge (`extend`), given the values already added past it."""
    return beyond_edge({k: [*v, *(c[k] for c in added if k in c)] for k, v in spec.values.items()}, chosen)


def final_cell(seed_cell: Cell, chosen: dict) -> Cell:
    return replace(seed_cell, arguments={**seed_cell.arguments, **chosen}, tune_role="final")


def needs_run(record: dict | None, grid: dict, cell: Cell, retry_failed: bool, changed_keys: set) -> bool:
    """Whether a cell runs (again): not recorded, recorded with other arguments (their names go to
    `changed_keys`), or recorded as failed (unless --skip_failed)."""
    if record is None:
        return True
    changed = changed_arguments(record, grid, cell)
    if changed:
        changed_keys.update(changed)
        return True
    return record.get("status") != "ok" and (retry_failed or record.get("status") != "failed")


def finals_to_run(group: TuneGroup, grid: dict, recorded: dict, retry_failed: bool) -> int:
    """How many of a group's final records (and, for Ray Tune or `extend`, candidates) may still be made:
    exact once every candidate is recorded (the choice is known), else all of them."""
    spec = group.spec
    if spec.uses_ray_tune or not group.complete():
        return len(group.seeds) + (spec.trials if spec.uses_ray_tune else spec.extend)
    pairs = [(c.candidate, group.finished[c.cell_id]) for c in group.candidates]
    try:
        chosen = choose(pairs)[0]
        for step in range(spec.extend):  # the steps past the grid's edge, as far as they are recorded
            beyond = edge_step(spec, [c for c, _ in pairs[len(group.candidates) :]], chosen)
            if beyond is None:
                break
            cell = candidate_cell(group.seeds[0], beyond)
            record = recorded.get(cell.cell_id)
            if needs_run(record, grid, cell, retry_failed, set()):
                return len(group.seeds) + spec.extend - step
            pairs.append((beyond, record))
            chosen = choose(pairs)[0]
    except PetlError:
        return len(group.seeds)
    cells = [final_cell(seed_cell, chosen) for seed_cell in group.seeds]
    return sum(needs_run(recorded.get(c.cell_id), grid, c, retry_failed, set()) for c in cells)


def _resources(grid: dict, grid_path: str, cpus: float | None, gpus: float | None) -> tuple[float, float, dict[str, str]]:
    """CPUs and GPUs per cell: the flag, else the grid's key, else the default; checked."""
    from petl.sweep_engine import DEFAULT_CPUS_PER_CELL

    where = {}
    values = {}
    for name, flag, default in (("cpus_per_cell", cpus, None), ("gpus_per_cell", gpus, 0.0)):
        if flag is not None:
            value, where[name] = flag, f"--{name}"
        elif name in grid:
            value, where[name] = grid[name], f"grid file {grid_path!r}"
        else:
            value, where[name] = default, "default"
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                                  or value < 0 or (name == "cpus_per_cell" and value == 0)):  # fmt: skip
            allowed = "a number > 0" if name == "cpus_per_cell" else "a number >= 0 (fractions pack cells on one GPU)"
            raise PetlError(f"{name} {value!r} ({where[name]}) is invalid; allowed: {allowed}")
        values[name] = value
    if values["cpus_per_cell"] is None:
        values["cpus_per_cell"] = DEFAULT_CPUS_PER_CELL
    return float(values["cpus_per_cell"]), float(values["gpus_per_cell"]), where


def run_sweep(grid_path: str, results: str | None = None, output_dir: str | None = None, dry_run: bool = False,
              retry_failed: bool = True, max_cells: int | None = None, shard: str | None = None, use_ray: bool = False,
              ray_address: str | None = None, cpus_per_cell: float | None = None, gpus_per_cell: float | None = None,
              max_retries: int = 2, keep_trials: bool = False) -> dict:  # fmt: skip
    """The sweep as the command line gives it. The Python API runs cells in this process unless
    `use_ray` (the command line's default); see the module docstring."""
    grid = load_grid(grid_path)
    results_path = Path(results or grid["results"])
    out = Path(output_dir or grid["output_dir"]).absolute()
    parse_shard(shard)
    if max_retries < 0:
        raise PetlError(f"--max_retries {max_retries} is invalid; allowed: >= 0")
    cpus, gpus, resource_source = _resources(grid, grid_path, cpus_per_cell, gpus_per_cell)
    tunes = method_tunes(grid, grid_path)
    from petl.ray_runtime import stop_ray

    engine, started_ray = None, False
    if use_ray and not dry_run and not results_path.exists():  # a new sweep: Ray starts, and its workers import, while the driver plans
        engine, started_ray = _ray_engine(ray_address, cpus, gpus, resource_source)
    try:
        return _sweep(grid, grid_path, results_path, out, shard, dry_run, retry_failed, max_cells, tunes, engine, use_ray,
                      ray_address, (cpus, gpus, resource_source), max_retries, keep_trials)  # fmt: skip
    finally:
        stop_ray(started_ray)


def _ray_engine(ray_address: str | None, cpus: float, gpus: float, resource_source: dict[str, str]):
    """(a RayEngine whose workers are already importing the training code, whether this call started Ray)."""
    from petl import ray_runtime
    from petl.sweep_engine import RayEngine

    started = ray_runtime.start_ray(ray_address)
    try:
        if resource_source["cpus_per_cell"] == "default":  # the default never asks for more than a node has
            cpus = min(cpus, max(1.0, ray_runtime.largest_node()["CPU"]))
        ray_runtime.check_resources(cpus, gpus, resource_source)
        engine = RayEngine(cpus, gpus)
        engine.warm_up()
    except BaseException:
        ray_runtime.stop_ray(started)
        raise
    return engine, started


def _sweep(grid: dict, grid_path: str, results_path: Path, out: Path, shard: str | None, dry_run: bool, retry_failed: bool,
           max_cells: int | None, tunes: dict, engine, use_ray: bool, ray_address: str | None, resources: tuple,
           max_retries: int, keep_trials: bool) -> dict:  # fmt: skip
    cpus, gpus, resource_source = resources
    shard_index, shard_count = parse_shard(shard)
    units = plan_units(grid, expand_cells(grid, model_depth(grid)), tunes)[shard_index::shard_count]
    recorded, unreadable = recorded_cells(results_path)
    if unreadable:
        shown = ", ".join(str(n) for n in unreadable[:20]) + (", ..." if len(unreadable) > 20 else "")
        print(f"warning: {results_path}: {len(unreadable)} unreadable line(s) (line {shown}; a write cut short?) skipped; "
              "their cells run again")  # fmt: skip

    # ---- what runs: untuned cells and candidates now; a group's finals once its candidates are in
    changed_keys: set[str] = set()
    todo: list[Cell] = []
    groups: list[TuneGroup] = []
    total = 0
    to_check: list[Cell] = []
    place: dict[str, int] = {}  # a cell's or a tuned group's position in the grid: the driver's queue order
    for unit in units:
        place[unit.cell_id if isinstance(unit, Cell) else unit.seeds[0].tune_group_id] = len(place)
        if isinstance(unit, Cell):
            total += 1
            if needs_run(recorded.get(unit.cell_id), grid, unit, retry_failed, changed_keys):
                todo.append(unit)
            continue
        groups.append(unit)
        total += (unit.spec.trials if unit.spec.uses_ray_tune else len(unit.candidates) + unit.spec.extend) + len(unit.seeds)
        for cand in unit.candidates:
            record = recorded.get(cand.cell_id)
            if needs_run(record, grid, cand, retry_failed, changed_keys):
                todo.append(cand)
            else:
                unit.finished[cand.cell_id] = record
        to_check.append(final_cell(unit.seeds[0], unit.candidates[0].candidate if unit.candidates else {}))
    changed_cells = sum(1 for c in todo if c.cell_id in recorded and changed_arguments(recorded[c.cell_id], grid, c))
    if changed_cells:
        keys = ", ".join(sorted(changed_keys))
        print(f"{changed_cells} recorded cell(s) ran with other arguments than the grid now gives (changed: {keys}); they run again")
    pending_finals = sum(finals_to_run(g, grid, recorded, retry_failed) for g in groups)  # at most
    if max_cells is not None:
        todo = todo[:max_cells]
    for c in [*todo, *to_check]:  # every cell's arguments are checked before the first one trains (and in a dry run)
        check_cell(grid, c, out, results_path, grid_path)
    part = f" (shard {shard_index}/{shard_count})" if shard_count > 1 else ""
    tuned = f", {len(groups)} tuned group(s)" if groups else ""
    to_run = len(todo) + pending_finals
    print(f"sweep {grid['name']}{part}: {total} cells{tuned}, {total - to_run} already recorded in {results_path}, "
          f"{to_run} to run at most")  # fmt: skip
    if dry_run:
        for c in todo:
            print(f"  {c.cell_id}  {json.dumps(c.arguments)}")
        for g in groups:
            how = f"Ray Tune, {g.spec.trials} trial(s), {g.spec.scheduler}" if g.spec.uses_ray_tune else f"{len(g.candidates)} candidate(s)"
            if g.seeds[0].tune_layer is None:
                seeds = ", ".join(str(c.seed) for c in g.seeds)
            else:  # one group over the method's layers
                seeds = ", ".join(f"{c.seed} (layer {c.layer})" for c in g.seeds)
            print(f"  {g.seeds[0].tune_group_id}: tuned ({how}) on seed {g.seeds[0].seed}, then seed(s) {seeds}")
        return {"cells": total, "to_run": to_run, "ran": 0, "failed": 0}
    check_appendable(results_path)

    from petl import sweep_engine
    from petl.ray_runtime import stop_ray

    started_ray = False
    if engine is None:
        if use_ray and (todo or any(not g.complete() or g.spec.uses_ray_tune for g in groups) or any(len(g.seeds) > 1 for g in groups)):
            engine, started_ray = _ray_engine(ray_address, cpus, gpus, resource_source)
        else:  # in-process: cpus_per_cell, where given, still sets the torch threads
            engine = sweep_engine.LocalEngine(threads=int(cpus) if resource_source["cpus_per_cell"] != "default" else None)
    driver = SweepDriver(grid, out, results_path, engine, recorded, retry_failed, max_retries, todo, groups, max_cells, place)
    try:
        if any(g.spec.uses_ray_tune for g in groups):
            from petl.tune_cells import run_tune_groups

            run_tune_groups(driver, [g for g in groups if g.spec.uses_ray_tune], cpus, gpus, ray_address, keep_trials)
        driver.run()
    except Interrupted:
        raise
    except KeyboardInterrupt:  # Ctrl+C: every record already appended stays; the rest runs next time
        raise Interrupted(f"the sweep stopped after {total - to_run + driver.ran} of {total} cells; finished cells are in "
                          f"{results_path}: run the same command to go on") from None  # fmt: skip
    finally:
        engine.close()
        stop_ray(started_ray)
    print(f"sweep {grid['name']}: ran {driver.ran} cells ({driver.failed} failed, {driver.retries} retried after a lost worker); "
          f"results in {results_path}")  # fmt: skip
    return {"cells": total, "to_run": len(todo) + pending_finals, "ran": driver.ran, "failed": driver.failed}


class SweepDriver:
    """Submits cells to the engine as it has room, appends each finished record to the results file
    (the only writer), resubmits cells whose worker died, and turns finished candidates into a choice
    and final cells. One finished record per cell."""

    def __init__(self, grid: dict, out: Path, results: Path, engine, recorded: dict, retry_failed: bool, max_retries: int,
                 todo: list[Cell], groups: list[TuneGroup], max_cells: int | None, place: dict[str, int] | None = None):  # fmt: skip
        self.grid, self.out, self.results, self.engine = grid, out, results, engine
        self.recorded, self.retry_failed, self.max_retries = recorded, retry_failed, max_retries
        # cells wait in the grid's order (tasks outermost): a group's finals go before any later unit's cells, so an
        # interrupted sweep has its first tasks whole; within a place, first come first served
        self.place = {cell.cell_id: i for i, cell in enumerate(todo)} if place is None else place
        self.ready: list[tuple[int, int, Cell]] = []
        self.queued = 0
        for cell in todo:
            self.queue(cell)
        self.groups = groups
        self.group_of = {c.cell_id: g for g in groups for c in g.candidates}
        self.final_blocks: dict[str, dict] = {}  # final cell_id -> its tune block
        self.submitted = len(todo)
        self.budget = max_cells
        self.ran = self.failed = self.retries = 0
        self.bar = None

    def queue(self, cell: Cell) -> None:
        """A cell waits for a slot at its place in the grid's order (`place`: a cell's or a tuned group's
        position); candidates and finals share their group's place, finals queued after the candidates."""
        place = self.place.get(cell.tune_group_id if cell.tune_role else cell.cell_id, len(self.place))
        self.queued += 1
        heapq.heappush(self.ready, (place, self.queued, cell))

    def job(self, cell: Cell):
        from petl.sweep_engine import CellJob

        return CellJob(cell, run_values(self.grid, cell, self.out), record_base(self.grid, cell))

    def append(self, entry: dict) -> None:
        from petl.results import append_jsonl

        try:
            append_jsonl(self.results, entry)
        except PetlError as err:  # a full disk: stop rather than train cells that cannot be recorded
            cell_id = entry["cell_id"]
            raise PetlError(f"{err}; cell {cell_id} ran but is not recorded, so the sweep stops (run it again to resume)") from None
        self.recorded[entry["cell_id"]] = entry

    def finish(self, cell: Cell, entry: dict) -> None:
        """A cell's finished record: written, counted, and handed to its tuned group."""
        if cell.tune_role == "final":
            entry["tune"] = self.final_blocks[cell.cell_id]
        self.append(entry)
        self.ran += 1
        if entry.get("status") == "failed":  # not a candidate that ASHA stopped early ("stopped")
            self.failed += 1
            logger.error("cell %s failed: %s", cell.cell_id, entry.get("error"))
        group = self.group_of.get(cell.cell_id)
        if group is not None:
            group.finished[cell.cell_id] = entry
            self.resolve(group)

    def resolve(self, group: TuneGroup) -> None:
        """Once every candidate is in: choose on validation, record the first seed's final (the chosen
        candidate's run), queue the other seeds with the chosen values."""
        if group.resolved or not group.complete() or not group.candidates:
            return
        pairs = [(c.candidate, group.finished[c.cell_id]) for c in group.candidates]
        try:
            chosen, chosen_record, block = choose(pairs)
        except PetlError as err:  # every candidate failed: each seed's final is a failed cell, recorded once
            group.resolved = True
            for seed_cell in group.seeds:
                cell = final_cell(seed_cell, {})
                if needs_run(self.recorded.get(cell.cell_id), self.grid, cell, self.retry_failed, set()):
                    self.failed += 1
                    self.append({**record_base(self.grid, cell), "status": "failed", "error": f"PetlError: {err}"})
            return
        if self.extend_past_edge(group, chosen):
            return  # the choice waits for the candidate past the grid's edge
        group.resolved = True
        first, *others = group.seeds
        changed: set[str] = set()
        cell = final_cell(first, chosen)
        if needs_run(self.recorded.get(cell.cell_id), self.grid, cell, self.retry_failed, changed):
            # the chosen candidate's run is this seed's final record: its coordinates become the final cell's; its
            # attempts (and retries) describe that run and stay
            reused = {k: v for k, v in chosen_record.items() if k not in ("tune_role", "tune_group", "tune_values", "tune_search",
                                                                          "tune_trial")}  # fmt: skip
            self.append({**reused, **record_base(self.grid, cell), "tune": block, "reused_from": chosen_record.get("cell_id")})
            self.ran += 1
        for seed_cell in others:
            cell = final_cell(seed_cell, chosen)
            if needs_run(self.recorded.get(cell.cell_id), self.grid, cell, self.retry_failed, changed):
                self.final_blocks[cell.cell_id] = block
                self.queue(cell)

    def extend_past_edge(self, group: TuneGroup, chosen: dict) -> bool:
        """`tune: {extend: N}`: a chosen value on the highest or lowest of an axis's values adds one
        candidate a step further (petl/tune_cells.py, beyond_edge), up to N per group; True when one was
        added (queued, or already recorded and the group resolved again)."""
        spec = group.spec
        in_grid = len(spec.grid_candidates())
        if not spec.extend or len(group.candidates) - in_grid >= spec.extend:
            return False
        beyond = edge_step(spec, [c.candidate for c in group.candidates[in_grid:]], chosen)
        if beyond is None:
            return False
        cell = candidate_cell(group.seeds[0], beyond)
        group.candidates.append(cell)
        self.group_of[cell.cell_id] = group
        record = self.recorded.get(cell.cell_id)
        if needs_run(record, self.grid, cell, self.retry_failed, set()):
            self.queue(cell)
        else:
            group.finished[cell.cell_id] = record
            self.resolve(group)
        return True

    def run(self) -> None:
        from petl.progress import progress_bar

        for group in self.groups:
            self.resolve(group)
        done = 0
        with progress_bar(total=len(self.ready) + self.pending_finals(), desc=self.grid["name"], unit="cell") as bar:
            while True:
                while self.ready and self.engine.running() < self.engine.capacity:
                    cell = heapq.heappop(self.ready)[2]
                    if cell.tune_role == "final":
                        if self.budget is not None and self.submitted >= self.budget:
                            continue  # --max_cells reached: the rest resume later
                        self.submitted += 1
                    job = self.job(cell)
                    job.attempts = 1
                    self.engine.submit(job)
                self.show(bar, done)
                if self.engine.running() == 0:
                    break
                for job, entry, lost in self.engine.wait():
                    if lost is not None:
                        job.retried_after.append(lost)
                        if job.attempts <= self.max_retries:
                            self.retries += 1
                            logger.warning("cell %s: %s; retrying (attempt %d)", job.cell.cell_id, lost, job.attempts + 1)
                            job.attempts += 1
                            self.engine.submit(job)
                            continue
                        entry = {**job.base, "status": "failed", "error": f"worker lost {job.attempts} time(s); last: {lost}"}
                    entry["attempts"] = job.attempts
                    if job.retried_after:
                        entry["retried_after"] = job.retried_after
                    self.finish(job.cell, entry)
                    done += 1
                    bar.total = done + self.engine.running() + len(self.ready) + self.pending_finals()
                    bar.update(1)
                    self.show(bar, done)

    def pending_finals(self) -> int:
        """Final cells of groups still choosing (all their seeds but the first, which reuses the chosen run)."""
        return sum(len(g.seeds) - 1 for g in self.groups if not g.resolved)

    def show(self, bar, done: int) -> None:
        text = f"done {done}, running {self.engine.running()}, left {len(self.ready) + self.pending_finals()}"
        if text != getattr(bar, "postfix", None):
            bar.set_postfix_str(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=invoked_as("petl-sweep", "python -m petl.sweep"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("grid", help="YAML/JSON grid file (sweeps/*.yaml)")
    parser.add_argument("--results", help="JSONL results file (default: the grid's 'results')")
    parser.add_argument("--output_dir", help="run folders and the shared cache (default: outputs/sweeps/<name>)")
    parser.add_argument("--dry_run", action="store_true", help="list the cells left to run and exit")
    parser.add_argument("--skip_failed", action="store_true", help="do not retry cells recorded as failed")
    parser.add_argument("--max_cells", type=int, help="run at most this many cells, then stop (resume later)")
    parser.add_argument("--ray_address", help="an existing Ray cluster: auto or HOST:PORT (default: a local Ray started for the sweep)")
    parser.add_argument("--cpus_per_cell", type=float, help="CPUs per cell; torch threads follow it (default: the grid's, else 2)")
    parser.add_argument("--gpus_per_cell", type=float, help="GPUs per cell; 0.125 packs 8 cells on one GPU (default: the grid's, else 0)")
    parser.add_argument("--max_retries", type=int, default=2, help="resubmissions of a cell whose worker or node died (default 2)")
    parser.add_argument("--keep_trials", action="store_true", help="keep Ray Tune's trial folders (<output_dir>/ray) of tuned groups")
    parser.add_argument("--no_ray", action="store_true", help="run the cells one after another in this process (debugging)")
    parser.add_argument("--shard", metavar="K/N", help="only units K, K+N, ... of the grid: for a SLURM job array sharing one results file")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING, datefmt="%H:%M:%S")

    def sweep() -> int:
        import transformers

        transformers.logging.set_verbosity_error()
        summary = run_sweep(args.grid, args.results, args.output_dir, args.dry_run, not args.skip_failed, args.max_cells, args.shard,
                            use_ray=not args.no_ray, ray_address=args.ray_address, cpus_per_cell=args.cpus_per_cell,
                            gpus_per_cell=args.gpus_per_cell, max_retries=args.max_retries, keep_trials=args.keep_trials)  # fmt: skip
        return 1 if summary["failed"] else 0

    return exit_status(sweep)


if __name__ == "__main__":
    sys.exit(main())

"""Grid sweeps through run_glue.py's training pipeline (petl/experiment.py): tasks x methods x layers x settings x seeds.

    python -m petl.sweep sweeps/layers_minilm.yaml                 # run (resumes where it stopped)
    python -m petl.sweep sweeps/layers_minilm.yaml --dry_run       # list the cells
    OMP_NUM_THREADS=8 python -m petl.sweep GRID --shard 0/2 &      # two workers sharing a 16-core machine
    OMP_NUM_THREADS=8 python -m petl.sweep GRID --shard 1/2
    python -m petl.report results/layers_minilm.jsonl --out figures/

A grid file (YAML or JSON):

    name: layers_minilm
    results: results/layers_minilm.jsonl      # JSONL, one record per finished cell
    model_name_or_path: minilm-l6
    tasks: [mrpc, rte]
    seeds: [1, 2]
    layers: all                                # or a list, or "1-4"
    arguments: {split_mode: heldout, num_train_epochs: 3, learning_rate: 1.0e-3}
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

`--shard K/N` runs every N-th cell of the grid, starting at cell K, so N workers share one grid and
one results file (lines are appended atomically; cache folders are written to a temporary name and
renamed). Measure before relying on it: on this project's 2-core machine, 2 one-thread workers ran
the MiniLM-L6 MRPC cells 2.3x slower each than one 2-thread process (0.86x the cells per hour in
total), although a synthetic fixed-shape step benchmark had promised 1.25x. Workers pay off where
each still gets several cores, or where one run cannot use them all: on one H100 with 16 cores, 8
two-thread workers ran 136 MiniLM-L6 cells in 240 s, 1.8 s a cell.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petl.errors import PetlError, exit_status, invoked_as
from petl.results import check_appendable, read_jsonl, read_yaml_or_json

logger = logging.getLogger("petl.sweep")

GRID_KEYS = {"name", "results", "output_dir", "model_name_or_path", "tasks", "seeds", "layers", "arguments", "methods"}
METHOD_KEYS = {"layers", "tasks"}  # besides run_glue.py arguments
DROPPED_FROM_RECORD = ("parameter_report", "arguments", "prediction_files", "new_parameters_initialised")
# where files live and what watches a run, not what runs: left out of a cell's argument hash, so moving a
# sweep, or turning a tracker on (`report_to: tensorboard` in `arguments`), re-runs nothing
LOCATION_ARGUMENTS = ("output_dir", "overwrite_output_dir", "cache_dir", "glue_dir", "logging_dir", "disable_tqdm", "report_to")


@dataclass
class Cell:
    task: str
    method_name: str
    layer: int | None
    seed: int
    setting: dict[str, Any]
    arguments: dict[str, Any] = field(repr=False)

    @property
    def cell_id(self) -> str:
        parts = [self.task, self.method_name]
        if self.layer is not None:
            parts.append(f"layer={self.layer}")
        parts += [f"{k}={v}" for k, v in sorted(self.setting.items())]
        parts.append(f"seed={self.seed}")
        return "/".join(parts)


def load_grid(path: str) -> dict:
    grid = read_yaml_or_json(path, "grid file")
    if not isinstance(grid, dict):
        raise PetlError(f"grid file {path!r}: expected a mapping with keys {', '.join(sorted(GRID_KEYS))}")
    unknown = sorted(set(grid) - GRID_KEYS)
    if unknown:
        raise PetlError(f"grid file {path!r}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(GRID_KEYS))}")
    for key in ("tasks", "methods"):
        if not grid.get(key):
            raise PetlError(f"grid file {path!r}: {key!r} is missing or empty")
    grid.setdefault("name", Path(path).stem)
    grid.setdefault("seeds", [42])
    check_grid_names(grid, path)
    grid.setdefault("arguments", {})
    grid.setdefault("results", f"results/{grid['name']}.jsonl")
    grid.setdefault("output_dir", f"outputs/sweeps/{grid['name']}")
    return grid


def check_folder_name(value: Any, what: str, grid_path: str) -> None:
    """A name from a grid that becomes part of a folder path must stay one plain path component,
    so that no grid can write outside the sweep's output folder."""
    text = str(value)
    if text in ("", ".", "..") or any(bad in text for bad in ("/", "\\", "\0")) or os.path.isabs(text):
        raise PetlError(
            f"grid file {grid_path!r}: {what} {value!r} cannot be part of a folder name; "
            "use a plain name without '/', '\\', NUL, '.' or '..'"
        )


def check_grid_names(grid: dict, grid_path: str) -> None:
    """Every grid value that ends up in a path: the grid's name, tasks, method names, setting axes
    (keys and values); seeds must be integers."""
    check_folder_name(grid["name"], "name", grid_path)
    if not isinstance(grid["tasks"], list) or not isinstance(grid["methods"], dict) or not isinstance(grid["seeds"], list):
        raise PetlError(f"grid file {grid_path!r}: 'tasks' and 'seeds' must be lists and 'methods' a mapping")
    for seed in grid["seeds"]:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise PetlError(f"grid file {grid_path!r}: seed {seed!r} is not an integer")
    for task in grid["tasks"]:
        check_folder_name(task, "task", grid_path)
    for name, spec in grid["methods"].items():
        check_folder_name(name, "method name", grid_path)
        if not isinstance(spec, dict):
            continue  # expand_cells says what a method needs
        for task in spec.get("tasks", []) if isinstance(spec.get("tasks"), list) else []:
            check_folder_name(task, f"task of method {name!r}", grid_path)
        for key, values in spec.items():
            if isinstance(values, list) and key not in METHOD_KEYS:
                check_folder_name(key, f"setting of method {name!r}", grid_path)
                for value in values:
                    check_folder_name(value, f"value of {key!r} in method {name!r}", grid_path)


def _layer_list(spec: Any, num_layers: int | None, where: str) -> list[int]:
    from petl.layers import parse_layers

    if isinstance(spec, list):
        spec = ",".join(str(s) for s in spec)
    if num_layers is None:
        raise PetlError(f"{where}: layers {spec!r} need the model's depth; give model_name_or_path")
    return parse_layers(str(spec), num_layers)


def _model_depth(grid: dict) -> int | None:
    name = grid.get("model_name_or_path") or grid["arguments"].get("model_name_or_path")
    if not name:
        return None
    from transformers import AutoConfig

    from petl.models import resolve_model_path

    depth = AutoConfig.from_pretrained(resolve_model_path(name)).num_hidden_layers
    return int(grid["arguments"].get("num_hidden_layers") or depth)


def _substitute(value: Any, layer: int | None) -> Any:
    if not isinstance(value, str) or "{" not in value:
        return value
    if layer is None:
        raise PetlError(f"argument value {value!r} names a layer, but the method has no layer axis")
    text = value.replace("{layer}", str(layer)).replace("{next}", str(layer + 1))
    if "{" in text:
        raise PetlError(f"argument value {value!r}: only {{layer}} and {{next}} can be substituted")
    return int(text) if text.isdigit() else text


def expand_cells(grid: dict, num_layers: int | None) -> list[Cell]:
    """Every cell of the grid, in a stable order: task, seed, method, layer, setting (seeds outside,
    so an interrupted sweep has whole layer curves for the first seeds)."""
    cells = []
    global_layers = grid.get("layers", "all")
    for task in grid["tasks"]:
        for seed in grid["seeds"]:
            for name, spec in grid["methods"].items():
                if not isinstance(spec, dict) or "method" not in spec:
                    raise PetlError(f"grid method {name!r}: give a mapping with at least 'method'")
                if task not in spec.get("tasks", grid["tasks"]):
                    continue
                args = {k: v for k, v in spec.items() if k not in METHOD_KEYS}
                has_layer = any(isinstance(v, str) and "{" in v for v in args.values())
                where = f"grid method {name!r}"
                layers = _layer_list(spec.get("layers", global_layers), num_layers, where) if has_layer else [None]
                axes = {k: v for k, v in args.items() if isinstance(v, list)}
                for layer in layers:
                    for values in itertools.product(*axes.values()) if axes else [()]:
                        setting = dict(zip(axes, values, strict=True))
                        cell_args = {k: _substitute(setting.get(k, v), layer) for k, v in args.items()}
                        cells.append(Cell(task, name, layer, int(seed), setting, cell_args))
    ids = [c.cell_id for c in cells]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise PetlError(f"grid has the cell {dup!r} twice")
    return cells


def recorded_cells(results: Path) -> tuple[dict[str, dict], list[int]]:
    """The latest record of each cell id, and the numbers of the file's unreadable lines (a write
    cut short: skipped, so their cells count as not recorded)."""
    if not results.is_file():
        return {}, []
    records, unreadable = read_jsonl(results)
    return {rec["cell_id"]: rec for rec in records if isinstance(rec.get("cell_id"), str)}, unreadable


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def run_values(grid: dict, cell: Cell, output_dir: Path) -> dict[str, Any]:
    """Every argument the grid gives run_glue for one cell (run_glue's defaults fill in the rest)."""
    folder = Path(cell.cell_id.replace("=", ""))
    if folder.is_absolute() or ".." in folder.parts:  # check_grid_names refuses such names; never leave output_dir
        raise PetlError(f"cell {cell.cell_id!r} would write outside {str(output_dir)!r}")
    values = {
        "disable_tqdm": True,
        "report_to": [],
        "save_strategy": "no",
        **grid["arguments"],
        **cell.arguments,
        "task_name": cell.task,
        "seed": cell.seed,
        "output_dir": str(output_dir / "runs" / folder),
        "overwrite_output_dir": True,
    }
    if grid.get("model_name_or_path"):
        values.setdefault("model_name_or_path", grid["model_name_or_path"])
    values.setdefault("cache_frozen_layers", True)
    values.setdefault("cache_dir", str(output_dir / "cache"))
    return values


def run_arguments(grid: dict, cell: Cell) -> dict[str, Any]:
    """What a cell runs with, without where its files go: recorded with the cell, compared on resume."""
    values = run_values(grid, cell, Path("."))
    return {k: v for k, v in sorted(values.items()) if k not in LOCATION_ARGUMENTS}


def arguments_hash(arguments: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(arguments).encode()).hexdigest()[:16]


def changed_arguments(record: dict, grid: dict, cell: Cell) -> list[str]:
    """The argument names that differ between a cell's record and the grid now ([] if none). Records
    with a hash are compared on all run arguments; older ones, without it, on their cell arguments."""
    def differing(now: dict, then: dict) -> list[str]:
        return sorted(k for k in set(now) | set(then) if _canonical(now.get(k)) != _canonical(then.get(k)))

    if "arguments_hash" in record:
        now = run_arguments(grid, cell)
        if record["arguments_hash"] == arguments_hash(now):
            return []
        then = record.get("run_arguments")
        if not isinstance(then, dict):
            return ["(arguments)"]
        then = {k: v for k, v in then.items() if k not in LOCATION_ARGUMENTS}  # a record from before report_to joined them
        if arguments_hash(then) == arguments_hash(now):
            return []
        return differing(now, then) or ["(arguments)"]
    if isinstance(record.get("cell_arguments"), dict):
        return differing(cell.arguments, record["cell_arguments"])
    return []  # nothing stored to compare with: trusted


def build_arguments(grid: dict, cell: Cell, output_dir: Path, results: Path):
    """The four run_glue argument objects for one cell; unknown names are one clear error."""
    from argument_classes import arguments_from_dict

    return arguments_from_dict(run_values(grid, cell, output_dir), f"cell {cell.cell_id}")


def check_cell(grid: dict, cell: Cell, output_dir: Path, results: Path, grid_path: str) -> None:
    """A cell's arguments as run_glue checks them before any work (types, numbers, methods and their
    options), so a bad grid value is one line naming the grid file and the cell, before any cell trains.
    A method's own keys are "given" (another method's flag there is refused); grid-wide `arguments`
    may hold options of several methods."""
    from argument_classes.checks import check_numbers

    try:
        model_args, data_args, petl_args, training_args = build_arguments(grid, cell, output_dir, results)
        check_numbers(model_args, data_args, petl_args, training_args)
        petl_args.method_configs(set(cell.arguments))  # a method's own keys; grid-wide ones may serve other methods
    except PetlError as err:
        raise PetlError(f"grid file {grid_path!r}: {err}") from None


def slim_record(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in DROPPED_FROM_RECORD}


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


def run_sweep(grid_path: str, results: str | None = None, output_dir: str | None = None, dry_run: bool = False,
              retry_failed: bool = True, max_cells: int | None = None, shard: str | None = None) -> dict:  # fmt: skip
    grid = load_grid(grid_path)
    results_path = Path(results or grid["results"])
    out = Path(output_dir or grid["output_dir"])
    shard_index, shard_count = parse_shard(shard)
    cells = expand_cells(grid, _model_depth(grid))[shard_index::shard_count]
    recorded, unreadable = recorded_cells(results_path)
    if unreadable:
        shown = ", ".join(str(n) for n in unreadable[:20]) + (", ..." if len(unreadable) > 20 else "")
        print(f"warning: {results_path}: {len(unreadable)} unreadable line(s) (line {shown}; a write cut short?) skipped; "
              "their cells run again")  # fmt: skip
    todo, changed_keys, changed_cells = [], set(), 0
    for cell in cells:
        record = recorded.get(cell.cell_id)
        if record is None:
            todo.append(cell)
            continue
        changed = changed_arguments(record, grid, cell)
        if changed:
            changed_cells += 1
            changed_keys.update(changed)
            todo.append(cell)
        elif record.get("status") != "ok" and (retry_failed or record.get("status") != "failed"):
            todo.append(cell)
    if changed_cells:
        keys = ", ".join(sorted(changed_keys))
        print(f"{changed_cells} recorded cell(s) ran with other arguments than the grid now gives (changed: {keys}); they run again")
    done_here = len(cells) - len(todo)
    if max_cells is not None:
        todo = todo[:max_cells]
    for c in todo:  # every cell's arguments are checked before the first one trains (and in a dry run)
        check_cell(grid, c, out, results_path, grid_path)
    part = f" (shard {shard_index}/{shard_count})" if shard_count > 1 else ""
    print(f"sweep {grid['name']}{part}: {len(cells)} cells, {done_here} already recorded in {results_path}, {len(todo)} to run")
    if dry_run:
        for c in todo:
            print(f"  {c.cell_id}  {json.dumps(c.arguments)}")
        return {"cells": len(cells), "to_run": len(todo), "ran": 0, "failed": 0}
    check_appendable(results_path)

    from tqdm.auto import tqdm

    from petl import experiment
    from petl.results import append_jsonl

    failed = 0
    bar = tqdm(todo, desc=grid["name"], unit="cell", file=sys.stderr, dynamic_ncols=True)
    for cell in bar:
        bar.set_postfix_str(cell.cell_id)
        began = time.time()
        base = {"sweep": grid["name"], "cell_id": cell.cell_id, "task": cell.task, "method_name": cell.method_name,
                "layer": cell.layer, "seed": cell.seed, "setting": cell.setting, "cell_arguments": cell.arguments}  # fmt: skip
        base["run_arguments"] = run_arguments(grid, cell)
        base["arguments_hash"] = arguments_hash(base["run_arguments"])
        try:
            args = build_arguments(grid, cell, out, results_path)
            record = experiment.run(*args, cache_when_valid=True)
            entry = {**base, "status": "ok", **slim_record(record)}
        except Exception as err:  # noqa: BLE001 - a failed cell is recorded and the sweep goes on
            failed += 1
            logger.error("cell %s failed: %s", cell.cell_id, err)
            entry = {**base, "status": "failed", "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                     "traceback": traceback.format_exc(limit=5)}  # fmt: skip
        entry["cell_seconds"] = time.time() - began
        try:
            append_jsonl(results_path, entry)
        except PetlError as err:  # a full disk: stop rather than train cells that cannot be recorded
            raise PetlError(f"{err}; cell {cell.cell_id} ran but is not recorded, so the sweep stops (run it again to resume)") from None
    bar.close()
    print(f"sweep {grid['name']}: ran {len(todo)} cells ({failed} failed); results in {results_path}")
    return {"cells": len(cells), "to_run": len(todo), "ran": len(todo), "failed": failed}


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
    parser.add_argument("--shard", metavar="K/N", help="run only cells K, K+N, K+2N, ... of the grid (N parallel workers)")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING, datefmt="%H:%M:%S")
    import transformers

    transformers.logging.set_verbosity_error()

    def sweep() -> int:
        summary = run_sweep(args.grid, args.results, args.output_dir, args.dry_run, not args.skip_failed, args.max_cells, args.shard)
        return 1 if summary["failed"] else 0

    return exit_status(sweep)


if __name__ == "__main__":
    sys.exit(main())

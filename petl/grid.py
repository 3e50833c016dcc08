"""A grid's cells and the run arguments of each: what petl.sweep plans, runs and compares with its
records, and what the engine (petl/sweep_engine.py) and tuned groups (petl/tune_cells.py) build runs from.
The grid file format is described in petl/sweep.py."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petl.errors import PetlError
from petl.results import read_jsonl, read_yaml_or_json

GRID_KEYS = {"name", "results", "output_dir", "model_name_or_path", "tasks", "seeds", "layers", "arguments", "methods", "tune",
             "cpus_per_cell", "gpus_per_cell"}  # fmt: skip
METHOD_KEYS = {"layers", "tasks", "tune", "tune_layer"}  # besides run_glue.py arguments
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
    tune_role: str | None = None  # None: an untuned cell; "candidate" or "final" in a tuned group (petl/tune_cells.py)
    candidate: dict[str, Any] = field(default_factory=dict)  # a candidate's tuned values
    trial: str | None = None  # a Ray Tune candidate's trial id in its group's search (draws may repeat)
    tune_layer: int | None = None  # the method's `tune_layer`: one tuned group over all its layers, tuned at this one

    @property
    def group_id(self) -> str:
        """The cell's coordinates without its seed (and candidate): one tuned group."""
        parts = [self.task, self.method_name]
        if self.layer is not None:
            parts.append(f"layer={self.layer}")
        parts += [f"{k}={v}" for k, v in sorted(self.setting.items())]
        return "/".join(parts)

    @property
    def tune_group_id(self) -> str:
        """The tuned group the cell belongs to: its group_id, or with `tune_layer` its coordinates without the
        layer (one choice, made at that layer, for every layer)."""
        if self.tune_layer is None:
            return self.group_id
        parts = [self.task, self.method_name, f"tune_layer={self.tune_layer}"]
        return "/".join(parts + [f"{k}={v}" for k, v in sorted(self.setting.items())])

    @property
    def cell_id(self) -> str:
        trial = [] if self.trial is None else [f"trial={self.trial}"]
        return "/".join([self.group_id, *trial, *candidate_label(self.candidate), f"seed={self.seed}"])


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


def model_depth(grid: dict) -> int | None:
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
                tune_layer = _tune_layer(spec, layers, where) if "tune_layer" in spec else None
                axes = {k: v for k, v in args.items() if isinstance(v, list)}
                for layer in layers:
                    for values in itertools.product(*axes.values()) if axes else [()]:
                        setting = dict(zip(axes, values, strict=True))
                        cell_args = {k: _substitute(setting.get(k, v), layer) for k, v in args.items()}
                        cells.append(Cell(task, name, layer, int(seed), setting, cell_args, tune_layer=tune_layer))
    ids = [c.cell_id for c in cells]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise PetlError(f"grid has the cell {dup!r} twice")
    return cells


def _tune_layer(spec: dict, layers: list, where: str) -> int:
    """A method's `tune_layer`: one of its own layers, and only beside a `tune:` block of lists."""
    value = spec["tune_layer"]
    if None in layers:
        raise PetlError(f"{where}: tune_layer {value!r} needs a method whose arguments name a layer ({{layer}})")
    if isinstance(value, bool) or value not in layers:
        raise PetlError(f"{where}: tune_layer {value!r} is not one of its layers; allowed: {', '.join(map(str, layers))}")
    if not spec.get("tune"):
        raise PetlError(f"{where}: tune_layer {value!r} without a tune: block of its own; give e.g. tune: {{learning_rate: [...]}}")
    return int(value)


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
    if "results_file" in grid["arguments"] or "results_file" in cell.arguments:  # the driver alone writes the sweep's records
        raise PetlError(f"cell {cell.cell_id}: results_file is the sweep's own (the grid's `results:`); drop it from the grid's arguments")
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


def record_base(grid: dict, cell: Cell) -> dict:
    """What every record of a cell starts with: its coordinates, its arguments and their hash."""
    base = {"sweep": grid["name"], "cell_id": cell.cell_id, "task": cell.task, "method_name": cell.method_name,
            "layer": cell.layer, "seed": cell.seed, "setting": cell.setting, "cell_arguments": cell.arguments}  # fmt: skip
    base["run_arguments"] = run_arguments(grid, cell)
    base["arguments_hash"] = arguments_hash(base["run_arguments"])
    if cell.tune_role:
        base["tune_role"] = cell.tune_role
        base["tune_group"] = cell.tune_group_id
    if cell.candidate:
        base["tune_values"] = cell.candidate
    if cell.trial is not None:
        base["tune_trial"] = cell.trial
    return base


def candidate_label(values: dict[str, Any]) -> list[str]:
    """The parts a tuned candidate adds to its cell id (and run folder): `tune.NAME=VALUE`."""
    return [f"tune.{k}={v}" for k, v in sorted(values.items())]

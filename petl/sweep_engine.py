"""How a sweep's cells run: as Ray tasks (the default of `python -m petl.sweep`), or one after
another in the driver's process (`--no_ray`: for debugging, and the Python API's default).

The driver alone writes the results file. It submits at most as many cells as the cluster can run at
once (so the progress bar's "running" is true), collects each result as it comes back (`ray.wait`)
and appends its record. Ray's own task retries are off (`max_retries=0`): a cell whose worker process
or node dies (`WorkerCrashedError`, `NodeDiedError`, out-of-memory kills, ...) is resubmitted by the
driver, up to `--max_retries` more times, and its record carries `attempts` and `retried_after` (one
line per lost attempt). A Python exception inside a cell is no retry: the cell is recorded as failed,
as in-process. So every cell gets exactly one finished record per run of the sweep.

`PETL_SWEEP_TEST_KILL_ONCE=<marker file>` (tests only): the first cell to reach a training step while
the marker does not exist creates it and SIGKILLs its own process, as a crashing worker would.
"""

from __future__ import annotations

import math
import os
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from petl.ray_runtime import largest_node

KILL_ONCE_ENV = "PETL_SWEEP_TEST_KILL_ONCE"
DEFAULT_CPUS_PER_CELL = 2.0  # 2 threads a cell: on 2 cores one cell at a time (faster than two 1-thread cells, measured)


# bulky or location-bound parts of a run record, left out of a sweep's JSONL (results.json keeps them)
DROPPED_FROM_RECORD = ("parameter_report", "arguments", "prediction_files", "new_parameters_initialised")


def slim_record(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in DROPPED_FROM_RECORD}


@dataclass
class CellJob:
    """One cell as the engine runs it: everything the task needs, picklable."""

    cell: Any  # petl.grid.Cell
    values: dict  # every run_glue argument of the cell (petl.grid.run_values), parsed in the worker
    base: dict  # the record's coordinates, arguments and hash (petl.grid.record_base)
    attempts: int = 0
    retried_after: list[str] = field(default_factory=list)


def _kill_once_callback(marker: str):
    from transformers import TrainerCallback

    class KillOnce(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            try:
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)

    return KillOnce()


def run_cell(job: CellJob, threads: int | None = None, cwd: str | None = None, kill_marker: str | None = None,
             callbacks: list | None = None) -> dict:  # fmt: skip
    """Train one cell (petl.experiment.run) and return its finished record: status ok with the run's
    record (less DROPPED_FROM_RECORD), or status failed with the error. Runs in a Ray worker or in-process."""
    from argument_classes import arguments_from_dict

    if cwd is not None and os.path.isdir(cwd):
        os.chdir(cwd)  # the grid's relative paths (glue_dir, ...) mean what they mean to the driver
    if threads is not None:
        import torch

        torch.set_num_threads(max(1, threads))
    from petl import experiment

    began = time.time()
    try:
        args = arguments_from_dict(job.values, f"cell {job.cell.cell_id}")  # parsed here: TrainingArguments sees the worker's devices
        callbacks = [*(callbacks or []), *([_kill_once_callback(kill_marker)] if kill_marker else [])]
        extra = {"callbacks": callbacks} if callbacks else {}
        record = experiment.run(*args, cache_when_valid=True, **extra)
        entry = {**job.base, "status": "ok", **slim_record(record)}
    except Exception as err:  # noqa: BLE001 - a failed cell is recorded and the sweep goes on
        first = str(err).splitlines()[0] if str(err) else ""
        entry = {**job.base, "status": "failed", "error": f"{type(err).__name__}: {first}", "traceback": traceback.format_exc(limit=5)}
    entry["cell_started"] = began
    entry["cell_seconds"] = time.time() - began
    return entry


# ---- engines: submit jobs, get finished ones back -------------------------------------------------------


class LocalEngine:
    """Cells one after another in this process (`--no_ray`): tracebacks and debuggers work as usual."""

    capacity = 1
    description = "in-process, one cell at a time"

    def __init__(self, runner: Callable[[CellJob], dict] | None = None, threads: int | None = None):
        """`threads`: torch threads per cell where cpus_per_cell was given (else torch's own default)."""
        self.pending: list[CellJob] = []
        self.runner = runner or (lambda job: run_cell(job, threads=threads, kill_marker=os.environ.get(KILL_ONCE_ENV)))

    def submit(self, job: CellJob) -> None:
        self.pending.append(job)

    def running(self) -> int:
        return len(self.pending)

    def wait(self) -> list[tuple[CellJob, dict | None, str | None]]:
        job = self.pending.pop(0)
        return [(job, self.runner(job), None)]

    def close(self) -> None:
        pass


class RayEngine:
    """Each cell a Ray task with `cpus` CPUs and `gpus` GPUs (fractions pack several cells on one GPU)."""

    def __init__(self, cpus: float, gpus: float):
        import ray

        self.ray = ray
        node, total = largest_node(), ray.cluster_resources()
        per_cpu = math.floor(float(total.get("CPU", 0.0)) / cpus + 1e-9) if cpus > 0 else 10**6
        per_gpu = math.floor(float(total.get("GPU", 0.0)) / gpus + 1e-9) if gpus > 0 else 10**6
        self.capacity = max(1, min(per_cpu, per_gpu))
        self.description = f"Ray, {self.capacity} cell(s) at a time ({cpus:g} CPU, {gpus:g} GPU each; largest node {node['CPU']:g} CPU)"
        self.cpus, self.gpus = cpus, gpus
        self.warming: list = []
        self.remote = ray.remote(_cell_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
        self.threads = max(1, int(cpus))
        self.cwd = os.getcwd()
        self.kill_marker = os.environ.get(KILL_ONCE_ENV)
        self.refs: dict[Any, CellJob] = {}

    def warm_up(self) -> None:
        """One task per slot that imports the training code, so that the workers' imports overlap the
        driver's own work instead of delaying the first cells (results ignored)."""
        warm = self.ray.remote(_import_training_code).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0)
        self.warming = [warm.remote(self.cwd) for _ in range(min(self.capacity, 64))]

    def submit(self, job: CellJob) -> None:
        ref = self.remote.remote(job, self.threads, self.cwd, self.kill_marker)
        self.refs[ref] = job

    def running(self) -> int:
        return len(self.refs)

    def wait(self, timeout: float = 1.0) -> list[tuple[CellJob, dict | None, str | None]]:
        """Finished jobs: (job, record, None), or (job, None, error line) when its worker or node died."""
        ray = self.ray
        done, _ = ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        out = []
        for ref in done:
            job = self.refs.pop(ref)
            try:
                out.append((job, ray.get(ref), None))
            except ray.exceptions.RayTaskError as err:  # an error outside the cell's own try (unpickling, imports)
                cause = str(err.cause if err.cause is not None else err).splitlines()
                record = {**job.base, "status": "failed", "error": f"{type(err.cause or err).__name__}: {cause[0] if cause else ''}"}
                out.append((job, record, None))
            except ray.exceptions.RayError as err:  # the worker process or its node is gone: retry
                lines = [line for line in str(err).splitlines() if line.strip()]
                out.append((job, None, f"{type(err).__name__}: {lines[0] if lines else ''}"))
        return out

    def close(self) -> None:
        for ref in list(self.refs):
            self.ray.cancel(ref, force=True)
        self.refs.clear()


def _import_training_code(cwd: str) -> None:
    if os.path.isdir(cwd):
        os.chdir(cwd)
    import argument_classes  # noqa: F401
    import petl.experiment  # noqa: F401


def _cell_task(job: CellJob, threads: int, cwd: str, kill_marker: str | None) -> dict:
    import ray

    entry = run_cell(job, threads=threads, cwd=cwd, kill_marker=kill_marker)
    entry["ray_node_id"] = ray.get_runtime_context().get_node_id()
    return entry

#!/usr/bin/env python
"""A sweep through Ray, one cell at a time, against the sequential in-process sweep (`--no_ray`).

    python benchmarks/sweep_ray.py                    # 12 MiniLM-L6 cells of a study's size, 2 rounds, ~15 min (idle 2 cores)
    python benchmarks/sweep_ray.py --rounds 1 --max_train_samples 64 --epochs 1 --max_eval_samples 64   # quick look

The grid: MRPC and RTE x LoRA at each of MiniLM-L6's 6 layers (12 cells), 400 training examples, two
epochs, the whole validation and test halves (cells of 10-30 s, as in sweeps/study_minilm.yaml), the
frozen-layer cache on disk as in any sweep. Each pass is the whole command
(`python -m petl.sweep GRID ...` in a fresh process, fresh output folder and results file), so Ray's
start-up, its worker's imports and the task hand-offs are all in the Ray pass's wall time. Ray runs
with `--cpus_per_cell` = every core of this machine, i.e. one cell at a time with as many torch threads
as the sequential process has. Passes alternate (sequential, Ray; then Ray, sequential; ...) so that
load from other processes falls on both alike; the ratio is of the summed wall times. The machine's
load average before and after is recorded: others may share the CPU.

Writes benchmarks/results/sweep_ray_cpu.json (or --out). Target: Ray / sequential <= 1.10.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_RATIO = 1.10


def grid(folder: Path, glue_dir: str, max_train_samples: int, epochs: int, max_eval_samples: int | None) -> Path:
    evaluation = {"max_eval_samples": max_eval_samples} if max_eval_samples else {}
    spec = {
        "name": "bench_sweep_ray",
        "results": str(folder / "results.jsonl"),
        "output_dir": str(folder / "out"),
        "model_name_or_path": "minilm-l6",
        "tasks": ["mrpc", "rte"],
        "seeds": [1],
        "layers": "all",
        "arguments": {
            "glue_dir": glue_dir,
            "split_mode": "heldout",
            "max_train_samples": max_train_samples,
            **evaluation,
            "num_train_epochs": epochs,
            "learning_rate": 1e-3,
            "per_device_train_batch_size": 16,
        },  # fmt: skip
        "methods": {"lora": {"method": "lora", "lora_layers": "{layer}"}},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "grid.json"
    path.write_text(json.dumps(spec))
    return path


def one_pass(kind: str, work: Path, args, cpus: int) -> dict:
    folder = work / f"{kind}-{time.time_ns()}"
    path = grid(folder, args.glue_dir, args.max_train_samples, args.epochs, args.max_eval_samples)
    flags = ["--no_ray"] if kind == "sequential" else ["--cpus_per_cell", str(cpus)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray on the loopback
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "petl.sweep", str(path), *flags], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{kind} pass failed ({done.returncode}):\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "kind": kind,
        "wall_seconds": wall,
        "cells": len(records),
        "failed": sum(r["status"] != "ok" for r in records),
        "summed_cell_seconds": sum(r["cell_seconds"] for r in records),
        "torch_threads": sorted({r.get("hardware", {}).get("torch_threads") for r in records}, key=str),
        "load_average_after": os.getloadavg(),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="pairs of passes (each pair: both kinds, order alternating)")
    parser.add_argument("--max_train_samples", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max_eval_samples", type=int, default=0, help="0: the whole validation and test halves")
    parser.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR", str(REPO.parent / "shared" / "data" / "glue")))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "sweep_ray_cpu.json"))
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    load_before = os.getloadavg()
    passes: list[dict] = []
    scratch = REPO / "outputs" if (REPO / "outputs").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="sweep_ray_bench-", dir=scratch) as work:
        for r in range(args.rounds):
            order = ["sequential", "ray"] if r % 2 == 0 else ["ray", "sequential"]
            for kind in order:
                passes.append(one_pass(kind, Path(work), args, cpus))
                print(f"round {r + 1} {kind}: {passes[-1]['wall_seconds']:.1f} s", flush=True)
            write_result(args, cpus, load_before, passes, r + 1)  # after every round: a cut-short run still reports


def mean_cell_seconds(passes: list[dict], kind: str) -> float:
    mine = [p for p in passes if p["kind"] == kind]
    return sum(p["summed_cell_seconds"] for p in mine) / max(1, sum(p["cells"] for p in mine))


def write_result(args, cpus: int, load_before: tuple, passes: list[dict], rounds: int) -> None:
    import ray
    import torch

    total = {kind: sum(p["wall_seconds"] for p in passes if p["kind"] == kind) for kind in ("sequential", "ray")}
    ratio = total["ray"] / total["sequential"]
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": {"host": platform.node(), "cpu": cpu_model(), "cpu_count": cpus, "gpu": None, "platform": platform.platform()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__},
        "grid": "MRPC + RTE x LoRA at each of MiniLM-L6's 6 layers = 12 cells; "
        f"{args.max_train_samples} training examples, {args.max_eval_samples or 'all'} evaluation examples, {args.epochs} epoch(s), "
        "frozen-layer cache on disk",
        "mean_cell_seconds": {kind: mean_cell_seconds(passes, kind) for kind in ("sequential", "ray")},
        "ray": f"embedded local Ray, --cpus_per_cell {cpus}: one cell at a time, {cpus} torch threads (as the sequential process)",
        "rounds": rounds,
        "passes": passes,
        "wall_seconds": total,
        "ratio_ray_to_sequential": ratio,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
        "load_average_before": load_before,
        "note": "whole-command wall times (Python start, Ray start and worker imports included), passes alternating; "
        "other processes may share the CPU: see the load averages",
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"sequential {total['sequential']:.1f} s, Ray {total['ray']:.1f} s: ratio {ratio:.3f} (target <= {TARGET_RATIO}); {args.out}")


if __name__ == "__main__":
    main()

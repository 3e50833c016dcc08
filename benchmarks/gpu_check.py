#!/usr/bin/env python
"""The checks a CPU-only machine cannot make: fp16 and bf16, DDP and DeepSpeed ZeRO-2/3 on GPUs.

    bash benchmarks/gpu_check.sh                                  # every method; ~5-10 min on one GPU
    bash benchmarks/gpu_check.sh --methods lora,prefix --steps 10
    python benchmarks/gpu_check.py --cpu_smoke --methods lora --output /tmp/smoke.json   # the logic, on CPU

Every run goes through the real pipeline (`petl.experiment.run`, the Trainer, its AMP and launchers) on
MRPC with MiniLM-L6, dropout off, a constant learning rate and the same seed, so that runs differ only in
what is checked. Stages, each in fresh processes:
- single: every method for --steps steps in fp32, fp16 and bf16. Passes when every logged loss is finite
  and the mean training loss is within --tolerance (5%) of fp32's. The median step time is recorded.
- ddp: `torchrun --nproc_per_node=<GPUs>`, every method in fp32 (skipped, and said so, with one GPU).
- zero2, zero3: the deepspeed launcher with ds_configs/zero2.json and zero3.json on every GPU, bf16.
  DDP and ZeRO keep the global batch of the single stage when it divides among the GPUs, and then must
  stay within the tolerance of the single process in the same precision; otherwise finite losses only.
Writes benchmarks/results/gpu_check-<date>.json (or --output). Exit status: 0 when every check passed,
1 when one failed (the JSON and the table say which), 2 for bad arguments or no CUDA GPU (one line).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# method tag -> run_glue.py method flags: every registered method, and one combination
METHODS: dict[str, dict] = {
    "full": {"method": "full", "learning_rate": 5e-5},
    "head": {"method": "head"},
    "ffn": {"method": "ffn", "ffn_layers": "1"},
    "bitfit": {"method": "bitfit"},
    "lora": {"method": "lora"},
    "adapter": {"method": "adapter", "adapter_dim": 16},
    "houlsby": {"method": "houlsby", "adapter_dim": 16},
    "pfeiffer": {"method": "pfeiffer", "adapter_dim": 16},
    "parallel": {"method": "parallel", "adapter_dim": 16},
    "prefix": {"method": "prefix", "prefix_length": 8},
    "prompt": {"method": "prompt", "prompt_length": 8},
    "ptuning": {"method": "ptuning", "ptuning_length": 8},
    "idpg": {"method": "idpg", "idpg_prompt_length": 4},
    "ia3": {"method": "ia3"},
    "adapter+lora": {"method": "adapter,lora", "adapter_dim": 16, "adapter_layers": "1", "lora_layers": "0"},
}
PRECISIONS = {"fp32": {}, "fp16": {"fp16": True}, "bf16": {"bf16": True}}
ZERO_STAGES = ("zero2", "zero3")
ZERO_PRECISION = "bf16"
DDP_PRECISION = "fp32"
GLOBAL_BATCH = 16


class UsageError(Exception):
    """Bad arguments or no GPU: one `error:` line, exit status 2."""


# ------------------------------------------------------------------------------------------------
# worker: the methods of one stage, one run after the other in this process (launchers are slow to start)


def run_arguments(tag: str, precision: str, args, out: Path) -> dict:
    values = {
        "task_name": "mrpc",
        "glue_dir": args.glue_dir,
        "model_name_or_path": args.model,
        "pooler_type": "avg",
        "config_overrides": "hidden_dropout_prob=0,attention_probs_dropout_prob=0",
        "classifier_dropout": 0.0,
        "split_mode": "heldout",
        "max_train_samples": args.steps * GLOBAL_BATCH,
        "max_eval_samples": 16,
        "per_device_train_batch_size": args.per_device_batch,
        "per_device_eval_batch_size": 16,
        "max_steps": args.steps,
        "learning_rate": 1e-3,
        "head_lr": 1e-3,
        "lr_scheduler_type": "constant",
        "eval_strategy": "no",
        "save_strategy": "no",
        "logging_steps": 1,
        "logging_nan_inf_filter": False,  # a non-finite loss must show, not be replaced by the mean
        "seed": 42,
        "output_dir": str(out / f"{tag}-{precision}"),
        "overwrite_output_dir": True,
        "disable_tqdm": True,
        "report_to": [],
        "deepspeed": args.deepspeed_config,
        **({"num_hidden_layers": args.num_hidden_layers} if args.num_hidden_layers else {}),
        **({"use_cpu": True} if args.cpu_smoke else {}),
        **PRECISIONS[precision],
    }
    return {**values, **METHODS[tag]}


def step_recorder():
    """A Trainer callback recording each step's logged loss and wall time (CUDA synchronised)."""
    import torch
    from transformers import TrainerCallback

    def now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    class StepRecorder(TrainerCallback):
        def __init__(self):
            self.losses: list[float] = []
            self.step_seconds: list[float] = []
            self._began = None

        def on_step_begin(self, args, state, control, **kwargs):
            self._began = now()

        def on_step_end(self, args, state, control, **kwargs):
            if self._began is not None:
                self.step_seconds.append(now() - self._began)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return StepRecorder()


def run_worker(args) -> int:
    from argument_classes import arguments_from_dict
    from petl import experiment

    out = Path(args.out)
    status: dict[str, dict] = {}
    for tag in args.methods.split(","):
        for precision in args.precisions.split(","):
            recorder = step_recorder()
            cell = status.setdefault(tag, {})
            try:
                arguments = arguments_from_dict(run_arguments(tag, precision, args, out), f"gpu_check {tag}")
                record = experiment.run(*arguments, callbacks=[recorder])
                timed = recorder.step_seconds[1:] or recorder.step_seconds  # the first step warms up kernels
                cell[precision] = {
                    "ok": True,
                    "train_loss": record.get("train_loss"),
                    "losses": recorder.losses,
                    "steps": len(recorder.step_seconds),
                    "median_step_seconds": statistics.median(timed) if timed else None,
                }
            except Exception as err:  # noqa: BLE001 - reported per method and precision; the next one runs
                import traceback

                traceback.print_exc()
                cell[precision] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:500]}
            shutil.rmtree(out / f"{tag}-{precision}", ignore_errors=True)  # a full model's weights: not kept
    if int(os.environ.get("RANK", "0")) == 0:
        from petl.results import write_text_atomic

        write_text_atomic(out / "status.json", json.dumps(status, indent=2))
    return 0


# ------------------------------------------------------------------------------------------------
# driver: launches the stages, compares, writes the JSON


def gpu_count() -> int:
    """CUDA GPUs torch sees; a UsageError saying why there are none."""
    import torch

    if torch.version.cuda is None:
        raise UsageError(f"no CUDA GPU: torch {torch.__version__} is a CPU-only build; install a CUDA build (README, installing on a GPU)")
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        raise UsageError(f"no CUDA GPU: torch {torch.__version__} (CUDA {torch.version.cuda}) sees none{where}; run this on a GPU machine")
    return torch.cuda.device_count()


def launch(stage: str, args, work: Path, methods: list[str], precisions: list[str], gpus: int, per_device_batch: int) -> dict:
    """One stage in fresh processes; the worker's status, or {"launch_error": ...} when it wrote none."""
    out = work / stage
    worker = [str(Path(__file__).resolve()), "--worker", "--out", str(out), "--methods", ",".join(methods),
              "--precisions", ",".join(precisions), "--steps", str(args.steps), "--glue_dir", args.glue_dir,
              "--model", args.model, "--per_device_batch", str(per_device_batch)]  # fmt: skip
    if args.num_hidden_layers:
        worker += ["--num_hidden_layers", str(args.num_hidden_layers)]
    if args.cpu_smoke:
        worker.append("--cpu_smoke")
    bindir = Path(sys.executable).parent
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    if stage == "single":
        command = [sys.executable, *worker]
    elif stage == "ddp":
        command = [str(bindir / "torchrun"), "--nproc_per_node", str(gpus), "--master_port", str(args.port), *worker]
    else:
        command = [str(bindir / "deepspeed"), "--num_gpus", str(gpus), "--master_port", str(args.port + 1), *worker,
                   "--deepspeed_config", str(REPO / "ds_configs" / f"{stage}.json")]  # fmt: skip
        env["PATH"] = f"{bindir}:{env.get('PATH', '')}"
    began = time.time()
    print(f"[{stage}] {len(methods)} method(s) x {','.join(precisions)} on {gpus if not args.cpu_smoke else 0} GPU(s) ...", flush=True)
    log = work / f"{stage}.log"
    with open(log, "w") as fh:
        proc = subprocess.run(command, cwd=str(REPO), env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=args.stage_timeout)
    status_file = out / "status.json"
    if not status_file.is_file():
        tail = log.read_text(errors="replace")[-2000:]
        return {"launch_error": f"exit {proc.returncode}, no status written; log tail:\n{tail}", "seconds": time.time() - began}
    return {"methods": json.loads(status_file.read_text()), "seconds": time.time() - began}


def _finite(run: dict) -> bool:
    values = [*run.get("losses", []), run.get("train_loss")]
    return run.get("ok", False) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values) and bool(run.get("losses"))


def judge(run: dict, reference: dict | None, tolerance: float) -> dict:
    """A run's verdict: finite losses and, given a reference run, the mean training loss within
    `tolerance` of the reference's."""
    verdict = {"finite": _finite(run)}
    if reference is not None and verdict["finite"] and _finite(reference):
        diff = abs(run["train_loss"] - reference["train_loss"]) / max(abs(reference["train_loss"]), 1e-12)
        verdict.update(relative_difference=diff, within_tolerance=diff <= tolerance)
    elif reference is not None:
        verdict["within_tolerance"] = False
    verdict["passed"] = verdict["finite"] and verdict.get("within_tolerance", True)
    if not run.get("ok", False):
        verdict["error"] = run.get("error")
    return verdict


def check(args) -> dict:
    """The stages and their verdicts: the report's content."""
    import torch

    gpus = 0 if args.cpu_smoke else gpu_count()
    methods = args.methods.split(",")
    precisions = ["fp32"] if args.cpu_smoke else list(PRECISIONS)
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": platform.node() or "unknown",
        "cpu_smoke": args.cpu_smoke,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(gpus)],
        "model": args.model,
        "steps": args.steps,
        "global_batch": GLOBAL_BATCH,
        "tolerance": args.tolerance,
        "stages": {},
    }
    work = Path(tempfile.mkdtemp(prefix="gpu_check-", dir=args.work_dir))
    try:
        single = launch("single", args, work, methods, precisions, gpus, GLOBAL_BATCH)
        report["stages"]["single"] = single
        runs = single.get("methods", {})
        for tag in methods:
            for precision in precisions:
                run = runs.get(tag, {}).get(precision, {"ok": False, "error": single.get("launch_error", "not run")})
                reference = None if precision == "fp32" else runs.get(tag, {}).get("fp32")
                run["verdict"] = judge(run, reference, args.tolerance)
                runs.setdefault(tag, {})[precision] = run
        single["methods"] = runs
        if args.cpu_smoke:
            for name in ("fp16", "bf16", "ddp", *ZERO_STAGES):
                report["stages"][name] = {"skipped": "--cpu_smoke: the script's logic only, fp32 on CPU"}
        else:
            plan = [("ddp", DDP_PRECISION)] + [(stage, ZERO_PRECISION) for stage in ZERO_STAGES]
            for stage, precision in plan:
                if stage == "ddp" and gpus < 2:
                    report["stages"][stage] = {"skipped": f"DDP needs 2 or more GPUs; this machine has {gpus}"}
                    continue
                if stage.startswith("zero") and shutil.which("deepspeed", path=str(Path(sys.executable).parent)) is None:
                    report["stages"][stage] = {"skipped": "DeepSpeed is not installed (pip install -r requirements.txt)"}
                    continue
                per_device, comparable = max(1, GLOBAL_BATCH // gpus), GLOBAL_BATCH % gpus == 0
                result = launch(stage, args, work, methods, [precision], gpus, per_device)
                result["precision"], result["per_device_batch"], result["compared_with_single"] = precision, per_device, comparable
                stage_runs = result.get("methods", {})
                for tag in methods:
                    run = stage_runs.get(tag, {}).get(precision, {"ok": False, "error": result.get("launch_error", "not run")})
                    run["verdict"] = judge(run, runs.get(tag, {}).get(precision) if comparable else None, args.tolerance)
                    stage_runs.setdefault(tag, {})[precision] = run
                result["methods"] = stage_runs
                report["stages"][stage] = result
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    failed = [
        f"{stage}/{tag}/{precision}"
        for stage, result in report["stages"].items()
        for tag, cells in result.get("methods", {}).items()
        for precision, run in cells.items()
        if not run.get("verdict", {}).get("passed", False)
    ]
    report["failed"] = failed
    report["passed"] = not failed and not any("launch_error" in r for r in report["stages"].values())
    return report


def table(report: dict) -> str:
    """Per method and stage/precision: relative loss difference (or 'finite') and median step time."""
    columns = [(stage, precision) for stage, result in report["stages"].items() for precision in _precisions_of(result)]
    lines = ["| method | " + " | ".join(f"{s} {p}" for s, p in columns) + " |", "|---|" + "---|" * len(columns)]
    methods = sorted({tag for result in report["stages"].values() for tag in result.get("methods", {})}, key=list(METHODS).index)
    for tag in methods:
        cells = []
        for stage, precision in columns:
            run = report["stages"][stage]["methods"].get(tag, {}).get(precision, {})
            verdict = run.get("verdict", {})
            mark = "ok" if verdict.get("passed") else "FAIL"
            diff = f" {100 * verdict['relative_difference']:.1f}%" if "relative_difference" in verdict else ""
            step = f" {1000 * run['median_step_seconds']:.0f} ms" if run.get("median_step_seconds") else ""
            cells.append(f"{mark}{diff}{step}")
        lines.append(f"| {tag} | " + " | ".join(cells) + " |")
    skipped = [f"{stage}: skipped ({result['skipped']})" for stage, result in report["stages"].items() if "skipped" in result]
    return "\n".join(lines + skipped)


def _precisions_of(result: dict) -> list[str]:
    seen: list[str] = []
    for cells in result.get("methods", {}).values():
        seen += [p for p in cells if p not in seen]
    return seen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/gpu_check.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of: {', '.join(METHODS)}")
    parser.add_argument("--steps", type=int, default=20, help="training steps per run (default 20)")
    parser.add_argument("--tolerance", type=float, default=0.05, help="allowed relative difference of the mean training loss (0.05)")
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--num_hidden_layers", type=int, default=None, help="truncate the model (default: all its layers)")
    parser.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR") or str(REPO.parent / "shared" / "data" / "glue"))
    parser.add_argument("--output", default=None, help="the JSON report (default: benchmarks/results/gpu_check-<date>.json)")
    parser.add_argument("--work_dir", default=None, help="where runs write while they run (default: the system's temporary folder)")
    parser.add_argument("--keep_work", action="store_true", help="keep the run folders and launcher logs")
    parser.add_argument("--port", type=int, default=29541, help="launchers' master port (and the next one)")
    parser.add_argument("--stage_timeout", type=int, default=3600, help="seconds per stage")
    parser.add_argument("--cpu_smoke", action="store_true", help="no GPU: the fp32 step loop on CPU (2 layers, 2 steps): the logic only")
    # worker mode (launched by the driver)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--precisions", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--per_device_batch", type=int, default=GLOBAL_BATCH, help=argparse.SUPPRESS)
    parser.add_argument("--deepspeed_config", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # the deepspeed launcher passes it
    args = parser.parse_args(argv)
    unknown = [m for m in args.methods.split(",") if m not in METHODS]
    if unknown:
        raise UsageError(f"--methods {unknown[0]!r} is not a method; allowed: {', '.join(METHODS)}")
    if args.steps < 1:
        raise UsageError(f"--steps {args.steps} is invalid; allowed: an integer >= 1")
    if not (math.isfinite(args.tolerance) and args.tolerance > 0):
        raise UsageError(f"--tolerance {args.tolerance} is invalid; allowed: a number > 0, e.g. 0.05")
    if not (Path(args.glue_dir) / "MRPC").is_dir():
        raise UsageError(f"--glue_dir {args.glue_dir!r} has no MRPC folder; give the GLUE data folder (or set $GLUE_DIR)")
    if args.cpu_smoke and not args.worker:
        args.num_hidden_layers = args.num_hidden_layers or 2
        args.steps = min(args.steps, 2)
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if args.worker:
            return run_worker(args)
        report = check(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    suffix = "-cpu_smoke" if args.cpu_smoke else ""
    output = Path(args.output or REPO / "benchmarks" / "results" / f"gpu_check-{report['date']}{suffix}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    if report["passed"]:
        print(f"passed; report: {output}")
    else:
        print(f"FAILED: {', '.join(report['failed']) or 'a launcher wrote no status'}; report: {output}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

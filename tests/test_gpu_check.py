"""benchmarks/gpu_check.sh as far as a CPU machine can check it: the refusal without a GPU, bad
arguments, the verdicts (finite losses, within 5% of fp32), and the per-method step loop on CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _script(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", str(SCRIPT), *args], env=environment, capture_output=True, text=True, timeout=300)


def test_without_a_gpu_it_refuses_in_one_line_and_writes_nothing(glue_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the script would run")
    before = sorted((REPO / "benchmarks" / "results").iterdir())
    proc = _script(GLUE_DIR=str(glue_dir), CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: no CUDA GPU: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert sorted((REPO / "benchmarks" / "results").iterdir()) == before


@pytest.mark.parametrize(
    "args,message",
    [
        (["--methods", "lora,lorra"], "error: --methods 'lorra' is not a method; allowed: full, head"),
        (["--steps", "0"], "error: --steps 0 is invalid; allowed: an integer >= 1"),
        (["--tolerance", "nan"], "error: --tolerance nan is invalid; allowed: a number > 0"),
        (["--glue_dir", "/nonexistent"], "error: --glue_dir '/nonexistent' has no MRPC folder"),
    ],
)
def test_bad_arguments_are_one_line_and_status_2(args, message, glue_dir, capsys):
    argv = ["--glue_dir", str(glue_dir), *args]
    assert gpu_check.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def _run(losses: list[float], ok: bool = True) -> dict:
    return {"ok": ok, "losses": losses, "train_loss": sum(losses) / len(losses) if losses else None}


def test_a_precision_passes_with_finite_losses_within_the_tolerance_of_fp32():
    fp32 = _run([0.70, 0.68, 0.66])
    assert gpu_check.judge(fp32, None, 0.05)["passed"]
    close = gpu_check.judge(_run([0.71, 0.69, 0.67]), fp32, 0.05)
    assert close["passed"] and math.isclose(close["relative_difference"], 0.01 / 0.68)
    far = gpu_check.judge(_run([0.75, 0.72, 0.70]), fp32, 0.05)  # 6% above
    assert not far["passed"] and not far["within_tolerance"]
    assert not gpu_check.judge(_run([0.70, float("nan"), 0.66]), fp32, 0.05)["passed"]  # one step overflowed
    assert not gpu_check.judge(_run([0.70, float("inf")]), None, 0.05)["passed"]
    assert not gpu_check.judge(_run([]), fp32, 0.05)["passed"]  # no step logged
    failed = gpu_check.judge({"ok": False, "error": "RuntimeError: CUDA out of memory"}, fp32, 0.05)
    assert not failed["passed"] and failed["error"].startswith("RuntimeError")
    assert not gpu_check.judge(fp32, _run([float("nan")]), 0.05)["passed"]  # no finite reference: nothing to compare with


def test_cpu_smoke_runs_the_per_method_step_loop_and_writes_the_report(tmp_path, glue_dir):
    output = tmp_path / "smoke.json"
    proc = _script("--cpu_smoke", "--methods", "lora,prefix", "--output", str(output), "--work_dir", str(tmp_path), GLUE_DIR=str(glue_dir))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(output.read_text())
    assert report["passed"] and report["cpu_smoke"] and report["failed"] == []
    runs = report["stages"]["single"]["methods"]
    assert sorted(runs) == ["lora", "prefix"]
    for method in ("lora", "prefix"):
        run = runs[method]["fp32"]
        assert run["steps"] == 2 and len(run["losses"]) == 2 and all(math.isfinite(x) for x in run["losses"])
        assert run["median_step_seconds"] > 0 and run["verdict"]["passed"]
    assert all("cpu_smoke" in report["stages"][s]["skipped"] for s in ("fp16", "bf16", "ddp", "zero2", "zero3"))
    assert "| lora | ok" in proc.stdout and f"passed; report: {output}" in proc.stdout
    assert list(tmp_path.iterdir()) == [output]  # the run folders are removed

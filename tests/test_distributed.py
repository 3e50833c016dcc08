"""Every method under a single process, DDP (torchrun, gloo) and DeepSpeed ZeRO-1/2/3 on CPU.

One launcher per stage trains all methods (tests/distributed_worker.py); then, in this process,
each saved delta is reloaded into a fresh model and must give the validation loss the distributed
run reported (so the delta is complete, and the evaluation counted every example exactly once);
and the distributed losses after two steps equal the single-process run with the same global batch
(dropout off). The support table in the README names these tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "distributed_worker.py"
sys.path.insert(0, str(REPO / "tests"))
from distributed_worker import METHODS, common_arguments  # noqa: E402

STAGES = ("single", "ddp", "zero1", "zero2", "zero3")
# ZeRO-1 differs from ZeRO-2 only in keeping whole gradients, ZeRO-2 from ZeRO-3 in not partitioning the
# weights: subsets cover them. Accumulation and
# bf16 are checked on methods of every kind (whole model, reparameterised, hooks, inputs). Keeps the suite short.
SUBSETS = {
    "zero1": ("full", "lora", "prompt", "adapter+lora"),
    "zero2": ("full", "head", "lora", "prefix", "prompt", "houlsby", "adapter+lora"),  # ZeRO-3 runs every method
    "accumulate2x4": ("full", "head", "lora", "prefix", "prompt", "houlsby", "adapter+lora"),
    "bf16": ("full", "bitfit", "lora", "parallel", "prefix", "prompt"),
}


def methods_of(name: str) -> list[str]:
    return list(SUBSETS.get(name, METHODS))


HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


def _launch(stage: str, out: Path, glue_dir: Path, extra: dict | None = None, methods: list[str] | None = None) -> dict:
    args = ["--out", str(out), "--glue_dir", str(glue_dir), "--extra", json.dumps(extra or {})]
    args += ["--methods", ",".join(methods or METHODS)]
    bindir = Path(sys.executable).parent
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if stage == "single":
        command = [sys.executable, str(WORKER), *args]
        env["OMP_NUM_THREADS"] = "2"
    elif stage == "ddp":
        command = [str(bindir / "torchrun"), "--nproc_per_node", "2", "--master_port", "29531", str(WORKER), *args]
    else:
        env["DS_ACCELERATOR"] = "cpu"
        command = [str(bindir / "deepspeed"), "--num_gpus", "2", "--master_port", "29532", str(WORKER), *args,
                   "--deepspeed_config", str(REPO / "ds_configs" / f"{stage}.json")]  # fmt: skip
        env["PATH"] = f"{bindir}:{env.get('PATH', '')}"
    proc = subprocess.run(command, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=900)
    status_file = out / "status.json"
    assert status_file.is_file(), (
        f"{stage} launcher wrote no status (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return json.loads(status_file.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, glue_dir):
    root = tmp_path_factory.mktemp("dist")
    out = {}
    for stage in STAGES:
        if stage.startswith("zero") and not HAS_DEEPSPEED:
            continue
        extra = {"per_device_train_batch_size": 8} if stage == "single" else None  # = 2 ranks x 4
        out[stage] = (root / stage, _launch(stage, root / stage, glue_dir, extra, methods_of(stage)))
    return out


def _reload_validation_loss(folder: Path, glue_dir: Path) -> float:
    """`run_glue.py --load_petl` in this single process: the saved delta, evaluated."""
    import run_glue
    from argument_classes import arguments_from_dict

    values = common_arguments(str(glue_dir), folder.parent / "reload", folder.name, None, {})
    values.update(load_petl=str(folder), max_steps=-1)
    del values["deepspeed"]
    return run_glue.run(*arguments_from_dict(values))["validation_metrics"]["loss"]


@pytest.mark.parametrize("stage,method", [(s, m) for s in STAGES for m in methods_of(s)])
def test_method_trains_saves_and_reloads(runs, glue_dir, stage, method):
    if stage not in runs:
        pytest.skip("deepspeed is not installed")
    folder, status = runs[stage]
    assert status[method]["ok"], status[method].get("error")
    if method == "full":
        return  # full fine-tuning saves a whole model (HF format), not a delta; covered by the loss check
    reloaded = _reload_validation_loss(folder / method, glue_dir)
    assert reloaded == pytest.approx(status[method]["validation_loss"], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("stage,method", [(s, m) for s in STAGES if s != "single" for m in methods_of(s)])
def test_distributed_updates_equal_single_process_with_the_same_global_batch(runs, stage, method):
    """2 ranks x batch 4 = 8 = the single process's batch 8: same data, same updates, same losses."""
    if stage not in runs:
        pytest.skip("deepspeed is not installed")
    single, dist = runs["single"][1][method], runs[stage][1][method]
    assert dist["ok"] and single["ok"]
    assert dist["split_fingerprints"] == single["split_fingerprints"]  # same held-out split and subsample
    # every validation example counted once (24 examples = 2 ranks x 2 batches of 5 + a padded last batch)
    assert dist["validation_accuracy"] == single["validation_accuracy"]
    assert dist["validation_loss"] == pytest.approx(single["validation_loss"], rel=1e-5)


@pytest.fixture(scope="module")
def variants(tmp_path_factory, glue_dir):
    """Single-process variants of the "single" stage (batch 8): accumulation 2 x 4, and bf16."""
    root = tmp_path_factory.mktemp("variants")
    return {
        "accumulate2x4": _launch(
            "single",
            root / "accumulate",
            glue_dir,
            {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2},
            methods_of("accumulate2x4"),
        ),
        "bf16": _launch("single", root / "bf16", glue_dir, {"per_device_train_batch_size": 8, "bf16": True}, methods_of("bf16")),
    }


@pytest.mark.parametrize("method", methods_of("accumulate2x4"))
def test_gradient_accumulation_equals_the_larger_batch(runs, variants, method):
    big, accumulated = runs["single"][1][method], variants["accumulate2x4"][method]
    assert big["ok"] and accumulated["ok"], (big, accumulated)
    assert accumulated["validation_loss"] == pytest.approx(big["validation_loss"], rel=1e-5)
    assert accumulated["train_loss"] == pytest.approx(big["train_loss"], rel=1e-5)


@pytest.mark.parametrize("method", methods_of("bf16"))
def test_bf16_trains_on_cpu(runs, variants, method):
    bf16, fp32 = variants["bf16"][method], runs["single"][1][method]
    assert bf16["ok"], bf16.get("error")
    # the same updates up to bfloat16 rounding: close to the float32 run, not identical to it
    assert bf16["validation_loss"] == pytest.approx(fp32["validation_loss"], rel=0.05)
    assert bf16["validation_loss"] != fp32["validation_loss"]


def test_readme_support_table_marks_exactly_the_tested_cells():
    """The README's support table: a ✓ exactly where this module has a test case, a row for every
    registered method (and the combination tested), and no other mark. Runs nothing distributed."""
    import petl.methods  # noqa: F401  registers every method
    from petl.registry import METHODS as REGISTERED

    columns = {"single": "single", "DDP (torchrun)": "ddp", "ZeRO-1": "zero1", "ZeRO-2": "zero2", "ZeRO-3": "zero3",
               "grad. accumulation": "accumulate2x4", "bf16 (CPU)": "bf16"}  # fmt: skip
    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index("| method | " + " | ".join(columns) + " | fp16 |")
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(columns.values(), cells[1:-1], strict=True))
    assert set(rows) == set(METHODS) | set(REGISTERED)
    for method, marks in rows.items():
        for stage, mark in marks.items():
            assert mark == ("✓" if method in METHODS and method in methods_of(stage) else "–"), (method, stage, mark)

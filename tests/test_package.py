"""The project is a pip package: a wheel built from the checkout installs into a fresh virtual
environment, and its console commands work from any folder, with no checkout on the path.

Offline and fast: the wheel is built without build isolation (setuptools from this environment), the
fresh environment has no pip and no packages of its own, and sees this environment's installed
packages (torch, transformers, the packaged models, pip) through one .pth line, after its own
site-packages, so `petl` and `argument_classes` come from the installed wheel."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO

# what the build reads: the rest of the checkout must not be needed
BUILD_INPUTS = ("pyproject.toml", "README.md", "petl", "argument_classes")
# each console command and an option only its own --help lists
COMMANDS = {"petl-glue": "--lora_rank", "petl-search": "--search_scheduler", "petl-sweep": "--shard", "petl-report": "--metric"}


def _run(command: list, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GLUE_DIR", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the checkout (a build writes build/ and *.egg-info next to its sources)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, source / name)
    dist = tmp_path / "dist"
    command = [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", dist]
    done = _run(command, cwd=source)
    assert done.returncode == 0, f"pip wheel . failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _fresh_venv(tmp_path: Path) -> Path:
    """A new virtual environment that sees this one's packages through a .pth file, without copying or downloading them."""
    venv = tmp_path / "venv"
    done = _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    python = venv / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(purelib) / "petl_test_dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    return venv


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the fresh venv with the wheel installed, the wheel)."""
    tmp_path = tmp_path_factory.mktemp("package")
    wheel = _build_wheel(tmp_path)
    venv = _fresh_venv(tmp_path)
    install = [venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", wheel]
    done = _run(install, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv, wheel


def test_the_wheel_installs_the_packages_its_version_and_its_extras(installed):
    venv, wheel = installed
    wheel_version = wheel.name.split("-")[1]
    probe = (
        "import importlib.metadata as m, petl, argument_classes, petl.methods.lora, petl.hyper_search\n"
        "print(petl.__version__); print(petl.__file__); print(argument_classes.__file__)\n"
        "print(' '.join(sorted(m.metadata('petl-glue').get_all('Provides-Extra'))))"
    )
    done = _run([venv / "bin" / "python", "-c", probe], cwd=venv)
    assert done.returncode == 0, done.stderr[-3000:]
    version, petl_file, arguments_file, extras = done.stdout.strip().splitlines()
    assert version == wheel_version
    # the installed copies, not the checkout
    assert Path(petl_file).is_relative_to(venv) and Path(arguments_file).is_relative_to(venv), (petl_file, arguments_file)
    assert extras.split() == ["decoders", "dev", "distributed", "search", "tensorboard"]


def test_petl_glue_dry_run_from_another_folder(installed, glue_dir, tmp_path):
    venv, _ = installed
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    command = [venv / "bin" / "petl-glue", "--task_name", "mrpc", "--method", "lora", "--dry_run", "--glue_dir", glue_dir]
    done = _run(command, cwd=workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    # the parameter report: one row per LoRA layer of MiniLM-L6, the head, and the totals
    assert len(re.findall(r"^lora\s+\d+\s+12,288\s", done.stdout, re.MULTILINE)) == 6, done.stdout[-3000:]
    assert re.search(r"^trainable [\d,]+ \(without head 73,728", done.stdout, re.MULTILINE), done.stdout[-3000:]
    assert list(workdir.iterdir()) == []  # a dry run writes nothing


@pytest.mark.parametrize("command", COMMANDS)
def test_every_console_command_answers_help_from_another_folder(installed, tmp_path, command):
    venv, _ = installed
    done = _run([venv / "bin" / command, "--help"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("usage: ") and COMMANDS[command] in done.stdout, done.stdout[:300]

"""The results record: results.json (atomic) and an append-only JSONL line."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

from petl.errors import PetlError

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_FILE = "results.json"


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "accelerate", "datasets", "peft", "scikit-learn", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode == 0:
            return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        pass
    # a copy of the tree without .git (a remote machine): the launcher may say which commit it is
    return {"commit": os.environ.get("PETL_GIT_COMMIT"), "dirty": None}


def hardware() -> dict[str, Any]:
    """Where a run ran, so that recorded times can be compared honestly."""
    out: dict[str, Any] = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "machine": platform.machine()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["gpu_count"] = torch.cuda.device_count()
    return out


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process (MiB); peak CUDA allocation when a GPU was used."""
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, record: dict) -> None:
    write_text_atomic(path, json.dumps(record, indent=2, default=str) + "\n")


def read_yaml_or_json(path: str, what: str) -> Any:
    """Parse a YAML (.yaml/.yml) or JSON file; a missing file or a parse error is one PetlError line
    naming `what` (e.g. "--search_space", "grid file") and the path."""
    file = Path(path)
    if not file.is_file():
        raise PetlError(f"{what} {path!r} does not exist")
    text = file.read_text()
    try:
        if file.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)
    except Exception as err:  # noqa: BLE001 - any parse error becomes one clear line
        kind = file.suffix.lstrip(".") or "JSON"
        raise PetlError(f"{what} {path!r} is not valid {kind}: {str(err).splitlines()[0]}") from None


def read_jsonl(path: str | os.PathLike) -> tuple[list[dict], list[int]]:
    """The records of a JSONL file, and the numbers of lines that are not JSON (a write cut short)."""
    records, bad = [], []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            bad.append(number)
    return records, bad


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one line; never truncates what is there. One O_APPEND write, so sweep workers
    sharing a results file do not interleave their lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
        while written < len(line):  # a short write (rare) finishes in further calls
            written += os.write(fd, line[written:])
        os.fsync(fd)
    finally:
        os.close(fd)

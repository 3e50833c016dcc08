"""The results record: results.json (atomic) and an append-only JSONL line."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import resource
import secrets
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
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
    """The commit the code ran from, and whether tracked files differ from it. Result files (`*.jsonl`)
    do not count: a sweep appends to its committed JSONL, which changes no code."""
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        status = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode == 0:
            changed = [line[3:] for line in status.stdout.splitlines() if line.strip()]
            changed = [path for path in changed if not path.strip('"').endswith(".jsonl")]
            return {"commit": commit.stdout.strip(), "dirty": bool(changed), **({"changed_files": changed[:10]} if changed else {})}
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


def reset_peak_memory() -> None:
    """Start this run's peak-memory window. A sweep worker runs cell after cell in one process, whose
    lifetime peak (ru_maxrss) would carry an earlier cell's peak into every later record. Linux resets
    the resident high-water mark (VmHWM) when 5 is written to /proc/self/clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass  # not Linux: peak_memory() says its figure covers the process's whole life
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def _resident_high_water_mib() -> float | None:
    """VmHWM (Linux): the peak resident memory since the last reset_peak_memory(), or None."""
    try:
        with open("/proc/self/status") as status:
            line = next((line for line in status if line.startswith("VmHWM:")), None)
    except OSError:
        return None
    return int(line.split()[1]) / 1024 if line else None


def peak_memory() -> dict[str, Any]:
    """Peak resident memory of the process while this run ran (MiB; since reset_peak_memory(): memory an
    earlier run in the same process left behind still counts), and peak CUDA allocation when a GPU was
    used. Where that cannot be read, the process's lifetime peak, marked as such."""
    run_peak = _resident_high_water_mib()
    out: dict[str, Any] = (
        {"peak_rss_mib": run_peak}
        if run_peak is not None
        else {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_rss_scope": "process"}
    )
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


# ---------------------------------------------------------------------------------------------
# Atomic writes: one way to write a file or build a folder, and to clear what a dead writer left

STALE_TEMP_SECONDS = 24 * 3600  # a temporary whose writer cannot be checked (other host, pid in use) is removed after this
_TEMP_NAME = re.compile(r"^\.(?P<stem>.+)\.tmp-(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-[0-9a-f]{8}$")
_MKSTEMP_SUFFIX = "[a-z0-9_]{8}"  # the random part of tempfile's names (the pre-pid temporaries of older versions)


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_name(final: str | os.PathLike) -> Path:
    """`.NAME.tmp-HOST-PID-RANDOM` beside `final`: hidden, and it tells a later sweep which machine and
    process wrote it (see `remove_stale_temps`)."""
    final = Path(final)
    return final.with_name(f".{final.name}.tmp-{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}")


def _try_lock(fd: int) -> bool:
    """Exclusive, non-blocking flock; False when another open file holds it (a live writer)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _remove_path(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):  # best effort: never hide the error being handled
            path.unlink()


@contextlib.contextmanager
def temporary_path(final: str | os.PathLike, folder: bool = False) -> Iterator[Path]:
    """A private temporary file (created empty) or folder beside `final`, flock-ed for as long as this
    process holds it, so that no sweep removes it while it is written. Whatever is still at the
    temporary name on the way out (any exception, KeyboardInterrupt included) is removed; rename it
    into place to keep it."""
    tmp = temp_name(final)
    if folder:
        tmp.mkdir()
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        except BaseException:
            tmp.rmdir()
            raise
    else:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        _try_lock(fd)
        yield tmp
    finally:
        try:
            _remove_path(tmp)
        finally:
            os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process
        return True
    return True


def _is_stale(path: Path, match: re.Match | None, now: float) -> bool:
    """Called with the entry's lock held: a temporary of this machine whose process is gone is stale
    at once; one that cannot be checked (another machine, a pid in use again) after STALE_TEMP_SECONDS."""
    if match is not None and match["host"] == _host_tag() and not _pid_alive(int(match["pid"])):
        return True
    try:
        return now - os.lstat(path).st_mtime > STALE_TEMP_SECONDS
    except FileNotFoundError:
        return False


def remove_stale_temps(folder: str | os.PathLike, stem: str | None = None, legacy: re.Pattern | None = None) -> list[Path]:
    """Remove the temporaries in `folder` (named by `temp_name`, of `final` name `stem` if given) left
    by writers that died (kill -9, power loss); never one that a live process still holds (its flock),
    so workers may share a folder. `legacy` matches the names older versions used (no pid): those go
    after STALE_TEMP_SECONDS. Returns what was removed."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    removed, now = [], time.time()
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None and not (legacy is not None and legacy.match(entry.name)):
            continue
        if match is not None and stem is not None and match["stem"] != stem:
            continue
        path = Path(entry.path)
        try:
            if entry.is_symlink():
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # gone meanwhile, or not ours to read
            continue
        try:
            if _try_lock(fd) and _is_stale(path, match, now):
                _remove_path(path)
                removed.append(path)
        finally:
            os.close(fd)
    return removed


def legacy_temp_names(stems: list[str] | tuple[str, ...], separator: str = ".") -> re.Pattern:
    """Names tempfile gave temporaries beside `stems` before they carried a pid (`.STEM.abcd1234`)."""
    alternatives = "|".join(re.escape(s) for s in stems)
    return re.compile(rf"^\.(?:{alternatives}){re.escape(separator)}(?:stale-)?{_MKSTEMP_SUFFIX}$")


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """The one way files are written here: `write(tmp)` fills a temporary file beside `path`, which is
    flushed to disk and renamed over `path`, so readers see the old file or the new one, never a part.
    A failure (full disk, Ctrl-C) removes the temporary file; one left by a killed process is removed
    by the next write of the same file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, stem=path.name, legacy=legacy_temp_names([path.name]))
    with temporary_path(path) as tmp:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    return path


def publish_folder(tmp: Path, target: Path, marker: str) -> None:
    """Rename the finished folder `tmp` (from `temporary_path(target, folder=True)`) to `target`. A
    `target` folder without its `marker` file (damaged, or left by an older version) is moved aside and
    removed first; a complete `target` that another process published meanwhile is kept (ours is dropped)."""
    if target.is_dir() and not target.is_symlink() and not (target / marker).exists():
        with temporary_path(target, folder=True) as trash, contextlib.suppress(FileNotFoundError):
            os.rename(target, trash / "old")
    try:
        os.rename(tmp, target)
    except OSError:
        if not (target / marker).exists():
            raise


def publish_files(stage: str | os.PathLike, target: str | os.PathLike, last: str) -> None:
    """Move every file of the folder `stage` to the same place under `target`, each by one rename (a
    reader sees the old file or the new one) and the file named `last` after all others: a reader that
    finds the new `last` finds every new file beside it. Between two renames (microseconds; a crash
    then) newer files can stand beside the older `last`."""
    stage, target = Path(stage), Path(target)
    files = sorted((p for p in stage.rglob("*") if p.is_file()), key=lambda p: (p.name == last, str(p)))
    for file in files:
        destination = target / file.relative_to(stage)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(file, destination)


def build_folder(target: str | os.PathLike, marker: str, build: Callable[[Path], object]) -> None:
    """Build the folder `target` once, never seen half-built: `build(tmp)` fills a private temporary
    folder, the `marker` file then marks it complete, and it is renamed into place (`publish_folder`).
    A failure removes the temporary folder (`temporary_path`); OSErrors are the caller's to word."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with temporary_path(target, folder=True) as tmp:
        build(tmp)
        (tmp / marker).write_text("ok\n")
        publish_folder(tmp, target, marker)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) through `write_atomic`: readers never see half a file."""
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


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
    """The records of a JSONL file, and the numbers of lines that are not a JSON object (a write cut
    short, e.g. by a full disk or kill -9). Read as bytes: a torn line may end inside a character."""
    records, bad = [], []
    for number, line in enumerate(Path(path).read_bytes().split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            bad.append(number)
    return records, bad


def _failure_reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def _check_creatable(path: Path, what: str) -> None:
    """`path` (absent) could be created: the nearest existing folder above it is a writable folder."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise PetlError(f"{what}: {str(folder)!r} is a file, so the folder for it cannot be created")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PetlError(f"{what}: the folder {str(folder)!r} is not writable; give a place this user can write to")


def check_writable_folder(folder: str | os.PathLike, flag: str) -> None:
    """Refuse, before any work, an output folder that could not be created or written to: a file,
    one under a file, or a read-only place. Creates nothing."""
    path = Path(folder).absolute()
    what = f"{flag} {str(folder)!r}"
    if path.exists() and not path.is_dir():
        raise PetlError(f"{what} is a file; give a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise PetlError(f"{what} is not writable; give a folder this user can write to")
        return
    _check_creatable(path, what)


def check_appendable(path: str | os.PathLike, what: str = "results file") -> None:
    """Refuse, before any work, a JSONL file that could not take a record: a folder, a file that is
    not writable, a folder that cannot be created (under a file, or read-only). Creates nothing.
    A disk that fills up later is still possible: append_jsonl then fails without leaving a torn line."""
    file = Path(path).absolute()
    shown = f"{what} {str(path)!r}"
    if file.is_dir():
        raise PetlError(f"{shown} is a folder; give the path of a JSONL file (one line is appended per run)")
    if file.exists():
        if not os.access(file, os.W_OK):
            raise PetlError(f"{shown} is not writable; give a file that this user can append to")
        return
    _check_creatable(file, shown)


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    while written < len(data):  # a short write (rare) finishes in further calls
        written += os.write(fd, data[written:])


def append_jsonl(path: str | os.PathLike, record: dict, what: str = "results file") -> tuple[int, int]:
    """Append one line; never changes what was there. One O_APPEND write under an exclusive lock, so
    sweep workers sharing a results file do not interleave their lines. A torn last line (a write
    cut short) is first ended with a newline: it stays an unreadable line of its own (read_jsonl
    reports it) and this record starts on a fresh, intact line. A failed write (full disk, ...) is
    undone (the file is cut back to its size before) and raised as a PetlError naming the file and
    the reason. Returns the byte span (start, end) written, for remove_appended."""
    path = Path(path)
    line = (json.dumps(record, default=str) + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as err:
        raise PetlError(f"{what} {str(path)!r}: cannot append the record ({_failure_reason(err)})") from None
    try:
        with contextlib.suppress(OSError):  # a file system without locks (some NFS): append unlocked
            fcntl.flock(fd, fcntl.LOCK_EX)
        info = os.fstat(fd)
        regular = stat.S_ISREG(info.st_mode)
        start = info.st_size if regular else 0
        if start and os.pread(fd, 1, start - 1) != b"\n":
            line = b"\n" + line
        try:
            _write_all(fd, line)
            os.fsync(fd)
        except OSError as err:
            if regular:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)  # nothing torn is left behind
            raise PetlError(
                f"{what} {str(path)!r}: cannot append the record ({_failure_reason(err)}); the file is left as it was"
            ) from None
    finally:
        os.close(fd)  # releases the lock
    return start, start + len(line)


def remove_appended(path: str | os.PathLike, span: tuple[int, int]) -> bool:
    """Take back a line that append_jsonl wrote (its span), when a later step of the same run failed.
    Only while it is still the file's last line (another writer may have appended since); True if removed."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_size != span[1]:
            return False
        os.ftruncate(fd, span[0])
        os.fsync(fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)

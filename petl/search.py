"""Search spaces for run_glue_hyper_search.py: reading, validation, defaults per method; and the
marker that lets `--resume` trust a search folder.

A space file (YAML or JSON) maps argument names of run_glue.py to one distribution each:

    learning_rate: {loguniform: [1.0e-5, 1.0e-3]}
    head_lr:       {loguniform: [1.0e-4, 1.0e-2]}
    weight_decay:  {uniform: [0.0, 0.1]}
    warmup_steps:  {choice: [0.0, 0.06, 0.1]}
    adapter_dim:   {choice: [16, 32, 64]}

PBT mutates only the optimizer's hyperparameters (MUTABLE) mid-run; everything else (size knobs,
warm-up, batch size) is drawn once per trial and travels with the trial's checkpoint.

Resuming a search makes Ray unpickle files from the output folder (tuner.pkl, trial state,
checkpoints), and unpickling runs code. So a search writes MARKER_FILE into the folder it creates,
signed with a key private to the user (search_key_file()), and `--resume` accepts only a folder
with a valid marker for that very folder, owned by the user and writable by no one else.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import os
import secrets
import stat
import time
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from petl.errors import PetlError
from petl.results import read_yaml_or_json
from petl.typecheck import conforms, type_name

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "randint")
MUTABLE = ("learning_rate", "head_lr", "petl_lr", "weight_decay")
# not searchable: what defines the study, and every argument naming a file, folder or upload target
# (a sampled path could write outside the output folder)
NOT_SEARCHABLE = (
    "per_device_train_batch_size", "output_dir", "seed", "task_name", "method", "model_name_or_path", "overwrite_output_dir",
    "load_petl", "export_peft", "load_peft", "merge_and_save", "resume_from_checkpoint", "deepspeed", "fsdp", "fsdp_config",
    "accelerator_config", "push_to_hub", "run_name", "dry_run", "do_train", "do_eval", "do_predict",
)  # fmt: skip
NOT_SEARCHABLE_SUFFIXES = ("_dir", "_file", "_path")
MARKER_FILE = ".petl_search.json"
MARKER_KIND = "run_glue_hyper_search.py"

# searched for every method; each method adds its own default space (its registry entry's `search_space`,
# declared in petl/methods/<method>.py)
COMMON_SPACE: dict[str, dict] = {
    "head_lr": {"loguniform": [1e-4, 1e-2]},
    "weight_decay": {"uniform": [0.0, 0.1]},
    "warmup_steps": {"choice": [0.0, 0.06, 0.1]},
}


def is_searchable(name: str) -> bool:
    return name not in NOT_SEARCHABLE and not name.endswith(NOT_SEARCHABLE_SUFFIXES) and not name.startswith("hub_")


def searchable_arguments() -> dict[str, Any]:
    """Every run_glue.py argument a space may name, with its resolved type annotation."""
    from argument_classes import ARGUMENT_CLASSES

    out = {}
    for cls in ARGUMENT_CLASSES:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if is_searchable(f.name):
                out[f.name] = hints.get(f.name, Any)
    return out


# -- values against declared argument types (search spaces and JSON argument files) -------------


def _is_choice_of(value: Any, annotation: Any) -> bool:
    """A `choice` value: exactly of the argument's type (numbers finite), never a list or mapping."""
    if isinstance(value, (list, dict)) or not conforms(value, annotation):
        return False
    return not (isinstance(value, float) and not math.isfinite(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- spaces ---------------------------------------------------------------------------------------


def default_space(methods: list[str]) -> dict[str, dict]:
    """The common space, updated by each method's own (in --method order)."""
    import petl.methods  # noqa: F401 - registers every method
    from petl.registry import get_method

    space = dict(COMMON_SPACE)
    for m in methods:
        space.update(get_method(m).search_space or {})
    if "learning_rate" not in space and methods != ["head"]:
        space["learning_rate"] = {"loguniform": [1e-4, 1e-2]}
    return space


def load_space(path: str | None, methods: list[str], scheduler: str | None = None) -> dict[str, dict]:
    if path is None:
        space = default_space(methods)
    else:
        space = read_yaml_or_json(path, "--search_space")
    where = f"--search_space {path!r}" if path else "default search space"
    validate_space(space, where)
    if scheduler == "pbt" and not any(name in MUTABLE for name in space):
        raise PetlError(
            f"{where}: PBT explores by mutating {', '.join(MUTABLE)}, and the space names none of them "
            f"(it has {', '.join(map(str, space))}); add e.g. learning_rate: {{loguniform: [1.0e-4, 1.0e-2]}} "
            "or use --search_scheduler asha"
        )
    return space


def validate_space(space: Any, where: str) -> None:
    """Every name a searchable argument, every distribution well-formed and of values the argument takes."""
    if not isinstance(space, dict) or not space:
        raise PetlError(f"{where}: a search space is a non-empty mapping of argument name to distribution")
    allowed = searchable_arguments()
    for name, dist in space.items():
        if name not in allowed:
            near = ", ".join(sorted(a for a in allowed if a.split("_")[0] == str(name).split("_")[0])[:6])
            hint = f" (similar: {near})" if near else ""
            raise PetlError(f"{where}: {name!r} is not a run_glue.py argument that can be searched{hint}")
        if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
            got = f"got {json.dumps(dist, default=str)}"
            raise PetlError(f"{where}: {name}: give exactly one of {', '.join(DISTRIBUTIONS)}, e.g. {{loguniform: [1e-5, 1e-3]}}; {got}")
        kind, values = next(iter(dist.items()))
        if not isinstance(values, list) or not values:
            raise PetlError(f"{where}: {name}: {kind} needs a list of values, got {json.dumps(values, default=str)}")
        _check_values(name, kind, values, allowed[name], where)


def _check_values(name: str, kind: str, values: list, annotation: Any, where: str) -> None:
    takes = type_name(annotation)
    if kind == "choice":
        for value in values:
            if not _is_choice_of(value, annotation):
                raise PetlError(f"{where}: {name}: choice value {json.dumps(value, default=str)} is not allowed; {name} takes {takes}")
        return
    if len(values) != 2 or not all(_is_number(v) for v in values):
        raise PetlError(f"{where}: {name}: {kind} needs [low, high] with low < high, got {json.dumps(values, default=str)}")
    low, high = values
    if not (math.isfinite(low) and math.isfinite(high)):
        raise PetlError(f"{where}: {name}: {kind} needs finite bounds, got {json.dumps(values)}")
    if not low < high:
        raise PetlError(f"{where}: {name}: {kind} needs [low, high] with low < high, got {json.dumps(values)}")
    if kind == "loguniform" and low <= 0:
        raise PetlError(f"{where}: {name}: loguniform needs low > 0, got {low}")
    if not conforms(1, annotation):  # neither an integer nor a float argument
        raise PetlError(f"{where}: {name}: {kind} draws numbers, but {name} takes {takes}; use choice")
    if not conforms(0.5, annotation) and (kind != "randint" or not all(isinstance(v, int) for v in values)):
        raise PetlError(f"{where}: {name} takes integers: use randint with integer bounds (high excluded) or choice, got {kind} {values}")


def to_tune(space: dict[str, dict]) -> dict[str, Any]:
    from ray import tune

    out = {}
    for name, dist in space.items():
        kind, values = next(iter(dist.items()))
        out[name] = {
            "loguniform": lambda v: tune.loguniform(*v),
            "uniform": lambda v: tune.uniform(*v),
            "choice": lambda v: tune.choice(v),
            "randint": lambda v: tune.randint(*v),
        }[kind](values)
    return out


def mutations(space: dict[str, dict]) -> dict[str, Any]:
    """PBT resamples these on explore (besides perturbing them by 0.8x / 1.2x)."""
    return {k: v for k, v in to_tune(space).items() if k in MUTABLE}


# -- the search folder's marker: what makes `--resume` trust its pickles ------------------------------


def search_key_file() -> Path:
    """A secret of this user that signs the markers: $PETL_SEARCH_KEY_FILE, else
    $XDG_CONFIG_HOME/petl/search.key (default ~/.config/petl/search.key)."""
    if os.environ.get("PETL_SEARCH_KEY_FILE"):
        return Path(os.environ["PETL_SEARCH_KEY_FILE"])
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "petl" / "search.key"


def _read_key(create: bool) -> bytes | None:
    path = search_key_file()
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        from petl.results import temporary_path

        # written whole under a private name, then linked into place: a crash never leaves an empty key,
        # and of two first searches at once, one key wins and both use it
        with temporary_path(path) as tmp:
            os.chmod(tmp, 0o600)
            tmp.write_text(secrets.token_hex(32) + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
    _check_private(path, "the search key file", readable_by_others=False)
    key = path.read_text().strip().encode()
    if len(key) < 32:
        shown = repr(str(path))
        raise PetlError(f"the search key file {shown} holds no key (cut short?); remove it (folders signed with it no longer resume)")
    return key


def _signature(key: bytes, marker: dict) -> str:
    signed = json.dumps({k: marker.get(k) for k in ("kind", "folder", "token", "uid", "created")}, sort_keys=True)
    return hmac.new(key, signed.encode(), hashlib.sha256).hexdigest()


def write_marker(folder: Path) -> Path:
    """Sign and write the marker into a folder a new search has just created (or taken over)."""
    folder = Path(folder).resolve()
    marker = {
        "kind": MARKER_KIND,
        "folder": str(folder),
        "token": secrets.token_hex(16),
        "uid": os.getuid(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    marker["signature"] = _signature(_read_key(create=True), marker)
    from petl.results import write_atomic

    def write(tmp: Path) -> None:
        tmp.chmod(0o600)  # private before it holds anything
        tmp.write_text(json.dumps(marker, indent=2))

    return write_atomic(folder / MARKER_FILE, write)


def _check_private(path: Path, what: str, readable_by_others: bool = True) -> None:
    """Owned by this user, writable by no one else (and, for secrets, readable by no one else)."""
    info = os.stat(path)
    if info.st_uid != os.getuid():
        raise PetlError(f"{what} {str(path)!r} is owned by uid {info.st_uid}, not by you (uid {os.getuid()}); refusing to load it")
    mask = 0o022 if readable_by_others else 0o077
    if info.st_mode & mask:
        others = "writable" if info.st_mode & 0o022 else "readable"
        raise PetlError(
            f"{what} {str(path)!r} is {others} by group or others (mode {stat.filemode(info.st_mode)}); refusing to load it. "
            f"Allowed: only you can write it (chmod go-w{'' if readable_by_others else 'rx'})"
        )


def check_resumable(folder: Path) -> None:
    """Refuse to resume (that is, to unpickle from) a folder this user's searches did not create,
    or one that someone else could have written into. One PetlError line per reason."""
    folder = Path(folder).resolve()
    marker_path = folder / MARKER_FILE
    if not marker_path.is_file():
        raise PetlError(
            f"--resume: {str(folder)!r} has no {MARKER_FILE}, so run_glue_hyper_search.py did not create it; resuming loads "
            "pickled files from the folder, which can run code. Allowed: only folders your own searches created"
        )
    _check_private(folder, "--resume: the search folder")
    _check_private(marker_path, "--resume: the search marker")
    try:
        marker = json.loads(marker_path.read_text())
    except (ValueError, OSError) as err:
        raise PetlError(f"--resume: the search marker {str(marker_path)!r} is unreadable: {str(err).splitlines()[0]}") from None
    key = _read_key(create=False)
    signature = marker.get("signature") if isinstance(marker, dict) else None
    if key is None or not isinstance(signature, str) or not hmac.compare_digest(_signature(key, marker), signature):
        raise PetlError(
            f"--resume: the search marker {str(marker_path)!r} was not signed with your search key ({search_key_file()}), so "
            "no search of yours created this folder here; resuming loads pickled files from it. "
            "Allowed: only folders your own searches created"
        )
    if marker.get("folder") != str(folder):
        raise PetlError(
            f"--resume: {str(folder)!r} was created as {marker.get('folder')!r} and moved or copied; resume it at its original path"
        )
    for root, dirs, files in os.walk(folder):  # every file Ray or the Trainer may unpickle
        for name in dirs + files:
            path = Path(root, name)
            if path.is_symlink() and not path.exists():
                continue
            _check_private(path, "--resume: in the search folder,")

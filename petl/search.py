"""Search spaces for run_glue_hyper_search.py: reading, validation, defaults per method.

A space file (YAML or JSON) maps argument names of run_glue.py to one distribution each:

    learning_rate: {loguniform: [1.0e-5, 1.0e-3]}
    head_lr:       {loguniform: [1.0e-4, 1.0e-2]}
    weight_decay:  {uniform: [0.0, 0.1]}
    warmup_steps:  {choice: [0.0, 0.06, 0.1]}
    adapter_dim:   {choice: [16, 32, 64]}

PBT mutates only the optimizer's hyperparameters (MUTABLE) mid-run; everything else (size knobs,
warm-up, batch size) is drawn once per trial and travels with the trial's checkpoint.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from petl.errors import PetlError
from petl.results import read_yaml_or_json

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "randint")
MUTABLE = ("learning_rate", "head_lr", "petl_lr", "weight_decay")
NOT_SEARCHABLE = ("per_device_train_batch_size", "output_dir", "seed", "task_name", "method", "model_name_or_path")

DEFAULT_SPACES: dict[str, dict[str, dict]] = {
    "_common": {
        "head_lr": {"loguniform": [1e-4, 1e-2]},
        "weight_decay": {"uniform": [0.0, 0.1]},
        "warmup_steps": {"choice": [0.0, 0.06, 0.1]},
    },
    "full": {"learning_rate": {"loguniform": [1e-5, 2e-4]}},
    "head": {},
    "ffn": {"learning_rate": {"loguniform": [1e-5, 1e-3]}},
    "bitfit": {"learning_rate": {"loguniform": [1e-4, 3e-2]}},
    "lora": {"learning_rate": {"loguniform": [1e-4, 1e-2]}, "lora_rank": {"choice": [4, 8, 16]}},
    "adapter": {"learning_rate": {"loguniform": [1e-4, 1e-2]}, "adapter_dim": {"choice": [16, 32, 64]}},
    "houlsby": {"learning_rate": {"loguniform": [1e-4, 1e-2]}, "adapter_dim": {"choice": [16, 32, 64]}},
    "pfeiffer": {"learning_rate": {"loguniform": [1e-4, 1e-2]}, "adapter_dim": {"choice": [16, 32, 64]}},
    "parallel": {"learning_rate": {"loguniform": [1e-4, 1e-2]}, "adapter_dim": {"choice": [16, 32, 64]}},
    "prefix": {"learning_rate": {"loguniform": [1e-3, 1e-1]}, "prefix_length": {"choice": [5, 10, 20]}},
    "prompt": {"learning_rate": {"loguniform": [1e-3, 3e-1]}, "prompt_length": {"choice": [5, 10, 20]}},
}


def searchable_arguments() -> dict[str, type]:
    """Every run_glue.py argument a space may name, with its dataclass field type."""
    from argument_classes import ARGUMENT_CLASSES

    out = {}
    for cls in ARGUMENT_CLASSES:
        for f in fields(cls):
            if f.name not in NOT_SEARCHABLE:
                out[f.name] = f.type
    return out


def default_space(methods: list[str]) -> dict[str, dict]:
    space = dict(DEFAULT_SPACES["_common"])
    for m in methods:
        space.update(DEFAULT_SPACES.get(m, {}))
    if "learning_rate" not in space and methods != ["head"]:
        space["learning_rate"] = {"loguniform": [1e-4, 1e-2]}
    return space


def load_space(path: str | None, methods: list[str]) -> dict[str, dict]:
    if path is None:
        space = default_space(methods)
    else:
        space = read_yaml_or_json(path, "--search_space")
    validate_space(space, str(path or "default space"))
    return space


def validate_space(space: Any, where: str) -> None:
    if not isinstance(space, dict) or not space:
        raise PetlError(f"{where}: a search space is a non-empty mapping of argument name to distribution")
    allowed = searchable_arguments()
    for name, dist in space.items():
        if name not in allowed:
            near = ", ".join(sorted(a for a in allowed if a.split("_")[0] == str(name).split("_")[0])[:6])
            hint = f" (similar: {near})" if near else ""
            raise PetlError(f"{where}: {name!r} is not a run_glue.py argument that can be searched{hint}")
        if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
            raise PetlError(f"{where}: {name}: give exactly one of {', '.join(DISTRIBUTIONS)}, e.g. {{loguniform: [1e-5, 1e-3]}}")
        kind, values = next(iter(dist.items()))
        if not isinstance(values, list) or not values:
            raise PetlError(f"{where}: {name}: {kind} needs a list of values")
        if kind == "choice":
            continue
        if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values) or not values[0] < values[1]:
            raise PetlError(f"{where}: {name}: {kind} needs [low, high] with low < high, got {values}")
        if kind == "loguniform" and values[0] <= 0:
            raise PetlError(f"{where}: {name}: loguniform needs low > 0, got {values[0]}")


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

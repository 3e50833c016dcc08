"""The Python API the CLI itself uses: apply_petl, trainable_summary, save_petl, load_petl."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

import petl.methods  # noqa: F401 - registers every method
from petl.arch import arch_for, check_method_supported, layers_prefix
from petl.errors import PetlError
from petl.models import head_module_names
from petl.registry import METHODS, MethodConfig, MethodEntry, config_from_dict, get_method, make_config
from petl.results import write_atomic
from petl.state import attach_state, get_state

PETL_CONFIG_FILE = "petl_config.json"
PETL_WEIGHTS_FILE = "petl_weights.safetensors"
FORMAT_VERSION = 1


def parse_methods(spec: str | list[str] | list[MethodConfig]) -> list[str]:
    names = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    if not names:
        raise PetlError(f"--method is empty; allowed: {', '.join(METHODS)}")
    return names


def validate_combination(names: list[str]) -> None:
    seen = set()
    for name in names:
        entry = get_method(name)
        if name in seen:
            raise PetlError(f"--method lists {name!r} twice")
        seen.add(name)
        if entry.exclusive and len(names) > 1:
            raise PetlError(f"--method {name!r} cannot be combined with other methods (got {','.join(names)})")
    groups: dict[str, list[str]] = {}
    for name in names:
        if get_method(name).group:
            groups.setdefault(get_method(name).group, []).append(name)
    for group, members in groups.items():
        if len(members) > 1:
            raise PetlError(f"--method combines {','.join(members)}, which are all {group} methods; choose one")


def apply_petl(model: nn.Module, methods: list[MethodConfig] | list[dict] | str) -> nn.Module:
    """Freeze the backbone, attach the methods, make the head trainable; records what owns what.

    `methods` may be configs, their dicts, or a comma-separated name list (default options)."""
    if get_state(model).methods:
        raise PetlError("PETL methods are already applied to this model")
    if isinstance(methods, str):
        methods = [make_config(n) for n in parse_methods(methods)]
    configs = [config_from_dict(m) if isinstance(m, dict) else m for m in methods]
    validate_combination([c.method for c in configs])
    for cfg in configs:
        check_method_supported(model, cfg.method)  # refusals in the architecture map (petl/arch.py), before anything attaches
    # scalings (IA3) attach first: their output hooks then run before those that rewrite rows (MPNet's
    # prefix), so a combination means one model whatever the --method order (petl/registry.py: hook order)
    configs.sort(key=lambda c: not get_method(c.method).multiplicative)
    # the head's modules, named before methods attach modules of their own (IDPG's sentence encoder is one)
    head_prefixes = tuple(name + "." for name in head_module_names(model))
    model.requires_grad_(False)
    owner: dict[str, tuple[str, int | None]] = OrderedDict()
    parts: dict[str, str] = {}
    for cfg in configs:
        for name, layer in get_method(cfg.method).apply(model, cfg).items():
            if isinstance(layer, tuple):
                layer, parts[name] = layer
            owner[name] = (cfg.method, layer)
    params = dict(model.named_parameters())
    # a method may replace what sits in the head's modules (linear-probe: one linear map): the head is what stands there now
    head = [n for n in params if n.startswith(head_prefixes)]
    head_names = [n for n in head if n not in owner]
    for name in head_names:
        params[name].requires_grad_(True)
        owner[name] = ("head", None)
    for name, (method, _) in owner.items():
        if not params[name].requires_grad:
            raise PetlError(f"internal: {method} claimed frozen parameter {name}")
    stray = [n for n, p in params.items() if p.requires_grad and n not in owner]
    if stray:
        raise PetlError(f"internal: trainable parameters owned by no method: {stray[:3]}")
    state = attach_state(model)
    state.methods, state.owner, state.parts, state.head = configs, owner, parts, head
    return model


def _owner(model: nn.Module) -> dict[str, tuple[str, int | None]]:
    state = get_state(model)
    if not state.applied:
        raise PetlError("no PETL methods applied to this model; call apply_petl first")
    return state.owner


def is_new_parameter(model: nn.Module, name: str) -> bool:
    """True for parameters a method added (not part of the pretrained backbone or the head)."""
    method, _ = _owner(model).get(name, (None, None))
    if method in (None, "head"):
        return False
    entry = get_method(method)
    return entry.new_parameters and get_state(model).parts.get(name) not in entry.pretrained_parts


def trainable_summary(model: nn.Module) -> dict[str, Any]:
    """Parameter report: one row per (method[/part], layer), the head separately, and totals.

    `backbone` is the pretrained model without the head and without anything a method added;
    `auxiliary_frozen_parameters` counts frozen modules a method brought (IDPG's encoder)."""
    owner = _owner(model)
    parts = get_state(model).parts
    params = dict(model.named_parameters())
    # the head: what trains as the head, and the head's modules when a method owns them (full fine-tuning)
    head = {n for n, (m, _) in owner.items() if m == "head"} | set(get_state(model).head)
    new = {n for n in owner if is_new_parameter(model, n)}
    backbone_prefix = layers_prefix(model).removesuffix(arch_for(model).layers + ".")
    in_backbone = lambda n: n.startswith(backbone_prefix) and n not in new and n not in head  # noqa: E731
    backbone_total = sum(p.numel() for n, p in params.items() if in_backbone(n))
    auxiliary = sum(p.numel() for n, p in params.items() if not in_backbone(n) and n not in owner)
    rows: dict[tuple[str, Any], int] = OrderedDict()
    for name, (method, layer) in owner.items():
        if name in head:
            method, layer = "head", None
        key = (f"{method}/{parts[name]}" if name in parts else method, layer)
        rows[key] = rows.get(key, 0) + params[name].numel()
    table = []
    for (method, layer), count in sorted(rows.items(), key=lambda kv: (kv[0][0] == "head", kv[0][0], -1 if kv[0][1] is None else kv[0][1])):
        table.append(
            {
                "method": method,
                "layer": layer,
                "parameters": count,
                "share_of_backbone": count / backbone_total,
            }
        )
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    head_count = sum(params[n].numel() for n in head)
    return {
        "methods": [c.to_dict() for c in get_state(model).methods],
        "rows": table,
        "trainable_parameters": trainable,
        "trainable_parameters_without_head": trainable - head_count,
        "head_parameters": head_count,
        "backbone_parameters": backbone_total,
        "auxiliary_frozen_parameters": auxiliary,
        "total_parameters": sum(p.numel() for p in params.values()),
        "trainable_share_of_backbone": (trainable - head_count) / backbone_total,
    }


def format_summary(summary: dict[str, Any]) -> str:
    width = max([10, *(len(r["method"]) for r in summary["rows"])])
    lines = [f"{'method':<{width}} {'layer':>5} {'parameters':>12} {'% backbone':>10}"]
    for row in summary["rows"]:
        layer = "-" if row["layer"] is None else str(row["layer"])
        lines.append(f"{row['method']:<{width}} {layer:>5} {row['parameters']:>12,} {100 * row['share_of_backbone']:>9.4f}%")
    lines.append(
        f"trainable {summary['trainable_parameters']:,} (without head {summary['trainable_parameters_without_head']:,}, "
        f"{100 * summary['trainable_share_of_backbone']:.4f}% of the {summary['backbone_parameters']:,}-parameter backbone); "
        f"total {summary['total_parameters']:,}"
        + (
            f" (incl. {summary['auxiliary_frozen_parameters']:,} frozen in method modules)"
            if summary.get("auxiliary_frozen_parameters")
            else ""
        )
    )
    return "\n".join(lines)


@contextmanager
def gathered(params: list[nn.Parameter], modify: bool = False):
    """Whole tensors inside the block, also under DeepSpeed ZeRO-3, where each rank holds only a
    slice of every parameter (`ds_id` set). Gathering is collective: every rank must enter. With
    `modify`, rank 0's writes are scattered back to all ranks on exit. A no-op otherwise."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0 if modify else None):
        yield


def petl_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Exactly the trained tensors (method parameters and head), detached copies. Under ZeRO-3
    this gathers, so every rank must call it (only one needs to write the result)."""
    params = dict(model.named_parameters())
    names = list(_owner(model))
    with gathered([params[n] for n in names]):
        return {n: params[n].detach().to("cpu").clone().contiguous() for n in names}


def save_petl(
    model: nn.Module, directory: str | os.PathLike, extra: dict[str, Any] | None = None, state: dict[str, torch.Tensor] | None = None
) -> Path:
    """Write the trained tensors (safetensors) and a JSON config that rebuilds the methods.
    `state`: the tensors, if already collected (petl_state_dict on every rank under ZeRO-3)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "format_version": FORMAT_VERSION,
        "methods": [c.to_dict() for c in get_state(model).methods],
        "num_labels": int(getattr(model.config, "num_labels", 0)),
        "num_hidden_layers": int(model.config.num_hidden_layers),
        "model_type": model.config.model_type,
        **(extra or {}),
    }
    # each file through a temporary name renamed into place: a crash never leaves a half-written delta,
    # a failed write (full disk, Ctrl-C) leaves no temporary file, and one left by a killed run is removed
    tensors = state if state is not None else petl_state_dict(model)
    write_atomic(directory / PETL_WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp)))
    write_atomic(directory / PETL_CONFIG_FILE, lambda tmp: tmp.write_text(json.dumps(config, indent=2)))
    return directory


# the keys of petl_config.json besides "methods", and their types (all optional: older deltas lack some)
PETL_CONFIG_KEYS: dict[str, Any] = {
    "format_version": int,
    "num_labels": int | None,
    "num_hidden_layers": int | None,
    "model_type": str | None,
    "model_name_or_path": str | None,
    "pooler_type": str | None,
    "pair_template": str | None,
}


def read_petl_config(directory: str | os.PathLike) -> dict[str, Any]:
    """A saved delta's config, checked before any model is loaded: valid JSON, known keys of the
    right types, methods that build; and its weights file present with a complete header (a
    truncated file is refused here, not halfway through loading)."""
    from petl.typecheck import conforms, shown, type_name

    path = Path(directory) / PETL_CONFIG_FILE
    if not path.is_file():
        raise PetlError(f"--load_petl {str(directory)!r} has no {PETL_CONFIG_FILE}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PetlError(f"{str(path)!r} is not valid JSON: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PetlError(f"{str(path)!r} cannot be read: {err}") from None
    where = repr(str(path))
    if not isinstance(config, dict):
        raise PetlError(f"{where}: expected a JSON object, got {shown(config)}")
    methods = config.get("methods")
    if not isinstance(methods, list) or not methods:
        raise PetlError(f'{where}: "methods" is {shown(methods)}; expected a non-empty list of method configs')
    for key, tp in PETL_CONFIG_KEYS.items():
        if key in config and not conforms(config[key], tp):
            raise PetlError(f"{where}: {key!r} is {shown(config[key])}; expected {type_name(tp)}")
    if config.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise PetlError(f"{where}: format_version {config['format_version']} is newer than this code reads ({FORMAT_VERSION})")
    for i, method in enumerate(methods):
        config_from_dict(method, where=f"{where}, methods[{i}]")
    weights_path = Path(directory) / PETL_WEIGHTS_FILE
    if not weights_path.is_file():
        raise PetlError(f"--load_petl {str(directory)!r} has no {PETL_WEIGHTS_FILE}")
    check_safetensors_readable(weights_path)
    return config


def check_safetensors_readable(path: Path) -> None:
    """A safetensors file whose header reads (a truncated copy does not), else one line naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt"):
            pass
    except (SafetensorError, OSError) as err:
        raise PetlError(f"{str(path)!r} is damaged or incomplete (a truncated copy?): {err}") from None


def load_petl(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Apply the saved methods (if not applied yet) and load the saved tensors; every saved tensor
    must land on a parameter of the same shape, and every trainable parameter must be covered."""
    config = read_petl_config(directory)
    if config.get("num_labels") not in (None, 0, model.config.num_labels):
        raise PetlError(f"saved delta has {config['num_labels']} labels; the model has {model.config.num_labels}")
    if config.get("model_type") not in (None, model.config.model_type):
        raise PetlError(f"saved delta is for model_type {config['model_type']!r}; the model is {model.config.model_type!r}")
    if not get_state(model).applied:
        apply_petl(model, config["methods"])
    elif [c.to_dict() for c in get_state(model).methods] != [config_from_dict(m).to_dict() for m in config["methods"]]:
        raise PetlError("the model carries other PETL methods than the saved delta")
    weights_path = Path(directory) / PETL_WEIGHTS_FILE
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise PetlError(f"{str(weights_path)!r} is damaged or incomplete (a truncated copy?): {err}") from None
    params = dict(model.named_parameters())
    missing = [n for n in _owner(model) if n not in tensors]
    if missing:
        raise PetlError(f"saved delta lacks {len(missing)} trained tensors, e.g. {missing[0]!r}")
    with torch.no_grad(), gathered([params[n] for n in tensors if n in params], modify=True):
        for name, tensor in tensors.items():
            if name not in params:
                raise PetlError(f"saved tensor {name!r} has no parameter in the model")
            if params[name].shape != tensor.shape:
                raise PetlError(f"saved tensor {name!r} has shape {tuple(tensor.shape)}, model has {tuple(params[name].shape)}")
            params[name].copy_(tensor)
    return model


def _merge_order(model: nn.Module) -> list[MethodEntry]:
    """The applied methods in the order they fold into the weights: additive ones (LoRA, BitFit) before
    multiplicative ones (IA3), as their hooks run (the hook-order rule, petl.registry). Every method
    must have a merge hook; one without is refused by name before anything changes."""
    if not get_state(model).applied:
        raise PetlError("no PETL methods applied to this model; call apply_petl first")
    entries = [get_method(c.method) for c in get_state(model).methods]
    refused = [e.name for e in entries if e.merge is None or e.unmerge is None]
    if refused:
        mergeable = ", ".join(n for n, e in METHODS.items() if e.merge is not None)
        raise PetlError(f"merge: {', '.join(refused)} cannot be folded into the base weights; methods that can: {mergeable}")
    return sorted(entries, key=lambda e: e.multiplicative)


def merge_petl(model: nn.Module) -> int:
    """Fold every applied method into the base weights (logits unchanged); returns modules merged."""
    return sum(entry.merge(model) for entry in _merge_order(model))


def unmerge_petl(model: nn.Module) -> int:
    """Undo `merge_petl` (in reverse order); returns modules unmerged."""
    return sum(entry.unmerge(model) for entry in reversed(_merge_order(model)))

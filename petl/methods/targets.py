"""Where a method attaches: parse a target list, choose layers, resolve an architecture-map path to its
module, and name the parameters a method owns (the `{param_name: layer}` its `apply` returns)."""

from __future__ import annotations

from torch import nn

from petl.arch import layer_indices, layer_module, split_slot
from petl.errors import PetlError


def parse_targets(spec: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise PetlError(f"--{flag} {spec!r} selects nothing; allowed: one or more of {', '.join(allowed)}")
    for item in items:
        if item not in allowed:
            raise PetlError(f"--{flag}: unknown target {item!r}; allowed: {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def chosen_layers(model: nn.Module, spec: str, flag: str) -> list[int]:
    return layer_indices(model, spec, flag)


def target_module(model: nn.Module, layer: int, path: str) -> tuple[nn.Module, str | None]:
    """The module behind an architecture-map path and its fused slot (`attn.c_attn@q` -> c_attn, "q")."""
    module_path, slot = split_slot(path)
    return layer_module(model, layer, module_path), slot


def full_name(model: nn.Module, module: nn.Module) -> str:
    for name, mod in model.named_modules():
        if mod is module:
            return name
    raise PetlError("internal: module not found in model")


def owned_parameters(model: nn.Module, module: nn.Module, layer: int | None, attrs: tuple[str, ...]) -> dict[str, int | None]:
    """Full names of the parameters under `module.<attr>` (child modules or direct parameters)."""
    name = full_name(model, module)
    prefix = f"{name}." if name else ""
    out = {}
    for attr in attrs:
        obj = getattr(module, attr)
        if isinstance(obj, nn.Parameter):
            out[f"{prefix}{attr}"] = layer
        else:
            for n, _ in obj.named_parameters():
                out[f"{prefix}{attr}.{n}"] = layer
    return out

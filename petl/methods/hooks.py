"""Shared helpers: resolve targets through the architecture map, attach hooks, bind arguments."""

from __future__ import annotations

import inspect

from torch import nn

from petl.arch import arch_for, layer_module, num_layers, split_slot
from petl.errors import PetlError
from petl.layers import parse_layers


def parse_targets(spec: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise PetlError(f"--{flag} {spec!r} selects nothing; allowed: one or more of {', '.join(allowed)}")
    for item in items:
        if item not in allowed:
            raise PetlError(f"--{flag}: unknown target {item!r}; allowed: {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def chosen_layers(model: nn.Module, spec: str, flag: str) -> list[int]:
    return parse_layers(spec, num_layers(model), flag)


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


def bind_arguments(module: nn.Module, args: tuple, kwargs: dict) -> inspect.BoundArguments:
    """Bind a forward call's arguments by name, whether they came positionally or as keywords."""
    sig = getattr(module, "_petl_signature", None)
    if sig is None:
        sig = inspect.signature(module.forward)
        module._petl_signature = sig
    return sig.bind_partial(*args, **kwargs)


def unbind(bound: inspect.BoundArguments) -> tuple[tuple, dict]:
    """A pre-hook's (args, kwargs) from bound arguments: every argument that can go by name goes
    by name. (Passing them positionally breaks forwards wrapped by transformers' output-capturing
    decorator, which adds keyword defaults such as `use_cache` of its own.)"""
    args, kwargs = [], {}
    for name, value in bound.arguments.items():
        kind = bound.signature.parameters[name].kind
        if kind == inspect.Parameter.POSITIONAL_ONLY:
            args.append(value)
        elif kind == inspect.Parameter.VAR_POSITIONAL:
            args.extend(value)
        elif kind == inspect.Parameter.VAR_KEYWORD:
            kwargs.update(value)
        else:
            kwargs[name] = value
    return tuple(args), kwargs


__all__ = ["arch_for", "layer_module", "target_module", "parse_targets", "chosen_layers", "owned_parameters", "bind_arguments", "unbind"]

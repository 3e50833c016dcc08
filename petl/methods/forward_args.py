"""Bind and unbind a forward call's arguments, for the pre-hooks that rewrite them (prefix, prompt)."""

from __future__ import annotations

import inspect

from torch import nn


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

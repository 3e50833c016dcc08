"""Values read from JSON/YAML (an args file, a sweep cell, a saved delta's petl_config.json) checked
against the types of the dataclass fields they fill, so a hand-edited `"lora_rank": "eight"` is one
clear error up front instead of a traceback deep in training."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import types
import typing
from typing import Any

_JSON_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "an object", list: "a list"}


def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of each init field of a dataclass (string annotations included)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _arms(tp: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return None


def conforms(value: Any, tp: Any) -> bool:
    """Whether a JSON value fits the type: bool is no int, an int is a float, unknown types pass."""
    arms = _arms(tp)
    if arms is not None:
        return any(conforms(value, arm) for arm in arms)
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return any(value is arg or (type(value) is type(arg) and value == arg) for arg in typing.get_args(tp))
    if origin in (list, tuple) or tp in (list, tuple):
        args = typing.get_args(tp)
        return isinstance(value, list) and (not args or all(conforms(v, args[0]) for v in value))
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return isinstance(value, tp) or value in {m.value for m in tp}
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def type_name(tp: Any) -> str:
    """A type in JSON words: `int | None` -> 'an integer or null'."""
    arms = _arms(tp)
    if arms is not None:
        names = [type_name(a) for a in arms if a is not type(None)]
        if len(arms) > len(names):
            names.append("null")
        return " or ".join(dict.fromkeys(names))
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is typing.Literal:
        return " or ".join(json.dumps(a) for a in typing.get_args(tp))
    if origin in (list, tuple) or tp in (list, tuple):
        args = typing.get_args(tp)
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin is dict:
        return "an object"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in tp)
    return _JSON_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _plural(tp: Any) -> str:
    return {str: "strings", int: "integers", float: "numbers", bool: "booleans"}.get(tp, type_name(tp))


def shown(value: Any, limit: int = 60) -> str:
    """A value as JSON, cut short."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def checked_value(value: Any, tp: Any) -> Any:
    """The value if it fits the type (a number where a string belongs becomes that string: JSON
    users write `"lora_layers": 5`); else a TypeError whose message is the expected type."""
    if isinstance(value, float) and not math.isfinite(value) and conforms(value, tp):
        raise TypeError("a finite number")  # JSON's NaN/Infinity extension: never a hyperparameter
    if conforms(value, tp):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and conforms(str(value), tp):
        return str(value)
    hint = ""
    if isinstance(value, str) and (conforms(1, tp) or conforms(1.5, tp)):
        try:
            float(value)
            hint = " (write the number without quotes; in YAML 1e-3 is a string, 1.0e-3 a number)"
        except ValueError:
            pass
    raise TypeError(f"{type_name(tp)}{hint}")

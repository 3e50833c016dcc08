"""The one registry of PETL methods.

A method is a config dataclass (its fields are the CLI flags `--<flag_prefix>_<field>`) plus an
`apply(model, config) -> {param_name: layer}` function that attaches or unfreezes parameters and
returns the trainable parameters it owns, keyed by full name, with their layer (None if not
layer-specific), or `(layer, part)` to report parts of a method separately (IDPG: generator,
encoder). `new_parameters` says whether those are new (they get `--petl_lr`) or existing backbone
weights (they get `--learning_rate`); parts listed in `pretrained_parts` count as existing weights.
Methods of one `group` (e.g. "input prompt") exclude each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from torch import nn

from petl.errors import PetlError


@dataclass
class MethodConfig:
    """Base of every method config. `method` is the registry name."""

    method: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class MethodEntry:
    name: str
    config_cls: type[MethodConfig]
    apply: Callable[[nn.Module, Any], dict[str, int | None]]
    flag_prefix: str  # CLI flags are --<flag_prefix>_<field>
    new_parameters: bool = True
    exclusive: bool = False  # may not be combined with any other method
    preset: dict[str, Any] = field(default_factory=dict)  # fixed field values (presets such as houlsby)
    description: str = ""
    group: str | None = None  # at most one method of a group per run
    pretrained_parts: tuple[str, ...] = ()  # parts holding pretrained weights (trained at --learning_rate)


METHODS: dict[str, MethodEntry] = {}


def register(entry: MethodEntry) -> MethodEntry:
    METHODS[entry.name] = entry
    return entry


def get_method(name: str) -> MethodEntry:
    if name not in METHODS:
        raise PetlError(f"--method {name!r} is unknown; allowed: {', '.join(METHODS)}")
    return METHODS[name]


def make_config(name: str, **values: Any) -> MethodConfig:
    """Build a method's config from field values; preset fields cannot be overridden."""
    entry = get_method(name)
    for key, fixed in entry.preset.items():
        if key in values and values[key] != fixed:
            raise PetlError(f"--method {name} fixes {entry.flag_prefix}_{key}={fixed!r}; got {values[key]!r}")
    allowed = {f.name for f in fields(entry.config_cls)} - {"method"}
    unknown = set(values) - allowed
    if unknown:
        raise PetlError(f"method {name!r} has no option {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(allowed))}")
    cfg = entry.config_cls(method=name, **{**values, **entry.preset})
    validate = getattr(cfg, "validate", None)
    if validate:
        validate()
    return cfg


def config_from_dict(data: dict[str, Any], where: str | None = None) -> MethodConfig:
    """A method config from its dict (a saved delta's petl_config.json, the Python API): the method
    name and each option's type are checked; `where` (e.g. the file) prefixes any error."""
    from petl.typecheck import checked_value, field_types, shown

    prefix = f"{where}: " if where else ""
    if not isinstance(data, dict) or not isinstance(data.get("method"), str):
        raise PetlError(f'{prefix}expected a method config (an object with a "method" name), got {shown(data)}')
    data = dict(data)
    name = data.pop("method")
    try:
        entry = get_method(name)
        for key in entry.preset:
            data.pop(key, None)
        types = field_types(entry.config_cls)
        for key, value in data.items():
            if key in types:
                try:
                    data[key] = checked_value(value, types[key])
                except TypeError as err:
                    raise PetlError(f"{name} option {key!r} is {shown(value)}; expected {err}") from None
        return make_config(name, **data)
    except PetlError as err:
        raise PetlError(f"{prefix}{err}") from None

"""Layer lists: `5`, `0,3,7`, `8-11`, `all`, or mixes such as `0,4-5`."""

from __future__ import annotations

from petl.errors import PetlError

ALLOWED = "indices (negative count from the top), ranges like 2-4, or 'all'"


def _allowed(num_layers: int | None) -> str:
    return ALLOWED if num_layers is None else f"indices 0..{num_layers - 1} (or negative from the top), ranges like 2-4, or 'all'"


def _layer_values(spec: str | int | list[int], num_layers: int | None, flag: str) -> list[int]:
    """The indices a spec names, as written (negative ones not yet counted from the top). A spec
    that names none (`""`, `","`) is an error: it must never silently mean 'no layer' or 'all'."""
    if isinstance(spec, bool):
        raise PetlError(f"--{flag} {spec!r} is not a layer spec; allowed: {_allowed(num_layers)}")
    if isinstance(spec, int):
        items: list[str] = [str(spec)]
    elif isinstance(spec, (list, tuple)):
        items = [str(s).strip() for s in spec]
    else:
        items = [s.strip() for s in str(spec).split(",")]
    items = [item for item in items if item]
    if not items:
        raise PetlError(f"--{flag} {str(spec)!r} selects no layer; allowed: {_allowed(num_layers)}")
    values: list[int] = []
    for item in items:
        try:
            if "-" in item[1:]:
                lo_s, hi_s = item[0] + item[1:].split("-", 1)[0], item[1:].split("-", 1)[1]
                lo, hi = int(lo_s), int(hi_s)
                if lo > hi:
                    raise PetlError(f"--{flag}: range {item!r} is empty; allowed: {_allowed(num_layers)}")
                values += range(lo, hi + 1)
            else:
                values.append(int(item))
        except ValueError as err:
            if isinstance(err, PetlError):
                raise
            raise PetlError(f"--{flag}: cannot parse {item!r}; allowed: {_allowed(num_layers)}") from None
    return values


def check_layer_spec(spec: str | int | list[int] | None, flag: str = "layers") -> None:
    """Check a spec's form before the model (and so its depth) is known."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return
    _layer_values(spec, None, flag)


def parse_layers(spec: str | int | list[int] | None, num_layers: int, flag: str = "layers") -> list[int]:
    """Parse a layer spec into a sorted list of unique indices; out-of-range indices are an error.

    `None` (the Python API's default) and "all" mean every layer; an empty spec is an error.
    Negative indices count from the top (-1 is the last layer).
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return list(range(num_layers))
    out: set[int] = set()
    for v in _layer_values(spec, num_layers, flag):
        idx = v + num_layers if v < 0 else v
        if not 0 <= idx < num_layers:
            raise PetlError(f"--{flag}: layer {v} is out of range for a {num_layers}-layer model; allowed: {_allowed(num_layers)}")
        out.add(idx)
    return sorted(out)

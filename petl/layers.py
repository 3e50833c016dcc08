"""Layer lists: `5`, `0,3,7`, `8-11`, `all`, or mixes such as `0,4-5`."""

from __future__ import annotations

from petl.errors import PetlError


def parse_layers(spec: str | int | list[int] | None, num_layers: int, flag: str = "layers") -> list[int]:
    """Parse a layer spec into a sorted list of unique indices; out-of-range indices are an error.

    `None`, "" and "all" mean every layer. Negative indices count from the top (-1 is the last layer).
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return list(range(num_layers))
    if isinstance(spec, int):
        items: list[str] = [str(spec)]
    elif isinstance(spec, (list, tuple)):
        items = [str(s) for s in spec]
    else:
        items = [s.strip() for s in str(spec).split(",") if s.strip()]
    allowed = f"indices 0..{num_layers - 1} (or negative from the top), ranges like 2-4, or 'all'"
    out: set[int] = set()
    for item in items:
        try:
            if "-" in item[1:]:
                lo_s, hi_s = item[0] + item[1:].split("-", 1)[0], item[1:].split("-", 1)[1]
                lo, hi = int(lo_s), int(hi_s)
                if lo > hi:
                    raise PetlError(f"--{flag}: range {item!r} is empty; allowed: {allowed}")
                values = list(range(lo, hi + 1))
            else:
                values = [int(item)]
        except ValueError as err:
            if isinstance(err, PetlError):
                raise
            raise PetlError(f"--{flag}: cannot parse {item!r}; allowed: {allowed}") from None
        for v in values:
            idx = v + num_layers if v < 0 else v
            if not 0 <= idx < num_layers:
                raise PetlError(f"--{flag}: layer {v} is out of range for a {num_layers}-layer model; allowed: {allowed}")
            out.add(idx)
    return sorted(out)

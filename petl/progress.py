"""Progress bars for the long steps outside the Trainer: the frozen-layer cache pass (petl/cache.py),
the packaged-model unpack and the GGUF conversion (petl/models.py).

They are tqdm bars on stderr, like the Trainer's own. `--disable_tqdm true` switches them off together
with the Trainer's (`petl.experiment.run` calls `enable_progress_bars`); replica processes of a
distributed run (LOCAL_RANK > 0) never show them, as the Trainer shows its bar on the main process only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from tqdm.auto import tqdm

_enabled = True


def enable_progress_bars(flag: bool) -> None:
    """Show (True) or hide (False) the bars of the steps that follow, in this process."""
    global _enabled
    _enabled = bool(flag)


def progress_enabled() -> bool:
    return _enabled and int(os.environ.get("LOCAL_RANK", "0") or 0) <= 0


def progress_bar(iterable: Iterable | None = None, *, desc: str, total: float | None = None, unit: str = "it", **kwargs) -> tqdm:
    """A tqdm bar on stderr, hidden when progress bars are switched off."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr, disable=not progress_enabled(), dynamic_ncols=True, **kwargs)

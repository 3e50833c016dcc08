"""Checks of run_glue.py's arguments that no single method or library makes: every number finite,
learning rates and weight decay not negative, dropout probabilities in [0, 1)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from petl.errors import PetlError

NON_NEGATIVE = ("learning_rate", "head_lr", "petl_lr", "weight_decay")
PROBABILITIES = ("lora_dropout", "classifier_dropout")


def check_numbers(*argument_objects: Any) -> None:
    """Refuse NaN and infinity in any float argument (`--lora_alpha nan` would train to NaN and be
    recorded as a 'result'), and the obviously out-of-range values above, naming the flag."""
    for obj in argument_objects:
        for f in dataclasses.fields(obj):
            if not f.init:
                continue
            value = vars(obj).get(f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                raise PetlError(f"--{f.name} {value} is not a finite number; allowed: a finite number")
            if f.name in NON_NEGATIVE and value < 0:
                raise PetlError(f"--{f.name} {value} is negative; allowed: 0 or more")
            if f.name in PROBABILITIES and not 0 <= value < 1:
                raise PetlError(f"--{f.name} {value} is out of range; allowed: [0, 1)")

"""Checks of run_glue.py's arguments that no single method or library makes: every number finite,
learning rates and weight decay not negative, dropout probabilities in [0, 1)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from petl.errors import PetlError

NON_NEGATIVE = ("learning_rate", "head_lr", "petl_lr", "weight_decay")
PROBABILITIES = ("lora_dropout", "classifier_dropout")
AT_LEAST_ONE = (  # counts and sizes that select nothing at 0 (None, where allowed, means "not set")
    "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "max_seq_length",
    "max_train_samples", "max_eval_samples", "heldout_validation_size", "early_stopping_patience",
)  # fmt: skip
SEEDS = ("seed", "split_seed", "data_seed")


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
            if f.name in AT_LEAST_ONE and value < 1:
                raise PetlError(f"--{f.name} {value} is invalid; allowed: an integer >= 1")
            if f.name in SEEDS and not 0 <= value < 2**32:
                raise PetlError(f"--{f.name} {value} is out of range; allowed: 0 .. 2**32 - 1")
            if f.name == "train_fraction" and not 0 < value <= 1:
                raise PetlError(f"--train_fraction {value} is out of range; allowed: (0, 1]")
    _check_training_length(argument_objects)


def _check_training_length(argument_objects: tuple) -> None:
    """--num_train_epochs must train something unless --max_steps (> 0) sets the length instead."""
    for obj in argument_objects:
        epochs, max_steps = getattr(obj, "num_train_epochs", None), getattr(obj, "max_steps", None)
        if epochs is not None and epochs <= 0 and not (max_steps and max_steps > 0):
            raise PetlError(f"--num_train_epochs {epochs} trains nothing; allowed: a number > 0 (or --max_steps N > 0)")

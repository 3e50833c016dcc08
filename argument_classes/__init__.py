"""Argument dataclasses for `run_glue.py`, parsed by `HfArgumentParser` (CLI or a JSON file)."""

from __future__ import annotations

import difflib
import re
from typing import Any

from transformers import HfArgumentParser

from argument_classes.data_args import DataArguments
from argument_classes.model_args import ModelArguments
from argument_classes.petl_args import PetlArguments
from argument_classes.training_args import PetlTrainingArguments
from petl.errors import PetlError

ARGUMENT_CLASSES = (ModelArguments, DataArguments, PetlArguments, PetlTrainingArguments)
__all__ = [
    "ARGUMENT_CLASSES",
    "ArgumentParser",
    "DataArguments",
    "ModelArguments",
    "PetlArguments",
    "PetlTrainingArguments",
    "arguments_from_dict",
]


class ArgumentParser(HfArgumentParser):
    """HfArgumentParser whose errors are one PetlError line: argparse would print the whole usage
    (some 160 lines) before the line that matters, and exit by itself."""

    def error(self, message: str):
        # `argument --lora_rank/--lora-rank: ...` -> `argument --lora_rank: ...` (the dashed alias is noise)
        raise PetlError(re.sub(r"argument (--\w+)/--[\w-]+:", r"argument \1:", message))


def _located(where: str, source_text: str | None, key: str) -> str:
    """`where`, with the line of `"key":` when the source text is known."""
    if source_text is not None:
        match = re.search(rf'"{re.escape(key)}"\s*:', source_text)
        if match:
            return f"{where}, line {source_text.count(chr(10), 0, match.start()) + 1}"
    return where


def arguments_from_dict(values: dict, where: str = "arguments", source_text: str | None = None) -> tuple:
    """The four run_glue.py argument objects from one flat mapping of argument names (as a JSON
    file or a sweep cell gives them). An unknown name or a value of the wrong type (`"lora_rank":
    "eight"`, a list where a string belongs) is one clear error naming the key, `where` (with its
    line when `source_text`, the file's text, is given), the value and the expected type."""
    from petl.typecheck import checked_value, field_types, shown

    if not isinstance(values, dict):
        raise PetlError(f"{where}: expected an object of argument names and values, got {shown(values)}")
    types_by_class = [field_types(cls) for cls in ARGUMENT_CLASSES]
    known = set().union(*types_by_class)
    for key, value in values.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            at = _located(where, source_text, str(key))
            raise PetlError(f"{at}: {str(key)!r} (= {shown(value)}) is not a run_glue.py argument{hint}")
    objs: list[Any] = []
    for cls, types in zip(ARGUMENT_CLASSES, types_by_class, strict=True):
        kwargs = {}
        for key, tp in types.items():
            if key not in values:
                continue
            try:
                kwargs[key] = checked_value(values[key], tp)
            except TypeError as err:
                raise PetlError(f"{_located(where, source_text, key)}: {key!r} is {shown(values[key])}; expected {err}") from None
        try:
            objs.append(cls(**kwargs))
        except ValueError as err:  # TrainingArguments' own checks
            raise PetlError(f"{where}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    return tuple(objs)

"""Argument dataclasses for `run_glue.py`, parsed by `HfArgumentParser` (CLI or a JSON file)."""

from __future__ import annotations

import argparse
import difflib
import json
import re
from collections.abc import Sequence
from pathlib import Path
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
    "given_argument_names",
    "read_args_file",
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


def is_args_file(argv: Sequence[str]) -> bool:
    """`script.py args.json`: every argument from one JSON file."""
    return len(argv) == 1 and argv[0].endswith(".json")


def read_args_file(file: str) -> tuple[Any, str]:
    """An args file's values and text; a missing or unparsable file is one line naming it (and the line)."""
    path = Path(file)
    if not path.is_file():
        raise PetlError(f"argument file {file!r} does not exist")
    try:
        text = path.read_text()
        return json.loads(text), text
    except json.JSONDecodeError as err:
        raise PetlError(f"argument file {file!r}, line {err.lineno}: not valid JSON ({err.msg})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PetlError(f"argument file {file!r} cannot be read: {err}") from None


def given_argument_names(argv: Sequence[str], classes: Sequence[type] = ARGUMENT_CLASSES) -> set[str]:
    """The argument names set explicitly: the flags on the command line (however spelt: `--lora-rank`,
    `--lora_rank=8`, `--no_x`), or the keys of the args file. A method's flag given explicitly is
    refused when the method is not selected, even at its default value."""
    if is_args_file(argv):
        values, _ = read_args_file(argv[0])
        return set(values) if isinstance(values, dict) else set()
    parser = ArgumentParser(classes)
    for action in parser._actions:  # no defaults: the namespace then holds exactly the flags given
        action.default = argparse.SUPPRESS
    given, _ = parser.parse_known_args(args=list(argv))
    return set(vars(given))


def arguments_from_dict(
    values: dict,
    where: str = "arguments",
    source_text: str | None = None,
    classes: Sequence[type] = ARGUMENT_CLASSES,
    program: str = "run_glue.py",
) -> tuple:
    """The argument objects of `classes` (default: run_glue.py's four) from one flat mapping of argument
    names (as a JSON file or a sweep cell gives them). An unknown name or a value of the wrong type (`"lora_rank":
    "eight"`, a list where a string belongs) is one clear error naming the key, `where` (with its
    line when `source_text`, the file's text, is given), the value and the expected type."""
    from petl.typecheck import checked_value, field_types, shown

    if not isinstance(values, dict):
        raise PetlError(f"{where}: expected an object of argument names and values, got {shown(values)}")
    types_by_class = [field_types(cls) for cls in classes]
    known = set().union(*types_by_class)
    for key, value in values.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            at = _located(where, source_text, str(key))
            raise PetlError(f"{at}: {str(key)!r} (= {shown(value)}) is not a {program} argument{hint}")
    objs: list[Any] = []
    for cls, types in zip(classes, types_by_class, strict=True):
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

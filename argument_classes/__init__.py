"""Argument dataclasses for `run_glue.py`, parsed by `HfArgumentParser` (CLI or a JSON file)."""

from argument_classes.data_args import DataArguments
from argument_classes.model_args import ModelArguments
from argument_classes.petl_args import PetlArguments
from argument_classes.training_args import PetlTrainingArguments

ARGUMENT_CLASSES = (ModelArguments, DataArguments, PetlArguments, PetlTrainingArguments)
__all__ = ["ARGUMENT_CLASSES", "DataArguments", "ModelArguments", "PetlArguments", "PetlTrainingArguments", "arguments_from_dict"]


def arguments_from_dict(values: dict, where: str = "arguments") -> tuple:
    """The four run_glue.py argument objects from one flat mapping of argument names (as a JSON
    file or a sweep cell gives them); a name no class has is one clear error."""
    from dataclasses import fields

    from petl.errors import PetlError

    objs, known = [], set()
    for cls in ARGUMENT_CLASSES:
        names = {f.name for f in fields(cls) if f.init}
        known |= names
        objs.append(cls(**{k: v for k, v in values.items() if k in names}))
    unknown = sorted(set(values) - known)
    if unknown:
        raise PetlError(f"{where}: {unknown[0]!r} is not a run_glue.py argument")
    return tuple(objs)

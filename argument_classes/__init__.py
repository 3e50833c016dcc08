"""Argument dataclasses for `run_glue.py`, parsed by `HfArgumentParser` (CLI or a JSON file)."""

from argument_classes.data_args import DataArguments
from argument_classes.model_args import ModelArguments
from argument_classes.petl_args import PetlArguments
from argument_classes.training_args import PetlTrainingArguments

__all__ = ["DataArguments", "ModelArguments", "PetlArguments", "PetlTrainingArguments"]

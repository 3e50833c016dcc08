from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from petl.choices import CACHE_DTYPES
from petl.errors import PetlError


class UnsetLearningRate(float):
    """HF's default --learning_rate (5e-5) when nobody set it: a float like any other, told apart from
    an explicit 5e-5 (the command line, an args file, a sweep cell, a search trial: each makes a plain
    float), so method parameters without a rate given train at their method's default (MethodEntry.default_lr)."""


DEFAULT_LEARNING_RATE = UnsetLearningRate(5e-5)
PUSH_TO_HUB_REFUSED = (
    "--push_to_hub would upload none of this project's files (HF pushes full-model weights); upload the run folder's "
    "petl_weights.safetensors and petl_config.json (or the --export_peft folder) with `huggingface-cli upload <repo> <folder>` "
    "or huggingface_hub.upload_folder"
)


@dataclass
class PetlTrainingArguments(TrainingArguments):
    """HF TrainingArguments with per-group learning rates, early stopping and results files.

    Defaults differ from HF where a study needs it: evaluate every epoch, no full-model
    checkpoints (the best trained state is kept in memory), no external loggers."""

    output_dir: str | None = field(default=None, metadata={"help": "Run folder; default outputs/<task>-<model>-<method>-s<seed>."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow replacing the results of an earlier run in output_dir."})
    learning_rate: float = field(
        default=DEFAULT_LEARNING_RATE,
        metadata={
            "help": "Learning rate of the head and of pretrained weights (HF's default 5e-5); also of a method's new "
            "parameters when given (else each method's default, README: Training a method)."
        },
    )
    head_lr: float | None = field(default=None, metadata={"help": "Learning rate of the classification head."})
    petl_lr: float | None = field(
        default=None,
        metadata={"help": "Learning rate of parameters added by a method (default: --learning_rate if given, else the method's default)."},
    )
    early_stopping_patience: int | None = field(default=None, metadata={"help": "Stop after this many evaluations without improvement."})
    results_file: str | None = field(default=None, metadata={"help": "Append the results record as one JSON line to this file."})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Continue a killed run: a checkpoint-N folder, or 'true' for the latest complete one in --output_dir. "
            "The best state, evaluation history and early-stopping counter are restored too (README: Resuming a run)."
        },
    )
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate on validation (HF)."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpoints (delta-only for PETL methods)."})
    logging_steps: float = field(default=50, metadata={"help": "Log every N steps."})
    group_by_length: bool = field(
        default=False, metadata={"help": "Batch examples of similar length (less padding); = --train_sampling_strategy group_by_length."}
    )
    cache_frozen_layers: bool = field(
        default=False,
        metadata={
            "help": "Compute the hidden states entering the lowest trained layer once per data set and run only the "
            "layers above (petl/cache.py). For methods at layers >= 1 and head; not full or prompt."
        },
    )
    frozen_layers_eval_mode: bool = field(
        default=False,
        metadata={"help": "Run the frozen layers below the lowest trained one without dropout, as a cached run does."},
    )
    cache_dtype: str = field(default="float32", metadata={"help": "Storage type of the cache: float32, bfloat16 or float16."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Keep caches on disk (memory-mapped) here, reused across runs and seeds."}
    )

    def __post_init__(self):
        if self.cache_dtype not in CACHE_DTYPES:
            raise PetlError(f"--cache_dtype {self.cache_dtype!r} is not one of {', '.join(CACHE_DTYPES)}")
        if self.push_to_hub:
            raise PetlError(PUSH_TO_HUB_REFUSED)
        if self.group_by_length:
            self.train_sampling_strategy = "group_by_length"
        # The best state is always selected by the task's metric (or --metric_for_best_model) and restored
        # at the end (petl.training.BestStateCallback), so --load_best_model_at_end asks for what every run
        # does. HF's own handling is kept out: it would set metric_for_best_model="loss", demand matching
        # save and eval strategies, and derive greater_is_better from the name (wrongly for mse). The flag
        # and an unset greater_is_better are kept as given (petl.experiment turns HF's reload off).
        load_best, greater = self.load_best_model_at_end, self.greater_is_better
        self.load_best_model_at_end = False
        super().__post_init__()
        self.load_best_model_at_end, self.greater_is_better = load_best, greater

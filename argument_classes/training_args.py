from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from petl.errors import PetlError

CACHE_DTYPES = ("float32", "bfloat16", "float16")  # petl.cache.CACHE_DTYPES' names


@dataclass
class PetlTrainingArguments(TrainingArguments):
    """HF TrainingArguments with per-group learning rates, early stopping and results files.

    Defaults differ from HF where a study needs it: evaluate every epoch, no full-model
    checkpoints (the best trained state is kept in memory), no external loggers."""

    output_dir: str | None = field(default=None, metadata={"help": "Run folder; default outputs/<task>-<model>-<method>-s<seed>."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow replacing the results of an earlier run in output_dir."})
    head_lr: float | None = field(default=None, metadata={"help": "Learning rate of the classification head."})
    petl_lr: float | None = field(default=None, metadata={"help": "Learning rate of parameters added by a method."})
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
        if self.group_by_length:
            self.train_sampling_strategy = "group_by_length"
        super().__post_init__()

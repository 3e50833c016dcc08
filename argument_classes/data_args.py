from __future__ import annotations

import os
from dataclasses import dataclass, field

from petl.choices import SPLIT_MODES
from petl.data import check_pair_template
from petl.errors import PetlError


@dataclass
class DataArguments:
    task_name: str | None = field(default=None, metadata={"help": "GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli."})
    glue_dir: str | None = field(
        default_factory=lambda: os.environ.get("GLUE_DIR"),
        metadata={"help": "Folder in the classic GLUE layout (<TASK>/<split>.tsv); default $GLUE_DIR, else the hub."},
    )
    train_file: str | None = field(default=None, metadata={"help": "csv/tsv/json(l) training file (custom data)."})
    validation_file: str | None = field(default=None, metadata={"help": "csv/tsv/json(l) validation file."})
    test_file: str | None = field(default=None, metadata={"help": "csv/tsv/json(l) test file (labels optional)."})
    text_columns: str | None = field(default=None, metadata={"help": "One or two comma-separated text columns of the custom files."})
    label_column: str = field(default="label", metadata={"help": "Label column of the custom files."})
    split_mode: str = field(
        default="heldout",
        metadata={
            "help": "official: train on train, select and report on dev. heldout: select on a held-out "
            "validation split, report on a separate test split (dev halves for tasks under 10k examples)."
        },
    )
    split_seed: int = field(default=42, metadata={"help": "Seed of the held-out split and of subsampling."})
    heldout_validation_size: int | None = field(
        default=None,
        metadata={
            "help": "--split_mode heldout on a task with 10k+ training examples (SST-2, QNLI, ...): how many "
            "training examples are held out as validation (default 1000). Smaller tasks split dev 50/50 instead."
        },
    )
    pair_template: str | None = field(
        default=None,
        metadata={
            "help": "Join sentence pairs into one text, e.g. '{s1}\\n{s2}' (needs both placeholders). "
            "Default: the tokenizer's pair format for encoders, '{s1}\\n{s2}' for decoders."
        },
    )
    max_seq_length: int = field(default=128, metadata={"help": "Truncate inputs to this many tokens."})
    pad_to_max_length: bool = field(default=False, metadata={"help": "Pad to max_seq_length instead of per batch."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Seeded random subset of training data."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Seeded random subset of each eval set."})
    train_fraction: float | None = field(default=None, metadata={"help": "Seeded random fraction of training data."})

    def __post_init__(self):
        if self.split_mode not in SPLIT_MODES:
            raise PetlError(f"--split_mode {self.split_mode!r} is not one of {', '.join(SPLIT_MODES)}")
        if self.pair_template is not None:
            check_pair_template(self.pair_template)

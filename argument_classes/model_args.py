from __future__ import annotations

from dataclasses import dataclass, field

from petl.choices import POOLER_TYPES
from petl.errors import PetlError


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="minilm-l6",
        metadata={"help": "Hub id, local folder, or packaged alias (minilm-l6, mpnet-base, smollm2-135m) that resolves offline."},
    )
    pooler_type: str = field(
        default="auto",
        metadata={
            "help": "model: the backbone's own HF sequence-classification head; cls|avg|last: one shared head "
            "(dense-tanh-out) on the CLS token, the mask-aware mean, or the last non-padding token (from the "
            "attention mask). auto: model for encoders, last for decoders (GPT-2, Llama)."
        },
    )
    num_hidden_layers: int | None = field(default=None, metadata={"help": "Keep only the bottom N layers."})
    classifier_dropout: float | None = field(
        default=None, metadata={"help": "Dropout of the shared head (pooler_type cls|avg|last); default: the model's."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Override model config values, e.g. hidden_dropout_prob=0,attention_probs_dropout_prob=0."},
    )

    def __post_init__(self):
        if self.pooler_type not in POOLER_TYPES:
            raise PetlError(f"--pooler_type {self.pooler_type!r} is not one of {', '.join(POOLER_TYPES)}")

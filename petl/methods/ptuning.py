"""P-tuning (Liu et al. 2021, "GPT Understands, Too"): soft prompts produced by a prompt encoder.

P learned input vectors go through a bidirectional LSTM and a two-layer MLP; the result is the
prompt inserted at the input embeddings (exactly where prompt tuning puts its prompts). The
encoder reads the P prompt vectors as one sequence of its own, independent of the batch, so it
works for any batch size, 1 included. Only the prompt encoder and the head train."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from petl.arch import input_embedding_width
from petl.errors import PetlError
from petl.methods.prompt import PROMPT_POSITIONS, attach_input_prompts, validate_position
from petl.methods.targets import owned_parameters
from petl.registry import MethodConfig, MethodEntry, option, register


@dataclass
class PtuningConfig(MethodConfig):
    length: int = option(10, "Number of prompt vectors.")
    hidden: int = option(0, "BiLSTM hidden size per direction (0: model hidden // 2).")
    position: str = option("auto", "Where prompts go: auto, after_cls, start.")

    def validate(self) -> None:
        if self.length < 1:
            raise PetlError(f"--ptuning_length {self.length} is invalid; allowed: >= 1")
        if self.hidden < 0:
            raise PetlError(f"--ptuning_hidden {self.hidden} is invalid; allowed: 0 (model hidden // 2) or > 0")
        validate_position(self.position, "ptuning_position")


class PromptEncoder(nn.Module):
    """embedding (P, h) -> BiLSTM (2 layers) -> MLP -> prompts (P, h)."""

    def __init__(self, length: int, hidden: int, encoder_hidden: int, std: float):
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(length, hidden) * std)
        self.embedding.petl_no_decay = True
        self.lstm = nn.LSTM(hidden, encoder_hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(2 * encoder_hidden, 2 * encoder_hidden), nn.ReLU(), nn.Linear(2 * encoder_hidden, hidden))

    def forward(self) -> torch.Tensor:
        out, _ = self.lstm(self.embedding.unsqueeze(0))  # one sequence of P steps: batch-size independent
        return self.mlp(out[0])


def apply_ptuning(model: nn.Module, config: PtuningConfig) -> dict[str, int | None]:
    hidden = input_embedding_width(model)  # ALBERT, ELECTRA-small: embedding_size < hidden_size
    encoder_hidden = config.hidden or max(1, hidden // 2)
    std = getattr(model.config, "initializer_range", 0.02)
    device = next(model.parameters()).device
    model.ptuning_encoder = PromptEncoder(config.length, hidden, encoder_hidden, std).to(device)
    attach_input_prompts(model, model.ptuning_encoder, config.position)
    return owned_parameters(model, model, None, ("ptuning_encoder",))


register(
    MethodEntry(
        "ptuning",
        PtuningConfig,
        apply_ptuning,
        flag_prefix="ptuning",
        group="input prompt",
        description=f"P-tuning: prompts from a BiLSTM+MLP prompt encoder (positions: {', '.join(PROMPT_POSITIONS)})",
        search_space={"learning_rate": {"loguniform": [1e-4, 3e-2]}, "ptuning_length": {"choice": [5, 10, 20]}},
        default_lr=1e-2,  # scripts/ptuning_hyper.sh
    )
)

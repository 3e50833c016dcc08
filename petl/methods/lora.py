"""LoRA (Hu et al. 2021): y = W x + (alpha / r) * B A dropout(x), with B = 0 at init.

A and B live on the wrapped Linear as `lora_A` / `lora_B` (PEFT's names), and a forward hook adds
the update, so the base weights keep their names and can be merged in place."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from petl.errors import PetlError
from petl.methods.hooks import arch_for, chosen_layers, layer_module, owned_parameters, parse_targets
from petl.registry import MethodConfig, MethodEntry, register

LORA_TARGETS = ("q", "k", "v", "o", "ffn_in", "ffn_out")


@dataclass
class LoraConfig(MethodConfig):
    targets: str = "q,v"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    layers: str = "all"

    def validate(self) -> None:
        parse_targets(self.targets, LORA_TARGETS, "lora_targets")
        if self.rank < 1:
            raise PetlError(f"--lora_rank {self.rank} is invalid; allowed: 1..min(in, out) of the target")
        if not 0 <= self.dropout < 1:
            raise PetlError(f"--lora_dropout {self.dropout} is out of range; allowed: [0, 1)")


def _lora_hook(module: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor:
    if module.lora_merged:
        return output
    x = module.lora_dropout(args[0])
    return output + module.lora_B(module.lora_A(x)) * module.lora_scaling


def attach_lora(linear: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
    if not isinstance(linear, nn.Linear):
        raise PetlError(f"LoRA needs an nn.Linear target, got {type(linear).__name__}")
    limit = min(linear.in_features, linear.out_features)
    if rank > limit:
        raise PetlError(f"--lora_rank {rank} is larger than the target's size; allowed: 1..{limit}")
    linear.lora_A = nn.Linear(linear.in_features, rank, bias=False)
    linear.lora_B = nn.Linear(rank, linear.out_features, bias=False)
    nn.init.kaiming_uniform_(linear.lora_A.weight, a=math.sqrt(5))
    nn.init.zeros_(linear.lora_B.weight)
    linear.lora_A.to(linear.weight.device)
    linear.lora_B.to(linear.weight.device)
    linear.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
    linear.lora_scaling = alpha / rank
    linear.lora_merged = False
    linear.register_forward_hook(_lora_hook, prepend=True)  # before adapters on the same module


def apply_lora(model: nn.Module, config: LoraConfig) -> dict[str, int | None]:
    arch = arch_for(model)
    paths = arch.targets()
    owned = {}
    for layer in chosen_layers(model, config.layers, "lora_layers"):
        for target in parse_targets(config.targets, LORA_TARGETS, "lora_targets"):
            for path in paths[target]:
                linear = layer_module(model, layer, path)
                attach_lora(linear, config.rank, config.alpha, config.dropout)
                owned.update(owned_parameters(model, linear, layer, ("lora_A", "lora_B")))
    return owned


def lora_modules(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and hasattr(m, "lora_A")]


@torch.no_grad()
def merge_lora(model: nn.Module, merge: bool = True) -> int:
    """Fold (merge=True) or unfold the LoRA update into the base weight; returns modules changed."""
    changed = 0
    for _, m in lora_modules(model):
        if m.lora_merged == merge:
            continue
        delta = (m.lora_B.weight @ m.lora_A.weight) * m.lora_scaling
        m.weight.add_(delta if merge else -delta)
        m.lora_merged = merge
        changed += 1
    return changed


register(
    MethodEntry(
        "lora", LoraConfig, apply_lora, flag_prefix="lora", description="low-rank updates of chosen projections (q,k,v,o,ffn_in,ffn_out)"
    )
)

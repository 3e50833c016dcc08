"""LoRA (Hu et al. 2021): y = W x + (alpha / r) * B A dropout(x), with B = 0 at init.

A and B live on the wrapped Linear (or GPT-2 Conv1D) as `lora_A` / `lora_B` (PEFT's names), and a
forward hook adds the update, so the base weights keep their names and can be merged in place. On a
fused projection (GPT-2's c_attn) each chosen slot has its own pair, `lora_A_q` / `lora_B_q`, whose
update touches only that slot's output columns."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from petl.arch import arch_for, projection_features, slot_range
from petl.errors import PetlError
from petl.layers import check_layer_spec
from petl.methods.targets import chosen_layers, owned_parameters, parse_targets, target_module
from petl.registry import MethodConfig, MethodEntry, option, register

LORA_TARGETS = ("q", "k", "v", "o", "ffn_in", "ffn_out")


@dataclass
class LoraConfig(MethodConfig):
    targets: str = option("q,v", "Subset of q,k,v,o,ffn_in,ffn_out.")
    rank: int = option(8, "LoRA rank r.")
    alpha: float = option(16.0, "LoRA alpha; the update is scaled by alpha/rank.")
    dropout: float = option(0.0, "Dropout on the LoRA input.")
    layers: str = option("all", "Layers that get LoRA.")

    def validate(self) -> None:
        parse_targets(self.targets, LORA_TARGETS, "lora_targets")
        if self.rank < 1:
            raise PetlError(f"--lora_rank {self.rank} is invalid; allowed: 1..min(in, out) of the target")
        if not 0 <= self.dropout < 1:
            raise PetlError(f"--lora_dropout {self.dropout} is out of range; allowed: [0, 1)")
        if not math.isfinite(self.alpha):
            raise PetlError(f"--lora_alpha {self.alpha} is not a finite number; allowed: a finite number")
        check_layer_spec(self.layers, "lora_layers")


def _lora_update(module: nn.Module, slot: str | None, x: torch.Tensor) -> torch.Tensor:
    suffix = f"_{slot}" if slot else ""
    return getattr(module, f"lora_B{suffix}")(getattr(module, f"lora_A{suffix}")(x)) * module.lora_scaling


def _lora_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    if module.lora_merged:
        return output
    x = module.lora_dropout(args[0])
    slots = module.lora_slots  # {slot or None: (start, end) or None}
    if None in slots:
        return output + _lora_update(module, None, x)
    # fused projection: add each chosen slot's update to its own columns only
    pieces, at = [], 0
    for slot, (start, end) in sorted(slots.items(), key=lambda kv: kv[1][0]):
        pieces += [output[..., at:start], output[..., start:end] + _lora_update(module, slot, x)]
        at = end
    pieces.append(output[..., at:])
    return torch.cat(pieces, dim=-1)


def attach_lora(
    module: nn.Module, rank: int, alpha: float, dropout: float, columns: tuple[int, int] | None = None, slot: str | None = None
) -> None:
    """LoRA on an nn.Linear or Conv1D; with `columns`, on that slot of a fused projection only
    (its own A and B: GPT-2's q and v each get a rank-r update, as with separate projections)."""
    in_features, out_features = projection_features(module)
    width = out_features if columns is None else columns[1] - columns[0]
    limit = min(in_features, width)
    if rank > limit:
        raise PetlError(f"--lora_rank {rank} is larger than the target's size; allowed: 1..{limit}")
    suffix = f"_{slot}" if slot else ""
    lora_a = nn.Linear(in_features, rank, bias=False)
    lora_b = nn.Linear(rank, width, bias=False)
    nn.init.kaiming_uniform_(lora_a.weight, a=math.sqrt(5))
    nn.init.zeros_(lora_b.weight)
    setattr(module, f"lora_A{suffix}", lora_a.to(module.weight.device))
    setattr(module, f"lora_B{suffix}", lora_b.to(module.weight.device))
    if not hasattr(module, "lora_slots"):
        module.lora_slots = {}
        module.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        module.lora_scaling = alpha / rank
        module.lora_merged = False
        module.register_forward_hook(_lora_hook, prepend=True)  # additive: first (the hook-order rule, petl.registry)
    module.lora_slots[slot] = columns


def apply_lora(model: nn.Module, config: LoraConfig) -> dict[str, int | None]:
    arch = arch_for(model)
    paths = arch.targets()
    owned = {}
    for layer in chosen_layers(model, config.layers, "lora_layers"):
        for target in parse_targets(config.targets, LORA_TARGETS, "lora_targets"):
            for path in paths[target]:
                module, slot = target_module(model, layer, path)
                attach_lora(module, config.rank, config.alpha, config.dropout, slot_range(module, slot, arch, model.config), slot)
                suffix = f"_{slot}" if slot else ""
                owned.update(owned_parameters(model, module, layer, (f"lora_A{suffix}", f"lora_B{suffix}")))
    return owned


def lora_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "lora_slots")]


@torch.no_grad()
def merge_lora(model: nn.Module, merge: bool = True) -> int:
    """Fold (merge=True) or unfold the LoRA update into the base weight; returns modules changed."""
    changed = 0
    for _, m in lora_modules(model):
        if m.lora_merged == merge:
            continue
        conv1d = not isinstance(m, nn.Linear)  # Conv1D stores its weight as (in, out)
        for slot, columns in m.lora_slots.items():
            suffix = f"_{slot}" if slot else ""
            delta = (getattr(m, f"lora_B{suffix}").weight @ getattr(m, f"lora_A{suffix}").weight) * m.lora_scaling
            delta = delta if merge else -delta
            start, end = columns if columns is not None else (0, delta.shape[0])
            if conv1d:
                m.weight[:, start:end].add_(delta.T)
            else:
                m.weight[start:end].add_(delta)
        m.lora_merged = merge
        changed += 1
    return changed


register(
    MethodEntry(
        "lora",
        LoraConfig,
        apply_lora,
        flag_prefix="lora",
        description="low-rank updates of chosen projections (q,k,v,o,ffn_in,ffn_out)",
        merge=lambda model: merge_lora(model, merge=True),
        unmerge=lambda model: merge_lora(model, merge=False),
        search_space={"learning_rate": {"loguniform": [1e-4, 1e-2]}, "lora_rank": {"choice": [4, 8, 16]}},
        default_lr=5e-4,  # scripts/lora_hyper.sh
    )
)

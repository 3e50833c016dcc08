"""Full fine-tuning and head-only ("raw") training."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from petl.arch import layer_of_parameter
from petl.registry import MethodConfig, MethodEntry, nothing_to_fold, register


@dataclass
class FullConfig(MethodConfig):
    pass


@dataclass
class HeadConfig(MethodConfig):
    pass


def apply_full(model: nn.Module, config: FullConfig) -> dict[str, int | None]:
    owned = {}
    for name, param in model.named_parameters():
        param.requires_grad_(True)
        owned[name] = layer_of_parameter(model, name)
    return owned


def apply_head(model: nn.Module, config: HeadConfig) -> dict[str, int | None]:
    return {}  # the head is trainable for every method; nothing else trains


register(
    MethodEntry(
        "full",
        FullConfig,
        apply_full,
        flag_prefix="full",
        new_parameters=False,
        exclusive=True,
        description="full fine-tuning: every weight trains",
        merge=nothing_to_fold,
        unmerge=nothing_to_fold,
        search_space={"learning_rate": {"loguniform": [1e-5, 2e-4]}},
    )
)
register(
    MethodEntry(
        "head",
        HeadConfig,
        apply_head,
        flag_prefix="head",
        new_parameters=False,
        exclusive=True,
        description="frozen backbone, only the classification head trains (the 'raw' baseline)",
        merge=nothing_to_fold,
        unmerge=nothing_to_fold,
        search_space={},  # the head's rate is in the common space; --learning_rate trains nothing
    )
)

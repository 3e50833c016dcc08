"""Sparse FFN tuning: train exactly the FFN projections of chosen layers (never attention)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from petl.arch import arch_for, layer_module
from petl.layers import check_layer_spec
from petl.methods.targets import chosen_layers
from petl.registry import MethodConfig, MethodEntry, nothing_to_fold, option, register


@dataclass
class FfnConfig(MethodConfig):
    layers: str = option("all", "Layers whose FFN trains (e.g. 5, 0,3, 8-11, all).")
    include_layernorm: bool = option(False, "Also train the FFN LayerNorm.")

    def validate(self) -> None:
        check_layer_spec(self.layers, "ffn_layers")


def apply_ffn(model: nn.Module, config: FfnConfig) -> dict[str, int | None]:
    arch = arch_for(model)
    paths = list(arch.ffn_in) + [arch.ffn_out]
    if config.include_layernorm and arch.ffn_ln:
        paths.append(arch.ffn_ln)
    owned = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for layer in chosen_layers(model, config.layers, "ffn_layers"):
        for path in paths:
            for param in layer_module(model, layer, path).parameters():
                param.requires_grad_(True)
                owned[names[id(param)]] = layer
    return owned


register(
    MethodEntry(
        "ffn",
        FfnConfig,
        apply_ffn,
        flag_prefix="ffn",
        new_parameters=False,
        description="train only the FFN (two projections, optionally its LayerNorm) of chosen layers",
        merge=nothing_to_fold,
        unmerge=nothing_to_fold,
        search_space={"learning_rate": {"loguniform": [1e-5, 1e-3]}},
    )
)

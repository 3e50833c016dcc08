"""BitFit (Ben Zaken et al. 2022): train bias deltas; the pretrained biases stay as loaded.

Each chosen module gets `bias_delta` (zeros), added to its output by a hook, so step 0 is the
base model and the delta can be folded into the bias for export."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from petl.errors import PetlError
from petl.methods.hooks import arch_for, chosen_layers, layer_module, owned_parameters, parse_targets
from petl.registry import MethodConfig, MethodEntry, register

BITFIT_TARGETS = ("q", "k", "v", "o", "ffn_in", "ffn_out", "attn_ln", "ffn_ln")


@dataclass
class BitfitConfig(MethodConfig):
    targets: str = "q,k,v,o,ffn_in,ffn_out,attn_ln,ffn_ln"
    layers: str = "all"

    def validate(self) -> None:
        parse_targets(self.targets, BITFIT_TARGETS, "bitfit_targets")


def _bias_delta_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + module.bias_delta


def apply_bitfit(model: nn.Module, config: BitfitConfig) -> dict[str, int | None]:
    arch = arch_for(model)
    paths = {**arch.targets(), "attn_ln": (arch.attn_ln,), "ffn_ln": (arch.ffn_ln,)}
    owned = {}
    for layer in chosen_layers(model, config.layers, "bitfit_layers"):
        for target in parse_targets(config.targets, BITFIT_TARGETS, "bitfit_targets"):
            for path in paths[target]:
                if path is None:
                    raise PetlError(f"--bitfit_targets {target!r}: this architecture has no such module")
                module = layer_module(model, layer, path)
                bias = getattr(module, "bias", None)
                if bias is None:
                    raise PetlError(
                        f"BitFit needs biases, but {path} in {model.config.model_type} has none; "
                        "choose another method or targets with biases"
                    )
                module.bias_delta = nn.Parameter(torch.zeros_like(bias))
                module.bias_delta.petl_no_decay = True
                module.register_forward_hook(_bias_delta_hook, prepend=True)
                owned.update(owned_parameters(model, module, layer, ("bias_delta",)))
    return owned


register(
    MethodEntry(
        "bitfit", BitfitConfig, apply_bitfit, flag_prefix="bitfit", description="trained bias deltas of chosen projections and LayerNorms"
    )
)

"""BitFit (Ben Zaken et al. 2022): train bias deltas; the pretrained biases stay as loaded.

Each chosen module gets `bias_delta` (zeros), added to its output by a hook, so step 0 is the
base model and the delta can be folded into the bias (merge_petl) for export."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from petl.arch import arch_for, slot_range, split_slot
from petl.errors import PetlError
from petl.layers import check_layer_spec
from petl.methods.targets import chosen_layers, owned_parameters, parse_targets, target_module
from petl.registry import MethodConfig, MethodEntry, option, register

BITFIT_TARGETS = ("q", "k", "v", "o", "ffn_in", "ffn_out", "attn_ln", "ffn_ln")


@dataclass
class BitfitConfig(MethodConfig):
    targets: str = option("q,k,v,o,ffn_in,ffn_out,attn_ln,ffn_ln", "Biases that get a trained delta.")
    layers: str = option("all", "Layers that get BitFit.")

    def validate(self) -> None:
        parse_targets(self.targets, BITFIT_TARGETS, "bitfit_targets")
        check_layer_spec(self.layers, "bitfit_layers")


def _bias_delta_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    if module.bias_delta_merged:
        return output
    if not module.bias_delta_slots:  # whole output
        return output + module.bias_delta
    # fused projection (GPT-2 c_attn): a delta only on the chosen slots' columns
    delta = output.new_zeros(output.shape[-1])
    for slot, (start, end) in module.bias_delta_slots.items():
        delta = delta.index_add(0, torch.arange(start, end, device=delta.device), getattr(module, f"bias_delta_{slot}").to(delta.dtype))
    return output + delta


def apply_bitfit(model: nn.Module, config: BitfitConfig) -> dict[str, int | None]:
    arch = arch_for(model)
    paths = {**arch.targets(), "attn_ln": (arch.attn_ln,), "ffn_ln": (arch.ffn_ln,)}
    owned = {}
    for layer in chosen_layers(model, config.layers, "bitfit_layers"):
        for target in parse_targets(config.targets, BITFIT_TARGETS, "bitfit_targets"):
            for path in paths[target]:
                if path is None:
                    raise PetlError(f"--bitfit_targets {target!r}: this architecture has no such module")
                module, slot = target_module(model, layer, path)
                bias = getattr(module, "bias", None)
                if bias is None:
                    raise PetlError(
                        f"BitFit needs biases, but {split_slot(path)[0]} in {model.config.model_type} has none "
                        f"(--bitfit_targets {target}); choose another method, or targets that have biases"
                    )
                if not hasattr(module, "bias_delta_slots"):
                    module.bias_delta_slots = {}
                    module.bias_delta_merged = False
                    module.register_forward_hook(_bias_delta_hook, prepend=True)  # additive: first (hook-order rule, petl.registry)
                columns = slot_range(module, slot, arch, model.config)
                name = "bias_delta" if slot is None else f"bias_delta_{slot}"
                setattr(module, name, nn.Parameter(torch.zeros_like(bias if columns is None else bias[columns[0] : columns[1]])))
                getattr(module, name).petl_no_decay = True
                if slot is not None:
                    module.bias_delta_slots[slot] = columns
                owned.update(owned_parameters(model, module, layer, (name,)))
    return owned


@torch.no_grad()
def fold_bias_deltas(model: nn.Module, merge: bool = True) -> int:
    """Add (merge=True) or subtract the deltas to or from the biases; returns modules changed."""
    changed = 0
    for m in model.modules():
        if not hasattr(m, "bias_delta_slots") or m.bias_delta_merged == merge:
            continue
        sign = 1 if merge else -1
        if not m.bias_delta_slots:
            m.bias.add_(sign * m.bias_delta.to(m.bias.dtype))
        for slot, (start, end) in m.bias_delta_slots.items():
            m.bias[start:end].add_(sign * getattr(m, f"bias_delta_{slot}").to(m.bias.dtype))
        m.bias_delta_merged = merge
        changed += 1
    return changed


register(
    MethodEntry(
        "bitfit",
        BitfitConfig,
        apply_bitfit,
        flag_prefix="bitfit",
        description="trained bias deltas of chosen projections and LayerNorms",
        merge=lambda model: fold_bias_deltas(model, merge=True),
        unmerge=lambda model: fold_bias_deltas(model, merge=False),
        search_space={"learning_rate": {"loguniform": [1e-4, 3e-2]}},
        default_lr=1e-3,  # scripts/bitfit_hyper.sh
    )
)

"""(IA)^3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
In-Context Learning"): learned vectors that rescale the keys, the values and the FFN's activation.

    k, v:  y = l * (W x + b)            a hook scales the projection's output, its bias included
    ffn:   y = W_out (l * h) + b_out    a pre-hook scales the input of the FFN's output projection

as PEFT's IA3 (`target_modules` k, v and the FFN output projection, which is also a
`feedforward_modules` entry). The vectors start at ones, so step 0 is the base model. On GPT-2's
fused c_attn each chosen slot gets its own vector (`ia3_scale_k`), scaling only its columns.

The k/v hook is multiplicative, so it is appended (the hook-order rule, petl.registry): it scales
what LoRA's and BitFit's prepended hooks add as well, and merge_petl folds it after them. Folding:
rows of the k/v weight and their bias entries; columns of the FFN output projection's weight (the
inputs they read), bias untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from petl.arch import arch_for, projection_features, slot_range
from petl.errors import PetlError
from petl.layers import check_layer_spec
from petl.methods.targets import chosen_layers, owned_parameters, parse_targets, target_module
from petl.registry import MethodConfig, MethodEntry, option, register

IA3_TARGETS = ("k", "v", "ffn")


@dataclass
class Ia3Config(MethodConfig):
    targets: str = option("k,v,ffn", "Subset of k,v,ffn: scale the keys, the values, the FFN activation.")
    layers: str = option("all", "Layers that get IA3 (e.g. 5, 0,3, 8-11, all).")

    def validate(self) -> None:
        parse_targets(self.targets, IA3_TARGETS, "ia3_targets")
        check_layer_spec(self.layers, "ia3_layers")


def _output_scale(module: nn.Module, width: int) -> torch.Tensor:
    """The scale of every output column: the module's vector, or on a fused projection each chosen
    slot's vector at its columns and ones elsewhere."""
    slots = module.ia3_slots  # {slot or None: (start, end) or None}
    if None in slots:
        return module.ia3_scale
    pieces, at = [], 0
    for slot, (start, end) in sorted(slots.items(), key=lambda kv: kv[1][0]):
        vector = getattr(module, f"ia3_scale_{slot}")
        pieces += [vector.new_ones(start - at), vector]
        at = end
    pieces.append(pieces[-1].new_ones(width - at))
    return torch.cat(pieces)


def _scale_output_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    if module.ia3_merged:
        return output
    return output * _output_scale(module, output.shape[-1]).to(output.dtype)


def _scale_input_pre_hook(module: nn.Module, args: tuple) -> tuple:
    if module.ia3_merged:
        return args
    return (args[0] * module.ia3_input_scale.to(args[0].dtype), *args[1:])


def _new_vector(module: nn.Module, width: int) -> nn.Parameter:
    vector = nn.Parameter(torch.ones(width, device=module.weight.device))
    vector.petl_no_decay = True  # weight decay would pull the scales towards 0, not towards identity
    return vector


def _scale_output(module: nn.Module, columns: tuple[int, int] | None, slot: str | None) -> str:
    """Attach a vector scaling `module`'s output (or the slot's columns); returns its attribute name."""
    if not hasattr(module, "ia3_slots"):
        module.ia3_slots = {}
        module.ia3_merged = False
        module.register_forward_hook(_scale_output_hook)  # multiplicative: after the additive hooks
    width = projection_features(module)[1] if columns is None else columns[1] - columns[0]
    name = "ia3_scale" if slot is None else f"ia3_scale_{slot}"
    setattr(module, name, _new_vector(module, width))
    module.ia3_slots[slot] = columns
    return name


def _scale_input(module: nn.Module) -> str:
    module.ia3_input_scale = _new_vector(module, projection_features(module)[0])
    module.ia3_merged = False
    module.register_forward_pre_hook(_scale_input_pre_hook)
    return "ia3_input_scale"


def apply_ia3(model: nn.Module, config: Ia3Config) -> dict[str, int | None]:
    arch = arch_for(model)
    owned = {}
    for layer in chosen_layers(model, config.layers, "ia3_layers"):
        for target in parse_targets(config.targets, IA3_TARGETS, "ia3_targets"):
            path = arch.ffn_out if target == "ffn" else getattr(arch, target)
            module, slot = target_module(model, layer, path)
            if target == "ffn":
                name = _scale_input(module)
            else:
                name = _scale_output(module, slot_range(module, slot, arch, model.config), slot)
            owned.update(owned_parameters(model, module, layer, (name,)))
    return owned


def _is_conv1d(module: nn.Module) -> bool:
    return not isinstance(module, nn.Linear)  # transformers' Conv1D stores its weight as (in, out)


def _fold(module: nn.Module, merge: bool) -> None:
    """Multiply (merge) or divide (unmerge) the scaled weights by the vectors."""
    power = 1 if merge else -1
    if hasattr(module, "ia3_input_scale"):  # input features: Linear columns, Conv1D rows
        factor = module.ia3_input_scale.to(module.weight.dtype).pow(power)
        module.weight.mul_(factor[:, None] if _is_conv1d(module) else factor[None, :])
        return
    for slot, columns in module.ia3_slots.items():  # output features: Linear rows, Conv1D columns, bias entries
        factor = getattr(module, "ia3_scale" if slot is None else f"ia3_scale_{slot}").to(module.weight.dtype).pow(power)
        start, end = columns if columns is not None else (0, factor.shape[0])
        if _is_conv1d(module):
            module.weight[:, start:end].mul_(factor[None, :])
        else:
            module.weight[start:end].mul_(factor[:, None])
        if module.bias is not None:
            module.bias[start:end].mul_(factor)


def _ia3_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "ia3_slots") or hasattr(m, "ia3_input_scale")]


@torch.no_grad()
def fold_ia3(model: nn.Module, merge: bool = True) -> int:
    """Fold the vectors into the weights (merge=True) or out again; returns the modules changed.
    Unfolding divides by the vectors: a vector with a zero entry zeroed weights for good, so unmerging
    it is refused (nothing changed) rather than left as infinities."""
    modules = [(n, m) for n, m in _ia3_modules(model) if m.ia3_merged != merge]
    if not merge:
        for name, module in modules:
            for attr, vector in module.named_parameters(recurse=False):
                if attr.startswith("ia3_") and not bool(vector.ne(0).all()):
                    raise PetlError(f"unmerge: {name}.{attr} has zero entries; the weights it scaled are lost (reload the model)")
    for _, module in modules:
        _fold(module, merge)
        module.ia3_merged = merge
    return len(modules)


register(
    MethodEntry(
        "ia3",
        Ia3Config,
        apply_ia3,
        flag_prefix="ia3",
        description="(IA)^3: learned scaling of keys, values and the FFN activation at chosen layers",
        merge=lambda model: fold_ia3(model, merge=True),
        unmerge=lambda model: fold_ia3(model, merge=False),
        multiplicative=True,
        search_space={"learning_rate": {"loguniform": [1e-3, 3e-2]}},
        default_lr=1e-2,  # scripts/ia3_hyper.sh
    )
)

"""Prefix tuning (Li & Liang 2021): P learned key/value vectors prepended at chosen layers.

How it is attached without forking any modeling code: a pre-hook on the layer's self-attention
module prepends P placeholder rows to its input and widens the attention mask (and MPNet's
relative position bias) to P + T; hooks on the k and v projections replace the placeholder rows by
the learned prefix; a post-hook drops the P extra output rows. Real tokens therefore attend to
[prefix; tokens] exactly as with past key/values, on models with or without `past_key_values`.

Positions: by default real tokens keep positions 0..T-1. `shift_positions` starts them at P, as
PEFT and P-tuning v2 do when they pass the prefix as past key/values.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from petl.arch import backbone_of, get_module
from petl.errors import PetlError
from petl.methods.hooks import arch_for, bind_arguments, chosen_layers, layer_module, owned_parameters
from petl.registry import MethodConfig, MethodEntry, register


@dataclass
class PrefixConfig(MethodConfig):
    length: int = 10
    layers: str = "all"
    mlp_dim: int = 0
    shift_positions: bool = False

    def validate(self) -> None:
        if self.length < 1:
            raise PetlError(f"--prefix_length {self.length} is invalid; allowed: >= 1")
        if self.mlp_dim < 0:
            raise PetlError(f"--prefix_mlp_dim {self.mlp_dim} is invalid; allowed: 0 (direct) or > 0")


class Prefix(nn.Module):
    """Per-layer prefix: direct key/value tables, or Li & Liang's MLP over a learned embedding."""

    def __init__(self, length: int, hidden: int, mlp_dim: int, std: float):
        super().__init__()
        self.length = length
        if mlp_dim > 0:
            self.embedding = nn.Parameter(torch.randn(length, hidden) * std)
            self.mlp = nn.Sequential(nn.Linear(hidden, mlp_dim), nn.Tanh(), nn.Linear(mlp_dim, 2 * hidden))
        else:
            self.key = nn.Parameter(torch.randn(length, hidden) * std)
            self.value = nn.Parameter(torch.randn(length, hidden) * std)
        self.current: tuple[torch.Tensor, torch.Tensor] | None = None

    def key_value(self) -> tuple[torch.Tensor, torch.Tensor]:
        if hasattr(self, "mlp"):
            return self.mlp(self.embedding).chunk(2, dim=-1)
        return self.key, self.value

    @torch.no_grad()
    def drop_mlp(self) -> None:
        """Replace the reparameterisation by the prefixes it produces (after training)."""
        if not hasattr(self, "mlp"):
            return
        k, v = self.key_value()
        del self.mlp, self.embedding
        self.key, self.value = nn.Parameter(k.clone()), nn.Parameter(v.clone())


def _pad_mask(mask: torch.Tensor | None, p: int, t: int) -> torch.Tensor | None:
    if mask is None:
        return None
    attend = True if mask.dtype == torch.bool else 0.0
    if mask.dim() == 2:  # (B, T) keep-mask
        return torch.cat([mask.new_ones(mask.shape[0], p), mask], dim=1)
    cols = torch.full((*mask.shape[:-1], p), attend, dtype=mask.dtype, device=mask.device)
    mask = torch.cat([cols, mask], dim=-1)
    if mask.shape[-2] == t:  # one row per query: the placeholder rows attend everywhere
        rows = torch.full((*mask.shape[:-2], p, mask.shape[-1]), attend, dtype=mask.dtype, device=mask.device)
        mask = torch.cat([rows, mask], dim=-2)
    return mask


def _attention_pre_hook(bias_arg: str | None):
    def hook(module, args, kwargs):
        prefix: Prefix = module.prefix
        bound = bind_arguments(module, args, kwargs)
        hidden = bound.arguments["hidden_states"]
        b, t, _ = hidden.shape
        p = prefix.length
        bound.arguments["hidden_states"] = torch.cat([hidden.new_zeros(b, p, hidden.shape[-1]), hidden], dim=1)
        if "attention_mask" in bound.arguments:
            bound.arguments["attention_mask"] = _pad_mask(bound.arguments["attention_mask"], p, t)
        if bias_arg and bound.arguments.get(bias_arg) is not None:
            bias = bound.arguments[bias_arg]
            bound.arguments[bias_arg] = nn.functional.pad(bias, (p, 0, p, 0))
        k, v = prefix.key_value()
        prefix.current = (k.to(hidden.dtype), v.to(hidden.dtype))
        return bound.args, bound.kwargs

    return hook


def _replace_rows(which: int):
    def hook(module, args, output):
        prefix: Prefix = module.petl_prefix_owner.prefix
        table = prefix.current[which]
        p = prefix.length
        return torch.cat([table.unsqueeze(0).expand(output.shape[0], -1, -1), output[:, p:]], dim=1)

    return hook


def _attention_post_hook(module, args, output):
    p = module.prefix.length
    module.prefix.current = None
    if isinstance(output, tuple):
        first = output[0][:, p:]
        rest = tuple(o[..., p:, p:] if torch.is_tensor(o) and o.dim() == 4 else o for o in output[1:])
        return (first, *rest)
    return output[:, p:]


def _shift_positions_hook(length: int):
    """Start real tokens' positions at `length` (PEFT's past-key-values behaviour)."""

    def hook(module, args, kwargs):
        bound = bind_arguments(module, args, kwargs)
        params = inspect.signature(module.forward).parameters
        if "past_key_values_length" in params:  # BERT, RoBERTa
            bound.arguments["past_key_values_length"] = length
        elif "position_ids" in params and bound.arguments.get("position_ids") is None:
            input_ids = bound.arguments.get("input_ids")
            if input_ids is None:
                raise PetlError("prefix_shift_positions needs input_ids on this architecture")
            pad = getattr(module, "padding_idx", None)
            if pad is None:
                positions = torch.arange(length, length + input_ids.shape[1], device=input_ids.device)
                bound.arguments["position_ids"] = positions.expand_as(input_ids)
            else:
                keep = input_ids.ne(pad).long()
                bound.arguments["position_ids"] = (torch.cumsum(keep, dim=1) + length) * keep + pad
        else:
            raise PetlError("prefix_shift_positions is not supported for this architecture's embeddings")
        return bound.args, bound.kwargs

    return hook


def apply_prefix(model: nn.Module, config: PrefixConfig) -> dict[str, int | None]:
    arch = arch_for(model)
    hidden = model.config.hidden_size
    std = getattr(model.config, "initializer_range", 0.02)
    owned = {}
    for layer in chosen_layers(model, config.layers, "prefix_layers"):
        attn = layer_module(model, layer, arch.self_attn)
        attn.prefix = Prefix(config.length, hidden, config.mlp_dim, std).to(next(attn.parameters()).device)
        for i, path in enumerate((arch.k, arch.v)):
            proj = layer_module(model, layer, path)
            object.__setattr__(proj, "petl_prefix_owner", attn)  # plain reference, not a submodule
            proj.register_forward_hook(_replace_rows(i))
        attn.register_forward_pre_hook(_attention_pre_hook(arch.position_bias_arg), with_kwargs=True)
        attn.register_forward_hook(_attention_post_hook)
        for p in attn.prefix.parameters():
            p.petl_no_decay = True
        owned.update(owned_parameters(model, attn, layer, ("prefix",)))
    if config.shift_positions:
        embeddings = get_module(backbone_of(model), arch.embeddings)
        embeddings.register_forward_pre_hook(_shift_positions_hook(config.length), with_kwargs=True)
    return owned


register(MethodEntry("prefix", PrefixConfig, apply_prefix, flag_prefix="prefix", description="learned key/value prefixes at chosen layers"))

"""Prefix tuning (Li & Liang 2021): P learned key/value vectors prepended at chosen layers.

How it is attached without forking any modeling code, in one of two ways:
- attention modules that take `past_key_values` (BERT, RoBERTa, GPT-2, Llama): a pre-hook passes a
  one-layer key/value store whose `update` prepends the prefix to the keys and values, and widens
  the attention mask's key axis to P + T (for decoders, whose mask may be None = "causal", it
  builds the causal mask with P always-visible prefix columns). Queries stay T rows: the cost is
  PEFT's. Under grouped-query attention the prefix has one key/value per key/value head.
- others (MPNet): a pre-hook prepends P placeholder rows to the input and widens the mask (and
  MPNet's relative position bias) to P + T; hooks on the k and v projections replace the
  placeholder rows by the prefix; a post-hook drops the P extra output rows.
Either way real tokens attend to [prefix; tokens] exactly as with past key/values.

Positions: by default real tokens keep positions 0..T-1. `shift_positions` starts them at P, as
PEFT and P-tuning v2 do when they pass the prefix as past key/values. (Llama's rotary positions
are applied to the real keys before the prefix joins them; prefix keys are learned as they are.)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from petl.arch import arch_for, attention_geometry, backbone_of, get_module, layer_module
from petl.errors import PetlError
from petl.layers import check_layer_spec
from petl.methods.forward_args import bind_arguments, unbind
from petl.methods.targets import chosen_layers, owned_parameters
from petl.registry import MethodConfig, MethodEntry, option, register


@dataclass
class PrefixConfig(MethodConfig):
    length: int = option(10, "Number of prefix key/value vectors per layer.")
    layers: str = option("all", "Layers that get prefixes.")
    mlp_dim: int = option(0, "0: direct prefixes; >0: reparameterisation MLP width.")
    shift_positions: bool = option(False, "Real tokens' positions start at prefix_length (PEFT/P-tuning v2).")

    def validate(self) -> None:
        if self.length < 1:
            raise PetlError(f"--prefix_length {self.length} is invalid; allowed: >= 1")
        if self.mlp_dim < 0:
            raise PetlError(f"--prefix_mlp_dim {self.mlp_dim} is invalid; allowed: 0 (direct) or > 0")
        check_layer_spec(self.layers, "prefix_layers")


class Prefix(nn.Module):
    """Per-layer prefix: direct key/value tables, or Li & Liang's MLP over a learned embedding."""

    def __init__(self, length: int, hidden: int, mlp_dim: int, std: float, kv_dim: int | None = None):
        super().__init__()
        self.length = length
        kv_dim = kv_dim or hidden  # key/value width: smaller than hidden under grouped-query attention
        if mlp_dim > 0:
            self.embedding = nn.Parameter(torch.randn(length, hidden) * std)
            self.mlp = nn.Sequential(nn.Linear(hidden, mlp_dim), nn.Tanh(), nn.Linear(mlp_dim, 2 * kv_dim))
        else:
            self.key = nn.Parameter(torch.randn(length, kv_dim) * std)
            self.value = nn.Parameter(torch.randn(length, kv_dim) * std)
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


def drop_prefix_mlps(model: nn.Module) -> int:
    """After training: replace every prefix's MLP by the key/value tables it produces (logits unchanged),
    and say so in the model's state, so `save_petl` writes only the tables, with a config (`mlp_dim` 0)
    that rebuilds them. Returns how many prefixes changed."""
    from dataclasses import replace

    from petl.state import attach_state

    state = attach_state(model)
    with_mlp = [(name, m) for name, m in model.named_modules() if isinstance(m, Prefix) and hasattr(m, "mlp")]
    for name, prefix in with_mlp:
        layer = state.owner.pop(f"{name}.embedding")[1]
        for stale in [n for n in state.owner if n.startswith(f"{name}.mlp.")]:
            del state.owner[stale]
        prefix.drop_mlp()
        for attr in ("key", "value"):
            getattr(prefix, attr).petl_no_decay = True
            state.owner[f"{name}.{attr}"] = ("prefix", layer)
    if with_mlp:
        state.methods = [replace(c, mlp_dim=0) if isinstance(c, PrefixConfig) else c for c in state.methods]
    return len(with_mlp)


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


class PrefixKeyValues:
    """Duck-typed stand-in for a transformers Cache holding one layer's prefix: `update` returns
    [prefix; keys] and [prefix; values] and stores nothing."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor):
        self.key, self.value = key, value  # (heads, P, head_dim)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        b = key_states.shape[0]
        k = self.key.to(key_states.dtype).unsqueeze(0).expand(b, -1, -1, -1)
        v = self.value.to(value_states.dtype).unsqueeze(0).expand(b, -1, -1, -1)
        return torch.cat([k, key_states], dim=2), torch.cat([v, value_states], dim=2)

    def get_seq_length(self, *args, **kwargs) -> int:
        return 0


def _pad_key_axis(mask: torch.Tensor | None, p: int) -> torch.Tensor | None:
    """Let every query attend to the P prefix keys: widen only the last (key) axis."""
    if mask is None:
        return None
    attend = True if mask.dtype == torch.bool else (1 if mask.dim() == 2 else 0.0)
    cols = torch.full((*mask.shape[:-1], p), attend, dtype=mask.dtype, device=mask.device)
    return torch.cat([cols, mask], dim=-1)


def _head_dim(attn: nn.Module) -> int | None:
    return getattr(attn, "attention_head_size", None) or getattr(attn, "head_dim", None)


def _causal_mask_with_prefix(hidden: torch.Tensor, p: int) -> torch.Tensor:
    """(1, 1, T, P + T) boolean mask: every query sees the P prefix keys and the tokens up to itself."""
    t = hidden.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=hidden.device).tril()
    return torch.cat([causal.new_ones(t, p), causal], dim=1)[None, None]


def _kv_store_pre_hook(causal: bool):
    def hook(module, args, kwargs):
        prefix: Prefix = module.prefix
        bound = bind_arguments(module, args, kwargs)
        hidden = bound.arguments["hidden_states"]
        k, v = prefix.key_value()
        head_dim = _head_dim(module)
        heads = k.shape[-1] // head_dim
        as_heads = lambda x: x.view(prefix.length, heads, head_dim).transpose(0, 1)  # noqa: E731
        bound.arguments["past_key_values"] = PrefixKeyValues(as_heads(k.to(hidden.dtype)), as_heads(v.to(hidden.dtype)))
        mask = bound.arguments.get("attention_mask")
        if mask is None and causal:  # None means "causal" to a decoder's attention; with a prefix it must be explicit
            bound.arguments["attention_mask"] = _causal_mask_with_prefix(hidden, prefix.length)
        elif mask is not None:
            bound.arguments["attention_mask"] = _pad_key_axis(mask, prefix.length)
        return unbind(bound)

    return hook


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
        return unbind(bound)

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
        return unbind(bound)

    return hook


def _takes_key_value_store(attn: nn.Module) -> bool:
    return "past_key_values" in inspect.signature(attn.forward).parameters and _head_dim(attn) is not None


def _decoder_positions_hook(length: int):
    """Decoders: real tokens at positions P..P+T-1, as when the prefix is a real key/value cache."""

    def hook(module, args, kwargs):
        bound = bind_arguments(module, args, kwargs)
        if bound.arguments.get("position_ids") is None:
            ids, embeds = bound.arguments.get("input_ids"), bound.arguments.get("inputs_embeds")
            ref = ids if ids is not None else embeds
            t = ref.shape[1]
            bound.arguments["position_ids"] = torch.arange(length, length + t, device=ref.device).unsqueeze(0).expand(ref.shape[0], -1)
        return unbind(bound)

    return hook


def apply_prefix(model: nn.Module, config: PrefixConfig) -> dict[str, int | None]:
    arch = arch_for(model)
    hidden = model.config.hidden_size
    _, kv_heads, head_dim = attention_geometry(model.config)
    std = getattr(model.config, "initializer_range", 0.02)
    owned = {}
    for layer in chosen_layers(model, config.layers, "prefix_layers"):
        attn = layer_module(model, layer, arch.self_attn)
        attn.prefix = Prefix(config.length, hidden, config.mlp_dim, std, kv_heads * head_dim).to(next(attn.parameters()).device)
        if _takes_key_value_store(attn):
            attn.register_forward_pre_hook(_kv_store_pre_hook(arch.decoder), with_kwargs=True)
        elif arch.decoder:
            raise PetlError(f"prefix tuning: {type(attn).__name__} takes no past_key_values; this decoder is not supported")
        else:
            for i, path in enumerate((arch.k, arch.v)):
                proj = layer_module(model, layer, path)
                object.__setattr__(proj, "petl_prefix_owner", attn)  # plain reference, not a submodule
                proj.register_forward_hook(_replace_rows(i))
            attn.register_forward_pre_hook(_attention_pre_hook(arch.position_bias_arg), with_kwargs=True)
            attn.register_forward_hook(_attention_post_hook)
        for p in attn.prefix.parameters():
            p.petl_no_decay = True
        owned.update(owned_parameters(model, attn, layer, ("prefix",)))
    if config.shift_positions and arch.decoder:
        backbone_of(model).register_forward_pre_hook(_decoder_positions_hook(config.length), with_kwargs=True)
    elif config.shift_positions:
        embeddings = get_module(backbone_of(model), arch.embeddings)
        embeddings.register_forward_pre_hook(_shift_positions_hook(config.length), with_kwargs=True)
    return owned


register(
    MethodEntry(
        "prefix",
        PrefixConfig,
        apply_prefix,
        flag_prefix="prefix",
        description="learned key/value prefixes at chosen layers",
        search_space={"learning_rate": {"loguniform": [1e-3, 1e-1]}, "prefix_length": {"choice": [5, 10, 20]}},
        default_lr=5e-3,  # scripts/prefix_hyper.sh
    )
)

"""Bottleneck adapters: serial (Houlsby 2019, Pfeiffer 2021) and parallel (He et al. 2022).

serial:   y = o(x);  y <- y + s * up(act(down(LN?(y))))        (after the block's output projection)
parallel: y = o(x);  y <- y + s * up(act(down(LN?(h))))        (h: the block's input)
With `init=identity` the up-projection starts at zero, so the model is exactly the base model at step 0.
Presets: houlsby (serial, attn+ffn), pfeiffer (serial, ffn), parallel (parallel, ffn).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from petl.arch import arch_for, layer_module
from petl.errors import PetlError
from petl.layers import check_layer_spec
from petl.methods.targets import chosen_layers, owned_parameters, parse_targets
from petl.registry import MethodConfig, MethodEntry, option, register

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "tanh": nn.Tanh}
PLACEMENTS = ("ffn", "attn")


@dataclass
class AdapterConfig(MethodConfig):
    style: str = option("serial", "serial or parallel.")
    placement: str = option("ffn", "ffn, attn, or ffn,attn.")
    dim: int = option(64, "Bottleneck size, 1 up to the FFN's width (over-complete above hidden).")
    activation: str = option("relu", "relu, gelu, swish or tanh.")
    scaling: str = option("1.0", "Output scale: a number, or 'learned'.")
    layernorm: bool = option(False, "LayerNorm on the adapter input (origin paper).")
    layernorm_affine: bool = option(True, "Affine parameters for that LayerNorm.")
    init: str = option("identity", "identity (zero up-projection) or default.")
    layers: str = option("all", "Layers that get adapters.")

    def validate(self) -> None:
        if self.style not in ("serial", "parallel"):
            raise PetlError(f"--adapter_style {self.style!r} is not one of serial, parallel")
        parse_targets(self.placement, PLACEMENTS, "adapter_placement")
        if self.dim < 1:
            raise PetlError(f"--adapter_dim {self.dim} is invalid; allowed: 1..the FFN's width")
        if self.activation not in ACTIVATIONS:
            raise PetlError(f"--adapter_activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.init not in ("identity", "default"):
            raise PetlError(f"--adapter_init {self.init!r} is not one of identity, default")
        if str(self.scaling) != "learned":
            try:
                scale = float(self.scaling)
            except ValueError:
                raise PetlError(f"--adapter_scaling {self.scaling!r} is neither a number nor 'learned'") from None
            if not math.isfinite(scale):
                raise PetlError(f"--adapter_scaling {self.scaling!r} is not finite; allowed: a finite number or 'learned'")
        check_layer_spec(self.layers, "adapter_layers")


class BottleneckAdapter(nn.Module):
    def __init__(self, hidden: int, config: AdapterConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(hidden, elementwise_affine=config.layernorm_affine) if config.layernorm else None
        self.down = nn.Linear(hidden, config.dim)
        self.act = ACTIVATIONS[config.activation]()
        self.up = nn.Linear(config.dim, hidden)
        if str(config.scaling) == "learned":
            self.scale = nn.Parameter(torch.ones(1))
        else:
            self.register_buffer("scale", torch.tensor(float(config.scaling)), persistent=False)
        if config.init == "identity":
            nn.init.normal_(self.down.weight, std=0.02)
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        self.stash: torch.Tensor | None = None  # parallel style: the block input of the current call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer_norm(x) if self.layer_norm is not None else x
        return self.up(self.act(self.down(h))) * self.scale


def _serial_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + module.adapter(output)


def _parallel_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    adapter = module.adapter
    source, adapter.stash = adapter.stash, None
    if source is None:
        raise RuntimeError("parallel adapter: the block input was not captured")
    return output + adapter(source)


def _stash_input(adapter: BottleneckAdapter):
    def hook(module, args, kwargs):
        adapter.stash = args[0] if args else kwargs["hidden_states"]

    return hook


def _ffn_width(model: nn.Module, arch) -> int:
    """Input width of the FFN's output projection (nn.Linear, or GPT-2's transposed Conv1D)."""
    host = layer_module(model, 0, arch.ffn_out)
    return host.in_features if isinstance(host, nn.Linear) else host.weight.shape[0]


def apply_adapter(model: nn.Module, config: AdapterConfig) -> dict[str, int | None]:
    arch = arch_for(model)
    hidden = model.config.hidden_size
    # a bottleneck wider than the hidden size is over-complete but meaningful (the origin paper scales
    # adapters up to the FFN's width, 3072 on base models); wider than the FFN itself is not
    widest = max(hidden, _ffn_width(model, arch))
    if config.dim > widest:
        raise PetlError(f"--adapter_dim {config.dim} is larger than the FFN's width; allowed: 1..{widest}")
    owned = {}
    for layer in chosen_layers(model, config.layers, "adapter_layers"):
        for place in parse_targets(config.placement, PLACEMENTS, "adapter_placement"):
            host = layer_module(model, layer, arch.o if place == "attn" else arch.ffn_out)
            adapter = BottleneckAdapter(hidden, config).to(host.weight.device)
            host.adapter = adapter
            if config.style == "serial":
                host.register_forward_hook(_serial_hook)
            else:
                block = layer_module(model, layer, arch.attn_block if place == "attn" else arch.ffn_block)
                block.register_forward_pre_hook(_stash_input(adapter), with_kwargs=True)
                host.register_forward_hook(_parallel_hook)
            owned.update(owned_parameters(model, host, layer, ("adapter",)))
    return owned


# adapter and its presets form one group (one adapter method per run) and search the same knobs
ADAPTER_LR = 1e-3  # scripts/adapter_hyper.sh
ADAPTER_SPACE = {"learning_rate": {"loguniform": [1e-4, 1e-2]}, "adapter_dim": {"choice": [16, 32, 64]}}

register(
    MethodEntry(
        "adapter",
        AdapterConfig,
        apply_adapter,
        flag_prefix="adapter",
        group="adapter",
        search_space=ADAPTER_SPACE,
        default_lr=ADAPTER_LR,
        description="bottleneck adapters, serial or parallel, after attention and/or FFN",
    )
)
register(
    MethodEntry(
        "houlsby",
        AdapterConfig,
        apply_adapter,
        flag_prefix="adapter",
        group="adapter",
        search_space=ADAPTER_SPACE,
        default_lr=ADAPTER_LR,
        preset={"style": "serial", "placement": "attn,ffn"},
        description="Houlsby adapters: serial, after attention and after FFN",
    )
)
register(
    MethodEntry(
        "pfeiffer",
        AdapterConfig,
        apply_adapter,
        flag_prefix="adapter",
        group="adapter",
        search_space=ADAPTER_SPACE,
        default_lr=ADAPTER_LR,
        preset={"style": "serial", "placement": "ffn"},
        description="Pfeiffer adapters: serial, after FFN",
    )
)
register(
    MethodEntry(
        "parallel",
        AdapterConfig,
        apply_adapter,
        flag_prefix="adapter",
        group="adapter",
        search_space=ADAPTER_SPACE,
        default_lr=ADAPTER_LR,
        preset={"style": "parallel", "placement": "ffn"},
        description="parallel FFN adapter (He et al. 2022)",
    )
)

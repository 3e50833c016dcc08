"""Method flags. Each method's config field `f` is the flag `--<prefix>_<f>` (see petl.registry);
a flag whose method is not selected is an error, never silently ignored."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, fields

from petl.errors import PetlError


@dataclass
class PetlArguments:
    method: str = field(
        default="full",
        metadata={
            "help": "Comma-separated methods: full, head, ffn, bitfit, lora, adapter, houlsby, pfeiffer, "
            "parallel, prefix, prompt, ptuning, idpg (e.g. adapter,lora)."
        },
    )
    load_petl: str | None = field(default=None, metadata={"help": "Restore a saved delta (folder) before eval/predict."})
    export_peft: str | None = field(default=None, metadata={"help": "Write LoRA in PEFT's adapter format here."})
    dry_run: bool = field(default=False, metadata={"help": "Print the parameter report and exit without training."})
    # ffn
    ffn_layers: str = field(default="all", metadata={"help": "Layers whose FFN trains (e.g. 5, 0,3, 8-11, all)."})
    ffn_include_layernorm: bool = field(default=False, metadata={"help": "Also train the FFN LayerNorm."})
    # lora
    lora_targets: str = field(default="q,v", metadata={"help": "Subset of q,k,v,o,ffn_in,ffn_out."})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha; the update is scaled by alpha/rank."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_layers: str = field(default="all", metadata={"help": "Layers that get LoRA."})
    # adapters (also used by the houlsby, pfeiffer and parallel presets)
    adapter_style: str = field(default="serial", metadata={"help": "serial or parallel."})
    adapter_placement: str = field(default="ffn", metadata={"help": "ffn, attn, or ffn,attn."})
    adapter_dim: int = field(default=64, metadata={"help": "Bottleneck size, 1 up to the FFN's width (over-complete above hidden)."})
    adapter_activation: str = field(default="relu", metadata={"help": "relu, gelu, swish or tanh."})
    adapter_scaling: str = field(default="1.0", metadata={"help": "Output scale: a number, or 'learned'."})
    adapter_layernorm: bool = field(default=False, metadata={"help": "LayerNorm on the adapter input (origin paper)."})
    adapter_layernorm_affine: bool = field(default=True, metadata={"help": "Affine parameters for that LayerNorm."})
    adapter_init: str = field(default="identity", metadata={"help": "identity (zero up-projection) or default."})
    adapter_layers: str = field(default="all", metadata={"help": "Layers that get adapters."})
    # bitfit
    bitfit_targets: str = field(default="q,k,v,o,ffn_in,ffn_out,attn_ln,ffn_ln", metadata={"help": "Biases that get a trained delta."})
    bitfit_layers: str = field(default="all", metadata={"help": "Layers that get BitFit."})
    # prefix tuning
    prefix_length: int = field(default=10, metadata={"help": "Number of prefix key/value vectors per layer."})
    prefix_layers: str = field(default="all", metadata={"help": "Layers that get prefixes."})
    prefix_mlp_dim: int = field(default=0, metadata={"help": "0: direct prefixes; >0: reparameterisation MLP width."})
    prefix_shift_positions: bool = field(
        default=False, metadata={"help": "Real tokens' positions start at prefix_length (PEFT/P-tuning v2)."}
    )
    # prompt tuning
    prompt_length: int = field(default=10, metadata={"help": "Number of soft prompt tokens."})
    prompt_init: str = field(default="random", metadata={"help": "random, vocab, or text."})
    prompt_init_text: str = field(default="", metadata={"help": "Text whose token embeddings initialise prompts."})
    prompt_position: str = field(
        default="auto",
        metadata={"help": "after_cls: after the first token; start: before it (as PEFT); auto: after_cls, start on decoders."},
    )
    # P-tuning
    ptuning_length: int = field(default=10, metadata={"help": "Number of prompt vectors."})
    ptuning_hidden: int = field(default=0, metadata={"help": "BiLSTM hidden size per direction (0: model hidden // 2)."})
    ptuning_position: str = field(default="auto", metadata={"help": "Where prompts go: auto, after_cls, start."})
    # IDPG
    idpg_encoder: str = field(default="minilm-l6", metadata={"help": "Sentence encoder: packaged alias, local folder or hub id."})
    idpg_pooling: str = field(default="avg", metadata={"help": "Encoder pooling: cls, avg or last."})
    idpg_hidden: int = field(default=256, metadata={"help": "Generator bottleneck width."})
    idpg_prompt_length: int = field(default=5, metadata={"help": "Prompt vectors generated per input."})
    idpg_variant: str = field(
        default="original",
        metadata={"help": "original (frozen encoder), trained (encoder trains), prompt_only (one shared prompt), reparam (no encoder)."},
    )
    idpg_position: str = field(default="auto", metadata={"help": "Where prompts go: auto, after_cls, start."})

    def method_names(self) -> list[str]:
        from petl.core import parse_methods, validate_combination

        names = parse_methods(self.method)
        validate_combination(names)
        return names

    def method_configs(self, given: Collection[str] = ()) -> list:
        """Build one config per selected method from the flags; reject flags of unselected methods.
        `given`: the argument names set explicitly (command line, args file). Such a flag is refused
        even at its default value (`--method adapter --lora_rank 8`), and so is one that a preset
        fixes to another value; without `given`, only values differing from the defaults are seen."""
        from petl.registry import METHODS, get_method, make_config

        names = self.method_names()
        defaults = {f.name: f.default for f in fields(self)}
        used_prefixes = {get_method(n).flag_prefix for n in names}
        all_prefixes = {e.flag_prefix for e in METHODS.values()}
        for f in fields(self):
            prefix = f.name.split("_", 1)[0]
            set_here = f.name in given or getattr(self, f.name) != defaults[f.name]
            if prefix in all_prefixes and prefix not in used_prefixes and set_here:
                owners = sorted(n for n, e in METHODS.items() if e.flag_prefix == prefix)
                raise PetlError(f"--{f.name} was given but --method {self.method!r} does not use it (it belongs to {', '.join(owners)})")
        configs = []
        for name in names:
            entry = get_method(name)
            values = {}
            for cf in fields(entry.config_cls):
                if cf.name == "method":
                    continue
                flag = f"{entry.flag_prefix}_{cf.name}"
                value = getattr(self, flag)
                if cf.name in entry.preset:
                    if (value != defaults[flag] or flag in given) and value != entry.preset[cf.name]:
                        raise PetlError(f"--{flag} {value!r} conflicts with --method {name}, which fixes it to {entry.preset[cf.name]!r}")
                    continue
                values[cf.name] = value
            configs.append(make_config(name, **values))
        return configs

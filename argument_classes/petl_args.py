"""Method flags. Each method's config field `f` is the flag `--<prefix>_<f>` (see petl.registry);
a flag whose method is not selected is an error, never silently ignored."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, fields

import petl.methods  # noqa: F401 - registers every method, whose configs give the flags' defaults and help
from petl.errors import PetlError
from petl.registry import METHODS, option_field


@dataclass
class PetlArguments:
    method: str = field(default="full", metadata={"help": f"Comma-separated methods: {', '.join(METHODS)} (e.g. adapter,lora)."})
    load_petl: str | None = field(default=None, metadata={"help": "Restore a saved delta (folder) before eval/predict."})
    export_peft: str | None = field(
        default=None,
        metadata={
            "help": "Write the trained LoRA, prefix (needs --prefix_shift_positions) or prompt (needs --prompt_position start) "
            "in PEFT's adapter format here (with --pooler_type model)."
        },
    )
    load_peft: str | None = field(
        default=None,
        metadata={
            "help": "Load a PEFT adapter folder (LoRA, prefix or prompt tuning, from PEFT's save_pretrained) in place of "
            "--method: evaluate it, or train on from it with --do_train."
        },
    )
    merge_and_save: str | None = field(
        default=None,
        metadata={
            "help": "After the run, fold LoRA, BitFit and IA3 into the base weights and save a plain HF model (with the "
            "tokenizer) in this new folder (with --pooler_type model)."
        },
    )
    dry_run: bool = field(default=False, metadata={"help": "Print the parameter report and exit without training."})
    # One flag per method option: name and type here, default and help from the config in petl/methods/<method>.py
    # (tests/test_registry.py checks that the two agree and that no option lacks its flag).
    # ffn
    ffn_layers: str = option_field("ffn", "layers")
    ffn_include_layernorm: bool = option_field("ffn", "include_layernorm")
    # lora
    lora_targets: str = option_field("lora", "targets")
    lora_rank: int = option_field("lora", "rank")
    lora_alpha: float = option_field("lora", "alpha")
    lora_dropout: float = option_field("lora", "dropout")
    lora_layers: str = option_field("lora", "layers")
    # adapters (also used by the houlsby, pfeiffer and parallel presets)
    adapter_style: str = option_field("adapter", "style")
    adapter_placement: str = option_field("adapter", "placement")
    adapter_dim: int = option_field("adapter", "dim")
    adapter_activation: str = option_field("adapter", "activation")
    adapter_scaling: str = option_field("adapter", "scaling")
    adapter_layernorm: bool = option_field("adapter", "layernorm")
    adapter_layernorm_affine: bool = option_field("adapter", "layernorm_affine")
    adapter_init: str = option_field("adapter", "init")
    adapter_layers: str = option_field("adapter", "layers")
    # bitfit
    bitfit_targets: str = option_field("bitfit", "targets")
    bitfit_layers: str = option_field("bitfit", "layers")
    # prefix tuning
    prefix_length: int = option_field("prefix", "length")
    prefix_layers: str = option_field("prefix", "layers")
    prefix_mlp_dim: int = option_field("prefix", "mlp_dim")
    prefix_shift_positions: bool = option_field("prefix", "shift_positions")
    # prompt tuning
    prompt_length: int = option_field("prompt", "length")
    prompt_init: str = option_field("prompt", "init")
    prompt_init_text: str = option_field("prompt", "init_text")
    prompt_position: str = option_field("prompt", "position")
    # P-tuning
    ptuning_length: int = option_field("ptuning", "length")
    ptuning_hidden: int = option_field("ptuning", "hidden")
    ptuning_position: str = option_field("ptuning", "position")
    # IDPG
    idpg_encoder: str = option_field("idpg", "encoder")
    idpg_pooling: str = option_field("idpg", "pooling")
    idpg_hidden: int = option_field("idpg", "hidden")
    idpg_prompt_length: int = option_field("idpg", "prompt_length")
    idpg_variant: str = option_field("idpg", "variant")
    idpg_position: str = option_field("idpg", "position")
    # IA3
    ia3_targets: str = option_field("ia3", "targets")
    ia3_layers: str = option_field("ia3", "layers")

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

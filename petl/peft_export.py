"""Write a trained LoRA, prefix or prompt in PEFT's adapter format (`adapter_config.json`, written by
PEFT's own config class, and `adapter_model.safetensors` with PEFT's tensor names), so that
`peft.PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base, ...), folder)`
gives our logits. The trained head is saved as PEFT's `modules_to_save`.

Only the settings tested logit-identical to PEFT export (tests/test_peft_oracle.py): prefix tuning
with `--prefix_shift_positions` on every layer (PEFT passes the prefix as past key/values, so real
tokens' positions start after it), prompt tuning with `--prompt_position start` (PEFT puts the
prompt before the first token). Anything else is refused with the setting that makes it exportable.

`base_model_name_or_path` is an id others can resolve: a packaged alias is written as its origin
(petl.models.packaged_origin), a local folder as its absolute path. `petl_export.json` beside the
adapter records what PEFT's config cannot: the alias given, how its weights differ from the origin's,
and a truncated backbone (`--num_hidden_layers` below the base's), which the base must be loaded with.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from petl.errors import PetlError
from petl.methods.lora import lora_modules
from petl.models import PooledClassifier, head_module_names
from petl.state import get_state

EXPORT_INFO_FILE = "petl_export.json"
EXPORTABLE_METHODS = ("lora", "prefix", "prompt")
PEFT_TYPES = {"lora": "LORA", "prefix": "PREFIX_TUNING", "prompt": "PROMPT_TUNING"}


def check_export_methods(method_names: list[str]) -> None:
    """Before any work: one of the methods PEFT has an equal of (the head is always exported)."""
    if len(method_names) != 1 or method_names[0] not in EXPORTABLE_METHODS:
        raise PetlError(
            f"--export_peft writes one of {', '.join(EXPORTABLE_METHODS)} in PEFT's adapter format; "
            f"--method {','.join(method_names)!r} is not one of them"
        )


def resolvable_base(model_name_or_path: str) -> str:
    """What others can load: a packaged alias's hub id, a local folder's absolute path, else the hub id as given."""
    from petl.models import packaged_origin

    origin = packaged_origin(model_name_or_path)
    if origin:
        return origin
    path = Path(model_name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else model_name_or_path


def base_provenance(model_name_or_path: str, model_path: str, model: nn.Module) -> dict[str, Any]:
    """Where the base came from and how it was cut: recorded with an export or a merged model."""
    from transformers import AutoConfig

    from petl.models import packaged_origin_note

    used = int(model.config.num_hidden_layers)
    full = int(AutoConfig.from_pretrained(model_path).num_hidden_layers)
    return {
        "model_name_or_path": model_name_or_path,
        "base_model_name_or_path": resolvable_base(model_name_or_path),
        "origin_note": packaged_origin_note(model_name_or_path),
        "num_hidden_layers": used,
        "base_num_hidden_layers": full,
        "truncated": used < full,
    }


def check_exportable(model: nn.Module):
    """The one exportable method config on `model`, its settings checked; refusals name the setting to change."""
    from petl.arch import arch_for, layer_module, num_layers
    from petl.methods.prefix import _takes_key_value_store
    from petl.methods.prompt import insert_index

    if isinstance(model, PooledClassifier):
        raise PetlError("--export_peft needs --pooler_type model (PEFT loads onto the stock HF classifier)")
    configs = get_state(model).methods or []
    check_export_methods([c.method for c in configs])
    config = configs[0]
    if config.method == "lora":
        modules = lora_modules(model)
        if any(m.lora_merged for _, m in modules):
            raise PetlError("--export_peft: unmerge LoRA first (petl.unmerge_petl)")
        if any(None not in m.lora_slots for _, m in modules):
            raise PetlError(
                "--export_peft: LoRA on slots of a fused projection (GPT-2 c_attn q/k/v) has no PEFT equivalent "
                "(PEFT adapts c_attn as one matrix); export LoRA on o, ffn_in, ffn_out only"
            )
    elif config.method == "prefix":
        if not config.shift_positions:
            raise PetlError(
                "--export_peft: prefix tuning equals PEFT's only with --prefix_shift_positions (PEFT starts real tokens' "
                "positions after the prefix); train with it to export"
            )
        layers = num_layers(model)
        with_prefix = [i for i in range(layers) if hasattr(layer_module(model, i, arch_for(model).self_attn), "prefix")]
        if len(with_prefix) != layers:
            raise PetlError(
                f"--export_peft: PEFT puts a prefix on every layer, this model on layers {with_prefix}: train with --prefix_layers all"
            )
        if not _takes_key_value_store(layer_module(model, 0, arch_for(model).self_attn)):
            raise PetlError(
                f"--export_peft: PEFT passes prefixes as past key/values, which {model.config.model_type}'s attention does not take"
            )
    elif insert_index(model, config.position) != 0:
        raise PetlError(
            f"--export_peft: prompt tuning at --prompt_position {config.position} (after the first token) is not PEFT's; "
            "train with --prompt_position start to export"
        )
    return config


def pack_prefix_table(keys_and_values: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """PEFT's prefix table layout, (P, layers x 2 x key/value width): per layer its keys, then its values."""
    return torch.cat([t for pair in keys_and_values for t in pair], dim=1).contiguous()


def unpack_prefix_table(table: torch.Tensor, layers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (keys, values) of each of `layers` layers in PEFT's prefix table (the inverse of pack_prefix_table)."""
    width = table.shape[1] // (2 * layers)
    return [(table[:, 2 * i * width : (2 * i + 1) * width], table[:, (2 * i + 1) * width : (2 * i + 2) * width]) for i in range(layers)]


def _prefix_table(model: nn.Module, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """PEFT's prefix table (P, layers x 2 x key/value width): per layer its keys, then its values. A
    reparameterised prefix (--prefix_mlp_dim) is exported as the tables its MLP produces."""
    from petl.arch import arch_for, layer_module, num_layers
    from petl.methods.prefix import Prefix

    names = {id(m): n for n, m in model.named_modules() if isinstance(m, Prefix)}
    pairs = []
    for layer in range(num_layers(model)):
        prefix = layer_module(model, layer, arch_for(model).self_attn).prefix
        name = names[id(prefix)]
        if hasattr(prefix, "mlp"):
            weights = {k: state[f"{name}.mlp.{k}"] for k, _ in prefix.mlp.named_parameters()}
            with torch.no_grad():
                key, value = torch.func.functional_call(prefix.mlp, weights, (state[f"{name}.embedding"],)).chunk(2, dim=-1)
        else:
            key, value = state[f"{name}.key"], state[f"{name}.value"]
        pairs.append((key, value))
    return pack_prefix_table(pairs)


def _peft_config(model: nn.Module, config, base: str):
    from petl.arch import input_embedding_width

    try:
        import peft
    except ImportError:
        raise PetlError("--export_peft needs the peft package: pip install peft") from None
    common = {
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base or None,
        "modules_to_save": [h.split(".")[-1] for h in head_module_names(model)],
        "inference_mode": True,
    }
    if config.method == "lora":
        modules = lora_modules(model)
        ranks = {m.lora_A.out_features for _, m in modules}
        scalings = {m.lora_scaling for _, m in modules}
        if len(ranks) != 1 or len(scalings) != 1:
            raise PetlError("--export_peft needs one rank and alpha for all LoRA modules")
        rank = ranks.pop()
        first = modules[0][1]
        return peft.LoraConfig(
            r=rank,
            lora_alpha=scalings.pop() * rank,
            lora_dropout=first.lora_dropout.p if isinstance(first.lora_dropout, nn.Dropout) else 0.0,
            target_modules=[name for name, _ in modules],
            bias="none",
            fan_in_fan_out=not isinstance(first, nn.Linear),  # GPT-2's Conv1D stores weights as (in, out)
            **common,
        )
    shape = {
        "num_virtual_tokens": config.length,
        "num_layers": int(model.config.num_hidden_layers),  # the truncated count, if the backbone was cut
        # prompts sit beside the token embeddings, narrower than hidden_size on ALBERT and ELECTRA-small
        "token_dim": int(model.config.hidden_size if config.method == "prefix" else input_embedding_width(model)),
        "num_attention_heads": int(model.config.num_attention_heads),
        "num_transformer_submodules": 1,  # an encoder or a decoder, not both
    }
    if config.method == "prefix":
        return peft.PrefixTuningConfig(prefix_projection=False, encoder_hidden_size=int(model.config.hidden_size), **shape, **common)
    return peft.PromptTuningConfig(prompt_tuning_init="RANDOM", **shape, **common)


def export_peft(
    model: nn.Module,
    directory: str | os.PathLike,
    base_model_name_or_path: str = "",
    state: dict | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write the model's LoRA, prefix or prompt (and head) as a PEFT adapter folder. `state`: the
    trained tensors by parameter name when already gathered (petl_state_dict); `info` joins
    petl_export.json (base_provenance: the alias given, a truncated backbone)."""
    from petl.core import _owner, petl_state_dict
    from petl.results import publish_files, temporary_path

    config = check_exportable(model)
    base = resolvable_base(base_model_name_or_path) if base_model_name_or_path else ""
    peft_config = _peft_config(model, config, base)
    if state is None:
        state = petl_state_dict(model)
    head = [name for name, (method, _) in _owner(model).items() if method == "head"]
    if config.method == "lora":
        tensors = {f"base_model.model.{name}": state[name] for name in head}
        for name, _ in lora_modules(model):
            for part in ("lora_A", "lora_B"):
                tensors[f"base_model.model.{name}.{part}.weight"] = state[f"{name}.{part}.weight"]
    else:  # prompt learning: PEFT names the head under base_model. and the table prompt_embeddings
        tensors = {f"base_model.{name}": state[name] for name in head}
        if config.method == "prefix":
            tensors["prompt_embeddings"] = _prefix_table(model, state)
        else:
            (prompt,) = [name for name, (method, _) in _owner(model).items() if method == "prompt"]
            tensors["prompt_embeddings"] = state[prompt]
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    record = {
        "exported_by": "petl-glue",
        "peft_type": PEFT_TYPES[config.method],
        "petl_methods": [c.to_dict() for c in get_state(model).methods],
        "num_hidden_layers": int(model.config.num_hidden_layers),
        **(info or {}),
    }
    layers = record["num_hidden_layers"]
    record["load_base_with"] = (
        f"AutoModelForSequenceClassification.from_pretrained({base or '<base>'!r}, num_labels={model.config.num_labels}"
        + (f", num_hidden_layers={layers})" if record.get("truncated") else ")")
    )
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    with temporary_path(out / "peft-export", folder=True) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / EXPORT_INFO_FILE).write_text(json.dumps(record, indent=2) + "\n")
        peft_config.save_pretrained(str(tmp))
        publish_files(tmp, out, last="adapter_config.json")  # the config last: a reader finding it finds the weights
    return out

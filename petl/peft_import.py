"""Load an adapter made by PEFT (`save_pretrained`: adapter_config.json + adapter_model.safetensors)
as petl-glue methods: LoRA, prefix tuning and prompt tuning, the types with a tested petl-glue equal.

The PEFT adapter becomes the method config that computes the same thing (LoRA: the targets and layers
its tensors sit on, its rank, alpha and dropout, rsLoRA's alpha / sqrt(r) as an equal alpha; prefix
tuning: `--prefix_shift_positions` on every layer; prompt tuning: `--prompt_position start`), applied
with `apply_petl`, and PEFT's tensors are copied in, the classifier (PEFT's `modules_to_save`) too.
Evaluation then gives PEFT's logits, and training continues from them with the usual ownership
(only the method's tensors and the head train). Anything PEFT computes differently - another adapter
type, DoRA, per-module ranks, trained biases, LoRA on modules outside the architecture map - is
refused by name, never approximated.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from petl.errors import PetlError

logger = logging.getLogger(__name__)

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
LOADABLE = {"LORA": "lora", "PREFIX_TUNING": "prefix", "PROMPT_TUNING": "prompt"}
LOADABLE_TEXT = "LORA (plain or rsLoRA), PREFIX_TUNING (without prefix_projection), PROMPT_TUNING"
# LoRA settings PEFT computes differently from petl-glue's LoRA: (config key, value that is fine, what it is)
LORA_REFUSED = (
    ("use_dora", False, "use_dora=True (DoRA)"),
    ("lora_bias", False, "lora_bias=True"),
    ("bias", "none", "bias training (bias != 'none'; petl-glue trains biases with --method bitfit)"),
    ("rank_pattern", {}, "per-module ranks (rank_pattern)"),
    ("alpha_pattern", {}, "per-module alphas (alpha_pattern)"),
    ("layer_replication", None, "layer_replication"),
    ("target_parameters", None, "target_parameters"),
    ("trainable_token_indices", None, "trainable_token_indices"),
    ("use_qalora", False, "use_qalora=True"),
    ("alora_invocation_tokens", None, "aLoRA (alora_invocation_tokens)"),
)
# LoRA config keys known not to change what the saved tensors compute (bookkeeping, placement, which the
# tensors themselves decide, or settings handled above); any other key with a non-default value is refused
# by name: an initialisation such as PiSSA or OLoRA also rewrites the base weights, a newer PEFT option may
# change the forward pass, and neither is visible in the tensors.
LORA_HARMLESS_KEYS = frozenset(
    {"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision", "inference_mode", "r",
     "target_modules", "exclude_modules", "lora_alpha", "lora_dropout", "fan_in_fan_out", "use_rslora", "modules_to_save",
     "layers_to_transform", "layers_pattern", "megatron_config", "megatron_core", "runtime_config", "eva_config",
     "qalora_group_size", "ensure_weight_tying", "init_lora_weights"}
    | {key for key, _, _ in LORA_REFUSED}
)  # fmt: skip
# initialisations that only set the starting tensors (saved as they are), leaving the base weights alone
LORA_PLAIN_INITS = (True, False, "gaussian", "eva")


def _unknown_lora_setting(config: dict[str, Any]) -> str | None:
    """The first LoRA setting outside LORA_HARMLESS_KEYS whose value is not PEFT's default, as `key=value`."""
    if config.get("init_lora_weights", True) not in LORA_PLAIN_INITS:
        return (
            f"init_lora_weights={config['init_lora_weights']!r} (an initialisation that may rewrite the base weights or what trains; "
            "save it converted to plain LoRA: PEFT's save_pretrained(path_initial_model_for_weight_conversion=...))"
        )
    try:
        import dataclasses

        import peft

        defaults = {f.name: f.default for f in dataclasses.fields(peft.LoraConfig) if f.default is not dataclasses.MISSING}
    except ImportError:  # no PEFT here: only the empty values count as defaults
        defaults = {}
    for key in sorted(set(config) - LORA_HARMLESS_KEYS):
        value = config[key]
        if value in (None, False, {}, []) or (key in defaults and value == defaults[key]):
            continue
        return f"{key}={value!r} (a LoRA setting not known to keep the plain LoRA computation)"
    return None


@dataclass
class PeftAdapter:
    directory: Path
    config: dict[str, Any]
    peft_type: str
    method: str  # the petl-glue method it becomes


def read_peft_adapter(directory: str | os.PathLike) -> PeftAdapter:
    """The adapter's config, checked before any model is loaded: a type and settings petl-glue computes
    the same way, and a complete weights file."""
    from petl.core import check_safetensors_readable

    folder = Path(directory)
    where = f"--load_peft {str(directory)!r}"
    path = folder / ADAPTER_CONFIG_FILE
    if not path.is_file():
        raise PetlError(f"{where} has no {ADAPTER_CONFIG_FILE} (give the folder PEFT's save_pretrained wrote)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError, UnicodeDecodeError) as err:
        raise PetlError(f"{str(path)!r} is not readable JSON: {err}") from None
    if not isinstance(config, dict):
        raise PetlError(f"{str(path)!r}: expected a JSON object")
    peft_type = str(config.get("peft_type"))
    if peft_type not in LOADABLE:
        raise PetlError(f"{where}: PEFT adapter type {peft_type} is not supported; loadable: {LOADABLE_TEXT}")
    refused = []
    if peft_type == "LORA":
        refused = [what for key, fine, what in LORA_REFUSED if config.get(key) not in (fine, None)]
        unknown = _unknown_lora_setting(config)
        refused += [unknown] if unknown else []
        if not isinstance(config.get("r"), int) or config["r"] < 1:
            refused.append(f"r={config.get('r')!r}")
    else:
        if config.get("prefix_projection"):
            refused.append("prefix_projection=True (PEFT's shared reparameterisation MLP)")
        if config.get("num_transformer_submodules") not in (None, 1):
            refused.append(f"num_transformer_submodules={config['num_transformer_submodules']} (encoder-decoder)")
    if refused:
        raise PetlError(f"{where}: a {peft_type} adapter with {refused[0]} is not supported; loadable: {LOADABLE_TEXT}")
    weights = folder / ADAPTER_WEIGHTS_FILE
    if not weights.is_file():
        extra = " (an adapter_model.bin: save it again with safe_serialization=True)" if (folder / "adapter_model.bin").is_file() else ""
        raise PetlError(f"{where} has no {ADAPTER_WEIGHTS_FILE}{extra}")
    check_safetensors_readable(weights)
    return PeftAdapter(folder, config, peft_type, LOADABLE[peft_type])


def check_peft_arguments(petl_args, model_args, given) -> None:
    """With --load_peft the adapter fixes the method and its options, and the head is HF's own: a
    --load_petl, --method, method flag or pooled head given as well is refused (it would be ignored)."""
    from petl.registry import given_method_flags

    if petl_args.load_petl:
        raise PetlError("--load_peft and --load_petl both load a method's tensors; give one")
    if "method" in given:
        raise PetlError(f"--method {petl_args.method!r} was given with --load_peft, whose adapter fixes the method; omit --method")
    flags = given_method_flags(petl_args, given)
    if flags:
        raise PetlError(f"--{flags[0]} was given with --load_peft, whose adapter fixes every method option; omit it")
    if model_args.pooler_type not in ("auto", "model"):
        raise PetlError(
            f"--pooler_type {model_args.pooler_type!r} with --load_peft: PEFT's adapters sit on the stock HF head (--pooler_type model)"
        )


def check_base_model(adapter: PeftAdapter, model_name_or_path: str | None) -> None:
    """A warning (one line) when the adapter names another base than --model_name_or_path: the same
    weights may live under two names (a hub id and a local copy), so shapes decide, not names."""
    from petl.peft_export import resolvable_base

    recorded = adapter.config.get("base_model_name_or_path")
    if not recorded or not model_name_or_path:
        return
    ours = resolvable_base(model_name_or_path)
    same_folder = (
        Path(recorded).exists() and Path(model_name_or_path).exists() and Path(recorded).resolve() == Path(model_name_or_path).resolve()
    )
    if recorded not in (model_name_or_path, ours) and not same_folder:
        logger.warning(
            "--load_peft %s was made on base %r, but --model_name_or_path is %r (%s): its logits are PEFT's only on the same weights",
            adapter.directory,
            recorded,
            model_name_or_path,
            ours,
        )


def _rooted(model: nn.Module, lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LoRA tensors of an adapter made on the bare backbone (AutoModel: `encoder.layer.0...`), named as in the
    sequence classifier (`bert.encoder.layer.0...`); names already under the model's layers stay as they are."""
    from petl.arch import arch_for, layers_prefix

    inner = arch_for(model).layers + "."
    root = layers_prefix(model).removesuffix(inner)
    if root and lora and not any(k.startswith(root) for k in lora) and all(k.startswith(inner) for k in lora):
        return {root + k: v for k, v in lora.items()}
    return lora


def _lora_config(model: nn.Module, adapter: PeftAdapter, modules: set[str]):
    """The petl-glue LoRA config whose modules are exactly `modules` (names in the model)."""
    from petl.arch import arch_for, layers_prefix, num_layers, split_slot
    from petl.methods.lora import LORA_TARGETS
    from petl.registry import make_config

    arch = arch_for(model)
    prefix = layers_prefix(model)
    by_path = {}
    for target, paths in arch.targets().items():
        for path in paths:
            by_path[split_slot(path)[0]] = (target, split_slot(path)[1])
    where = f"--load_peft {str(adapter.directory)!r}"
    placed: set[tuple[int, str]] = set()
    for name in sorted(modules):
        layer_text, _, path = name.removeprefix(prefix).partition(".")
        if not name.startswith(prefix):
            raise PetlError(
                f"{where}: LoRA on {name}, outside this model's layers ({prefix}*): the adapter was made on a model "
                f"with another root or on modules petl-glue's LoRA does not adapt; petl-glue's LoRA targets: {', '.join(LORA_TARGETS)}"
            )
        target, slot = by_path.get(path, (None, None))
        if target is None or slot is not None:
            reason = "a fused projection PEFT adapts as one matrix" if slot else "not one of the projections petl-glue's LoRA adapts"
            raise PetlError(f"{where}: LoRA on {name} ({reason}); petl-glue's LoRA targets: {', '.join(LORA_TARGETS)}")
        placed.add((int(layer_text), path))
    layers = sorted({layer for layer, _ in placed})
    if layers[-1] >= num_layers(model):
        raise PetlError(
            f"{where}: the adapter has LoRA on layer {layers[-1]}, the model only {num_layers(model)} layers "
            "(load the base as deep as the adapter's: --num_hidden_layers)"
        )
    targets = sorted({by_path[path][0] for _, path in placed}, key=LORA_TARGETS.index)
    wanted = {(layer, split_slot(path)[0]) for layer in layers for t in targets for path in arch.targets()[t]}
    if wanted != placed:
        missing = sorted(wanted - placed)[0]
        raise PetlError(
            f"{where}: petl-glue's LoRA adapts the same projections on every chosen layer; this adapter has none on "
            f"layer {missing[0]} {missing[1]}"
        )
    r = adapter.config["r"]
    alpha = float(adapter.config.get("lora_alpha", 8))
    if adapter.config.get("use_rslora"):
        alpha = alpha * r / math.sqrt(r)  # rsLoRA scales by alpha / sqrt(r); petl-glue by alpha / r
    spec = "all" if layers == list(range(num_layers(model))) else ",".join(map(str, layers))
    return make_config(
        "lora", targets=",".join(targets), rank=r, alpha=alpha, dropout=float(adapter.config.get("lora_dropout") or 0.0), layers=spec
    )


def check_adapter_supported(model: nn.Module, adapter: PeftAdapter) -> None:
    """The architecture can host the method the adapter becomes, and (prefix tuning) PEFT's prefix ran on it:
    refused in terms of the adapter, since the user gave --load_peft, not --method."""
    from petl.arch import arch_for, layer_module
    from petl.methods.prefix import _takes_key_value_store

    kind = model.config.model_type
    where = f"--load_peft {str(adapter.directory)!r}: a {adapter.peft_type} adapter is not supported for {kind}"
    reason = arch_for(model).refused.get(adapter.method)
    if reason:
        raise PetlError(f"{where}: {reason}")
    if adapter.peft_type == "PREFIX_TUNING" and not _takes_key_value_store(layer_module(model, 0, arch_for(model).self_attn)):
        raise PetlError(f"{where}: PEFT passes prefixes as past key/values, which {kind}'s attention does not take")


def check_exported_depth(model: nn.Module, adapter: PeftAdapter) -> None:
    """An adapter petl-glue exported records the depth it was trained at (petl_export.json): a truncated
    run's adapter on the full base (or the reverse) would run, on other layers, with other logits."""
    from petl.peft_export import EXPORT_INFO_FILE

    path = adapter.directory / EXPORT_INFO_FILE
    try:
        recorded = json.loads(path.read_text()).get("num_hidden_layers") if path.is_file() else None
    except (json.JSONDecodeError, OSError, UnicodeDecodeError, AttributeError):
        raise PetlError(f"{str(path)!r} is not readable JSON (petl-glue's export record); export the adapter again") from None
    ours = int(model.config.num_hidden_layers)
    if isinstance(recorded, int) and recorded != ours:
        raise PetlError(
            f"--load_peft {str(adapter.directory)!r} was exported from a model of {recorded} layers ({EXPORT_INFO_FILE}); "
            f"this model has {ours}: pass --num_hidden_layers {recorded}"
        )


def load_peft(model: nn.Module, directory: str | os.PathLike, model_name_or_path: str | None = None) -> nn.Module:
    """Apply the petl-glue method equal to the PEFT adapter in `directory` to `model` (a stock HF
    sequence classifier, no methods applied yet) and copy PEFT's tensors in; returns the model.
    `model_name_or_path`: the base the caller loaded, compared with the adapter's (a warning)."""
    from safetensors.torch import load_file

    from petl.arch import arch_for, attention_geometry, input_embedding_width, layer_module, num_layers
    from petl.core import _owner, apply_petl, gathered
    from petl.merge import check_plain_hf_model
    from petl.peft_export import unpack_prefix_table
    from petl.registry import make_config
    from petl.state import get_state

    adapter = read_peft_adapter(directory)
    where = f"--load_peft {str(directory)!r}"
    check_plain_hf_model(model, flag="--load_peft")
    if get_state(model).applied:
        raise PetlError(f"{where}: the model already carries PETL methods; load the adapter onto a fresh model")
    check_base_model(adapter, model_name_or_path)
    check_adapter_supported(model, adapter)
    check_exported_depth(model, adapter)
    tensors = load_file(str(adapter.directory / ADAPTER_WEIGHTS_FILE))
    outer = "base_model.model." if adapter.peft_type == "LORA" else "base_model."
    head = {k.removeprefix(outer): v for k, v in tensors.items() if k.startswith(outer) and ".lora_" not in k}
    ours: dict[str, torch.Tensor] = {}
    if adapter.peft_type == "LORA":
        lora = _rooted(model, {k.removeprefix(outer): v for k, v in tensors.items() if ".lora_" in k})
        modules = {k.rsplit(".lora_", 1)[0] for k in lora}
        if not modules:
            raise PetlError(f"{where}: the LoRA adapter holds no lora_A/lora_B tensors")
        config = _lora_config(model, adapter, modules)
        ours = {k.replace(".default.", "."): v for k, v in lora.items()}
    else:
        if "prompt_embeddings" not in tensors:
            raise PetlError(f"{where}: the {adapter.peft_type} adapter holds no prompt_embeddings tensor")
        table = tensors["prompt_embeddings"]
        length = int(adapter.config.get("num_virtual_tokens") or table.shape[0])
        if table.shape[0] != length:
            raise PetlError(f"{where}: prompt_embeddings has {table.shape[0]} rows; num_virtual_tokens is {length}")
        if adapter.peft_type == "PREFIX_TUNING":
            layers = num_layers(model)
            _, kv_heads, head_dim = attention_geometry(model.config)
            width = kv_heads * head_dim
            if table.shape[1] != 2 * layers * width:
                recorded = adapter.config.get("num_layers")
                raise PetlError(
                    f"{where}: the prefix is for {recorded} layers of key/value width {table.shape[1] // (2 * (recorded or 1))}; "
                    f"the model has {layers} layers of width {width} (load the base with the adapter's --num_hidden_layers)"
                )
            config = make_config("prefix", length=length, shift_positions=True)
        else:
            if table.shape[1] != input_embedding_width(model):
                raise PetlError(
                    f"{where}: the prompt width is {table.shape[1]}; the model's token embeddings are {input_embedding_width(model)} wide"
                )
            config = make_config("prompt", length=length, position="start")
    apply_petl(model, [config])
    if adapter.peft_type == "PREFIX_TUNING":
        names = {id(m): n for n, m in model.named_modules()}
        for layer, (key, value) in enumerate(unpack_prefix_table(table, num_layers(model))):
            name = names[id(layer_module(model, layer, arch_for(model).self_attn).prefix)]
            ours[f"{name}.key"], ours[f"{name}.value"] = key, value
    elif adapter.peft_type == "PROMPT_TUNING":
        (prompt,) = [n for n, (method, _) in _owner(model).items() if method == "prompt"]
        ours[prompt] = table
    owner = _owner(model)
    head_owned = {n for n, (method, _) in owner.items() if method == "head"}
    unknown = sorted(set(head) - head_owned)
    if unknown:
        raise PetlError(f"{where}: the adapter saves {unknown[0]}, which is not the model's classifier (PEFT's modules_to_save)")
    if not head:
        logger.warning("%s holds no classifier (modules_to_save): the head starts from --seed, so the logits are not PEFT's", where)
    method_params = {n for n, (method, _) in owner.items() if method != "head"}
    if set(ours) != method_params:
        stray = sorted(set(ours) ^ method_params)[0]
        raise PetlError(f"internal: {where}: the adapter's tensors and the applied {config.method} differ at {stray}")
    params = dict(model.named_parameters())
    with torch.no_grad(), gathered([params[n] for n in {**ours, **head}], modify=True):
        for name, tensor in {**ours, **head}.items():
            if params[name].shape != tensor.shape:
                raise PetlError(
                    f"{where}: {name} has shape {tuple(tensor.shape)}; the model's is {tuple(params[name].shape)} (another base?)"
                )
            params[name].copy_(tensor.to(params[name].dtype))
    return model

"""Merge and save: fold the trained deltas into the base weights and write a plain HF model.

`merge_and_unload(model)` folds every applied method into the weights it modifies (merge_petl: LoRA's
B A, BitFit's bias deltas, IA3's scalings - the FFN one into the columns of the FFN's output
projection), then removes what the methods attached: their hooks, parameters and bookkeeping. What
is left is the model class transformers built, with exactly its own state-dict keys, so
`AutoModelForSequenceClassification.from_pretrained(folder)` loads it with nothing missing or
unexpected and the same logits. Methods that add computation no weight can hold (adapters, prefixes,
prompts, P-tuning, IDPG) are refused by name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from torch import nn

from petl.errors import PetlError
from petl.registry import METHODS, get_method
from petl.state import STATE_ATTRIBUTE, get_state

MERGE_INFO_FILE = "petl_merge.json"  # written last into the folder: what was merged, from which base
# what each foldable method attaches to the modules it touches (parameters, submodules, bookkeeping), by name prefix
METHOD_ATTRIBUTE_PREFIXES = ("lora_", "bias_delta", "ia3_")


def foldable_methods() -> list[str]:
    return [name for name, entry in METHODS.items() if entry.merge is not None]


def check_foldable(method_names: Collection[str], flag: str = "--merge_and_save") -> None:
    """Refuse, before any work, methods that cannot be folded into the base weights."""
    refused = [name for name in method_names if get_method(name).merge is None]
    if refused:
        raise PetlError(
            f"{flag}: {', '.join(refused)} cannot be folded into the base weights (it adds computation no weight holds); "
            f"methods that can: {', '.join(foldable_methods())}"
        )


def check_plain_hf_model(model: nn.Module, flag: str = "--merge_and_save") -> None:
    """The merged model must be a transformers model class `from_pretrained` rebuilds: not our pooled head."""
    from petl.models import PooledClassifier

    if isinstance(model, PooledClassifier):
        raise PetlError(
            f"{flag} needs --pooler_type model (the {model.pooler_type!r} pooled head is petl-glue's own, "
            "which AutoModelForSequenceClassification cannot load)"
        )


def _is_petl_hook(hook: Any) -> bool:
    return getattr(hook, "__module__", "").startswith("petl.")


def _strip_module(module: nn.Module) -> None:
    for hooks in (module._forward_hooks, module._forward_pre_hooks):
        for key in [k for k, hook in hooks.items() if _is_petl_hook(hook)]:
            del hooks[key]
            for extra in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs"):
                getattr(module, extra, {}).pop(key, None)
    names = set(module._parameters) | set(module._modules) | set(vars(module))
    for name in names:
        if name.startswith(METHOD_ATTRIBUTE_PREFIXES):
            delattr(module, name)


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold every applied method into the base weights and remove the methods; returns the same
    model object, now a plain transformers model (the trained head kept, every weight trainable again
    as loaded: requires_grad is left as training left it)."""
    from petl.core import merge_petl

    state = get_state(model)
    if not state.applied:
        raise PetlError("merge_and_unload: no PETL methods applied to this model; call apply_petl or load_petl first")
    check_foldable([c.method for c in state.methods], flag="merge_and_unload")
    check_plain_hf_model(model, flag="merge_and_unload")
    merge_petl(model)
    for module in model.modules():
        _strip_module(module)
    if hasattr(model, STATE_ATTRIBUTE):
        delattr(model, STATE_ATTRIBUTE)
    with torch.device("meta"):  # the keys transformers' own class has: nothing added, nothing lost
        expected = set(type(model)(model.config).state_dict())
    extra, lost = set(model.state_dict()) - expected, expected - set(model.state_dict())
    if extra or lost:
        raise PetlError(f"internal: the unloaded model has {sorted(extra)[:3]} extra and {sorted(lost)[:3]} missing keys")
    return model


def check_merge_target(directory: str | os.PathLike) -> None:
    """The folder must be new or empty: a merged model never replaces another one."""
    from petl.results import check_writable_folder

    target = Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise PetlError(f"--merge_and_save {str(target)!r} already exists and is not an empty folder; choose a new folder or remove it")
    check_writable_folder(target, "--merge_and_save")


def save_merged(model: nn.Module, directory: str | os.PathLike, tokenizer=None, info: dict[str, Any] | None = None) -> Path:
    """`merge_and_unload(model)` and `save_pretrained` into `directory` (with the tokenizer, when given),
    written in a temporary folder beside it and renamed into place once complete: a failure leaves no
    folder. `info` goes into petl_merge.json with the merged methods."""
    from petl.results import publish_folder, temporary_path

    check_merge_target(directory)
    methods = [c.to_dict() for c in get_state(model).methods or []]
    merge_and_unload(model)
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with temporary_path(target, folder=True) as tmp:
            model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            record = {"merged_methods": methods, "num_hidden_layers": int(model.config.num_hidden_layers), **(info or {})}
            (tmp / MERGE_INFO_FILE).write_text(json.dumps(record, indent=2) + "\n")
            publish_folder(tmp, target, MERGE_INFO_FILE)
    except OSError as err:
        raise PetlError(
            f"--merge_and_save {str(target)!r}: the merged model could not be written ({err.strerror or err}); nothing was left there"
        ) from None
    return target

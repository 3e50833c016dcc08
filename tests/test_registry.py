"""The registry is the one place a method is declared: its flags, merge hooks, default search space
and exclusions all follow from its entry (petl/registry.py) and its config (petl/methods/<method>.py)."""

from __future__ import annotations

import re
import typing
from dataclasses import MISSING, fields

import pytest
import torch
from conftest import clone, tiny_batch, tiny_model

from argument_classes import ArgumentParser, PetlArguments, arguments_from_dict
from petl.core import apply_petl, merge_petl, unmerge_petl, validate_combination
from petl.errors import PetlError
from petl.registry import METHODS, make_config
from petl.search import default_space, validate_space

FLAGS = {f.name: f for f in fields(PetlArguments)}
FLAG_TYPES = typing.get_type_hints(PetlArguments)
PREFIXES = {entry.flag_prefix for entry in METHODS.values()}


def method_options() -> list[tuple[str, str, object]]:
    """(method, flag, config field) for every option of every registered method."""
    out = []
    for name, entry in METHODS.items():
        types = typing.get_type_hints(entry.config_cls)
        for f in fields(entry.config_cls):
            if f.name != "method":
                out.append((name, f"{entry.flag_prefix}_{f.name}", (f, types[f.name])))
    return out


@pytest.mark.parametrize("method,flag,option", method_options(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_method_option_has_its_flag_with_the_same_type_default_and_help(method, flag, option):
    config_field, config_type = option
    assert flag in FLAGS, f"{method}: option {config_field.name!r} has no flag --{flag} in PetlArguments"
    assert FLAG_TYPES[flag] == config_type, f"--{flag}"
    assert config_field.default is not MISSING and FLAGS[flag].default == config_field.default, f"--{flag}"
    help_text = config_field.metadata.get("help")
    assert help_text and FLAGS[flag].metadata.get("help") == help_text, f"--{flag}: the config field needs its help text"


def test_every_method_flag_is_an_option_of_a_registered_method():
    """A flag whose name starts with a method's prefix is one of that method's options (no stale copies)."""
    options = {flag for _, flag, _ in method_options()}
    method_flags = {name for name in FLAGS if name.split("_", 1)[0] in PREFIXES}
    assert method_flags == options
    assert f"{', '.join(METHODS)}" in FLAGS["method"].metadata["help"]  # --method's help lists every method


def test_method_flags_show_in_help_and_work_from_an_args_file():
    help_text = "".join(ArgumentParser(PetlArguments).format_help().split())  # no whitespace: argparse wraps lines
    for _, flag, (config_field, _) in method_options():
        assert f"--{flag}{flag.upper()}" in help_text or f"--{flag}[" in help_text, flag
        assert "".join(config_field.metadata["help"].split()) in help_text, flag
    (args,) = arguments_from_dict({"method": "ia3", "ia3_layers": "1", "ia3_targets": "v"}, classes=(PetlArguments,))
    assert [c.to_dict() for c in args.method_configs({"method", "ia3_layers", "ia3_targets"})] == [
        {"method": "ia3", "targets": "v", "layers": "1"}
    ]


def test_methods_sharing_one_config_exclude_each_other_through_their_group():
    """adapter and its presets (houlsby, pfeiffer, parallel) are one group, like the input-prompt methods."""
    by_prefix: dict[str, list] = {}
    for entry in METHODS.values():
        by_prefix.setdefault(entry.flag_prefix, []).append(entry)
    shared = {prefix: {e.group for e in entries} for prefix, entries in by_prefix.items() if len(entries) > 1}
    assert shared == {"adapter": {"adapter"}}
    for bad in ("houlsby,pfeiffer", "adapter,parallel"):
        with pytest.raises(PetlError, match=f"combines {bad}, which are all adapter methods; choose one"):
            validate_combination(bad.split(","))
    validate_combination(["houlsby", "lora", "prompt"])  # one of each group is fine


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_declares_a_valid_default_search_space(name):
    entry = METHODS[name]
    assert entry.search_space is not None, f"{name}: declare search_space in its registry entry"
    for flag in entry.search_space:
        assert flag.split("_", 1)[0] not in PREFIXES or flag.startswith(f"{entry.flag_prefix}_"), f"{name} searches {flag}"
    space = default_space([name])
    validate_space(space, f"{name}'s default search space")
    assert ("learning_rate" in space) == (name != "head")


def test_method_specific_knobs_of_the_prompt_generators_are_searched():
    assert "ptuning_length" in default_space(["ptuning"]) and "idpg_prompt_length" in default_space(["idpg"])


def test_merge_refuses_a_method_without_a_merge_hook_by_name_and_changes_nothing():
    model = apply_petl(tiny_model("bert"), [make_config("lora"), make_config("houlsby", dim=4)])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mergeable = ", ".join(n for n, e in METHODS.items() if e.merge is not None)
    with pytest.raises(PetlError, match=re.escape(f"merge: houlsby cannot be folded into the base weights; methods that can: {mergeable}")):
        merge_petl(model)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert "lora" in mergeable and "ia3" in mergeable and "adapter" not in mergeable


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_bitfit_deltas_fold_into_the_biases(arch):
    model = apply_petl(clone(tiny_model(arch)), [make_config("bitfit")])
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    ids, mask = tiny_batch()
    unmerged = model(input_ids=ids, attention_mask=mask).logits
    biases = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith(".bias") and not p.requires_grad}
    assert merge_petl(model) == 3 * 8  # per layer: q, k, v, o, ffn_in, ffn_out and both LayerNorms
    assert torch.allclose(model(input_ids=ids, attention_mask=mask).logits, unmerged, atol=1e-5)
    assert sum(not torch.equal(p, biases[n]) for n, p in model.named_parameters() if n in biases) == 3 * 8
    assert unmerge_petl(model) == 3 * 8
    assert torch.allclose(model(input_ids=ids, attention_mask=mask).logits, unmerged, atol=1e-5)
    assert all(torch.allclose(p, biases[n], atol=1e-7) for n, p in model.named_parameters() if n in biases)

"""The one documented state object (petl.state.PetlState) the pipeline keeps on a model, and the
extra-inputs contract it carries (model -> data pipeline -> model)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from transformers import DataCollatorWithPadding

from petl.cache import prepare_cached_datasets
from petl.core import apply_petl, load_petl, save_petl
from petl.data import ExtraInputsCollator, TextSplit, tokenize_split
from petl.errors import PetlError
from petl.models import load_model, load_tokenizer
from petl.registry import make_config
from petl.state import STATE_ATTRIBUTE, PetlState, get_state

TEXTS_A = ["a first sentence", "the second one is a little longer than the first", "third"]
TEXTS_B = ["its pair", "another pair", "and a last, longer pair sentence"]


def petl_attributes(model: torch.nn.Module) -> set[str]:
    """`petl_*` attributes on the model or any of its modules (parameter flags are on tensors, not here)."""
    return {name for module in model.modules() for name in vars(module) if name.startswith("petl_")}


def lora_and_adapter() -> list:
    return [make_config("lora", rank=2, layers="1"), make_config("adapter", dim=4, layers="1")]


def test_apply_petl_attaches_exactly_one_state_object():
    model = tiny_model("bert")
    assert petl_attributes(model) == set() and not get_state(model).applied
    apply_petl(model, lora_and_adapter())
    assert petl_attributes(model) == {STATE_ATTRIBUTE}
    states = [value for module in model.modules() for value in vars(module).values() if isinstance(value, PetlState)]
    assert len(states) == 1 and states[0] is get_state(model)
    with pytest.raises(PetlError, match="already applied"):
        apply_petl(model, "lora")
    assert get_state(model) is states[0]


def test_state_fields_for_lora_and_adapter_through_load_cache_save_and_load(minilm_path, tmp_path):
    model = load_model(minilm_path, 2, "auto", 2, seed=1)
    state = get_state(model)
    assert petl_attributes(model) == {STATE_ATTRIBUTE}  # the dead petl_original_num_layers is gone too
    assert state.pooler_type == "model"  # `auto` resolved
    head = {n for n, _ in model.named_parameters() if n.startswith("classifier.")}
    assert head and set(state.new_parameters) == head
    assert not state.applied and state.owner == {} and state.cache_start is None
    apply_petl(model, lora_and_adapter())
    assert get_state(model) is state  # apply_petl fills the state load_model attached
    assert [c.method for c in state.methods] == ["lora", "adapter"]
    assert {method for method, _ in state.owner.values()} == {"lora", "adapter", "head"}
    assert {layer for method, layer in state.owner.values() if method != "head"} == {1}
    assert set(state.owner) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert state.parts == {} and state.extra_inputs == {}

    tokenizer = load_tokenizer(minilm_path)
    dataset = tokenize_split(TextSplit(TEXTS_A, TEXTS_B, [0, 1, 0]), tokenizer, 32, False, False)
    prepare_cached_datasets(model, {"train": dataset}, DataCollatorWithPadding(tokenizer))
    assert state.cache_start == 1  # the lowest trained layer

    save_petl(model, tmp_path, extra={"pooler_type": state.pooler_type})
    restored = load_model(minilm_path, 2, "auto", 2, seed=2)
    load_petl(restored, tmp_path)
    assert petl_attributes(restored) == {STATE_ATTRIBUTE}
    loaded = get_state(restored)
    assert loaded is not state and [c.to_dict() for c in loaded.methods] == [c.to_dict() for c in state.methods]
    assert loaded.owner == state.owner and loaded.cache_start is None


def test_idpg_extra_inputs_go_model_to_pipeline_to_model(minilm_path, tiny_encoder_dir):
    model = load_model(minilm_path, 2, "auto", 2, seed=1)
    apply_petl(model, [make_config("idpg", encoder=tiny_encoder_dir, variant="trained", hidden=4, prompt_length=2)])
    model.eval()
    state = get_state(model)
    assert petl_attributes(model) == {STATE_ATTRIBUTE}
    # 1. the method declares its extra inputs: a column prefix and the tokenizer that fills it
    assert list(state.extra_inputs) == ["idpg"] and state.extra_inputs["idpg"].name_or_path == tiny_encoder_dir
    assert set(state.parts.values()) == {"generator", "encoder"}
    assert {state.owner[n][0] for n in state.parts} == {"idpg"}
    # 2. the pipeline tokenises the raw pair once more with it, into <prefix>_* columns
    tokenizer = load_tokenizer(minilm_path)
    split = TextSplit(TEXTS_A, TEXTS_B, [0, 1, 0])
    dataset = tokenize_split(split, tokenizer, 32, False, False, extra_tokenizers=state.extra_inputs)
    assert {"idpg_input_ids", "idpg_attention_mask"} <= set(dataset.column_names)
    assert dataset["idpg_input_ids"][0] == state.extra_inputs["idpg"](TEXTS_A[0], TEXTS_B[0])["input_ids"]
    # 3. the collator pads them with their own tokenizer
    batch = ExtraInputsCollator(DataCollatorWithPadding(tokenizer), state.extra_inputs)([dataset[i] for i in range(3)])
    assert batch["idpg_input_ids"].shape[0] == 3 and batch["idpg_attention_mask"].shape == batch["idpg_input_ids"].shape
    # 4. the model's pre-hook consumes them (the backbone's forward takes no idpg_* argument) ...
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
        assert logits.shape == (3, 2) and torch.isfinite(logits).all()
        # ... and they change the prompts: each instance's own text goes through the encoder
        other = dict(batch, idpg_input_ids=batch["idpg_input_ids"].flip(0), idpg_attention_mask=batch["idpg_attention_mask"].flip(0))
        assert not torch.allclose(model(**other).logits, logits)
        # without them the model refuses the batch, naming the contract
        plain = {k: v for k, v in batch.items() if not k.startswith("idpg_")}
        with pytest.raises(PetlError, match="extra_tokenizers"):
            model(**plain)
    assert labels.shape == (3,)

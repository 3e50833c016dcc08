"""Oracle checks against HF PEFT: same values in, same logits out."""

from __future__ import annotations

import peft
import pytest
import torch
from conftest import TINY, clone, tiny_batch, tiny_model

from petl.core import apply_petl
from petl.peft_export import export_peft
from petl.registry import make_config

H, L = TINY["hidden_size"], TINY["num_hidden_layers"]


def logits(model, **extra):
    ids, mask = tiny_batch()
    return model(input_ids=ids, attention_mask=mask, **extra).logits


def _perturb(model, seed=5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)


def _copy_head(ours, theirs):
    theirs_params = dict(theirs.named_parameters())
    with torch.no_grad():
        for name, (method, _) in ours.petl_owner.items():
            if method == "head":
                target = [
                    p
                    for n, p in theirs_params.items()
                    if n.endswith(name) or n.endswith(name.replace("classifier.", "classifier.modules_to_save.default."))
                ]
                for t in target:
                    t.copy_(dict(ours.named_parameters())[name])


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_lora_logits_equal_peft(arch):
    base = tiny_model(arch)
    ours = apply_petl(clone(base), [make_config("lora", targets="q,v", rank=4, alpha=8, layers="0,2")])
    _perturb(ours)
    names = {"bert": ["query", "value"], "roberta": ["query", "value"]}[arch]
    cfg = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=names, layers_to_transform=[0, 2])
    theirs = peft.get_peft_model(clone(base), cfg)
    params = dict(theirs.named_parameters())
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if ".lora_" in name:
                key = f"base_model.model.{name.replace('.weight', '.default.weight')}"
                params[key].copy_(p)
    _copy_head(ours, theirs)
    theirs.eval()
    assert torch.allclose(logits(ours), logits(theirs), atol=1e-5)


def test_export_peft_loads_in_peft_with_equal_logits(tmp_path):
    base = tiny_model("bert")
    ours = apply_petl(clone(base), [make_config("lora", targets="q,k,v,o,ffn_in,ffn_out", rank=2, alpha=6, layers="1-2")])
    _perturb(ours)
    export_peft(ours, tmp_path / "peft")
    loaded = peft.PeftModel.from_pretrained(clone(base), tmp_path / "peft")
    loaded.eval()
    assert torch.allclose(logits(ours), logits(loaded), atol=1e-5)
    assert not torch.allclose(logits(base), logits(loaded), atol=1e-3)


def test_prefix_with_shifted_positions_equals_peft_prefix_tuning():
    base = tiny_model("bert")
    p = 4
    theirs = peft.get_peft_model(clone(base), peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=p))
    theirs.eval()
    table = theirs.prompt_encoder["default"].embedding.weight.detach()  # (P, L * 2 * H): per layer key then value
    ours = apply_petl(clone(base), [make_config("prefix", length=p, shift_positions=True)])
    shifted_default = apply_petl(clone(base), [make_config("prefix", length=p)])
    for model in (ours, shifted_default):
        with torch.no_grad():
            for layer in range(L):
                prefix = model.bert.encoder.layer[layer].attention.self.prefix
                prefix.key.copy_(table[:, (2 * layer) * H : (2 * layer + 1) * H])
                prefix.value.copy_(table[:, (2 * layer + 1) * H : (2 * layer + 2) * H])
    _copy_head(ours, theirs)
    _copy_head(ours, shifted_default)
    assert torch.allclose(logits(ours), logits(theirs), atol=1e-5)
    # the default keeps real tokens at positions 0..T-1, which PEFT does not: the logits differ
    assert not torch.allclose(logits(shifted_default), logits(theirs), atol=1e-4)


def test_prompt_at_start_equals_peft_prompt_tuning():
    base = tiny_model("bert")
    p = 3
    theirs = peft.get_peft_model(clone(base), peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=p))
    theirs.eval()
    table = theirs.prompt_encoder["default"].embedding.weight.detach()
    ours = apply_petl(clone(base), [make_config("prompt", length=p, position="start")])
    after_cls = apply_petl(clone(base), [make_config("prompt", length=p)])
    for model in (ours, after_cls):
        with torch.no_grad():
            model.soft_prompt.embeddings.copy_(table)
        _copy_head(model, theirs)
    ids, mask = tiny_batch()
    tt = torch.zeros_like(ids)
    ref = theirs(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits
    assert torch.allclose(ours(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits, ref, atol=1e-5)
    assert not torch.allclose(after_cls(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits, ref, atol=1e-4)

"""Oracle checks against HF PEFT: same values in, same logits out."""

from __future__ import annotations

import peft
import pytest
import torch
from conftest import TINY, clone, decoder_batch, perturb, tiny_batch, tiny_decoder, tiny_model

from petl.core import apply_petl
from petl.errors import PetlError
from petl.peft_export import export_peft
from petl.registry import make_config
from petl.state import get_state

H, L = TINY["hidden_size"], TINY["num_hidden_layers"]


def logits(model, **extra):
    ids, mask = tiny_batch()
    return model(input_ids=ids, attention_mask=mask, **extra).logits


def _perturb(model):
    perturb(model, seed=5, scale=0.2)


def _copy_head(ours, theirs):
    theirs_params = dict(theirs.named_parameters())
    with torch.no_grad():
        for name, (method, _) in get_state(ours).owner.items():
            if method == "head":
                module, _, rest = name.partition(".")  # PEFT keeps a trained copy of the head: <module>.modules_to_save.default.*
                target = [p for n, p in theirs_params.items() if n.endswith(name) or n.endswith(f"{module}.modules_to_save.default.{rest}")]
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


# ---------------------------------------------------------------------------------------------
# Decoders: GPT-2 (Conv1D, fused c_attn) and Llama (grouped-query attention), HF's own heads


def _decoder(kind):
    return tiny_decoder(kind, pooler="model")


def _decoder_logits(model):
    ids, mask = decoder_batch()
    return model(input_ids=ids, attention_mask=mask).logits


def _copy_lora(ours, theirs, rename=lambda n: n):
    params = dict(theirs.named_parameters())
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if ".lora_" in name:
                params[f"base_model.model.{rename(name).replace('.weight', '.default.weight')}"].copy_(p)


def test_lora_on_llama_and_gpt2_projections_equals_peft():
    for kind, targets, names in (
        ("llama", "q,v,ffn_in", ["q_proj", "v_proj", "gate_proj", "up_proj"]),
        ("gpt2", "o,ffn_in", ["attn.c_proj", "c_fc"]),
    ):
        base = _decoder(kind)
        ours = apply_petl(clone(base), [make_config("lora", targets=targets, rank=2, alpha=6, layers="0,2")])
        _perturb(ours)
        cfg = peft.LoraConfig(
            task_type="SEQ_CLS", r=2, lora_alpha=6, target_modules=names, layers_to_transform=[0, 2], fan_in_fan_out=kind == "gpt2"
        )
        theirs = peft.get_peft_model(clone(base), cfg)
        _copy_lora(ours, theirs)
        _copy_head(ours, theirs)
        theirs.eval()
        assert torch.allclose(_decoder_logits(ours), _decoder_logits(theirs), atol=1e-5), kind


def test_lora_on_gpt2_fused_qkv_slots_equals_peft_with_block_diagonal_weights():
    """Ours: q, k, v each rank r on its own columns of c_attn. PEFT adapts c_attn as one matrix;
    with rank 3r, A = [A_q; A_k; A_v], B = blockdiag(B_q, B_k, B_v) and alpha x 3 it is the same map."""
    base = _decoder("gpt2")
    r, alpha = 2, 4.0
    ours = apply_petl(clone(base), [make_config("lora", targets="q,k,v", rank=r, alpha=alpha)])
    _perturb(ours)
    cfg = peft.LoraConfig(task_type="SEQ_CLS", r=3 * r, lora_alpha=3 * alpha, target_modules=["c_attn"], fan_in_fan_out=True)
    theirs = peft.get_peft_model(clone(base), cfg)
    params = dict(theirs.named_parameters())
    with torch.no_grad():
        for layer, block in enumerate(ours.transformer.h):
            c_attn = block.attn.c_attn
            a = torch.cat([getattr(c_attn, f"lora_A_{s}").weight for s in "qkv"])
            b = torch.block_diag(*[getattr(c_attn, f"lora_B_{s}").weight for s in "qkv"])
            prefix = f"base_model.model.transformer.h.{layer}.attn.c_attn"
            params[f"{prefix}.lora_A.default.weight"].copy_(a)
            params[f"{prefix}.lora_B.default.weight"].copy_(b)
    _copy_head(ours, theirs)
    theirs.eval()
    assert torch.allclose(_decoder_logits(ours), _decoder_logits(theirs), atol=1e-5)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_decoder_prefix_with_shifted_positions_equals_peft(kind):
    base = _decoder(kind)
    p, layers = 3, base.config.num_hidden_layers
    theirs = peft.get_peft_model(clone(base), peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=p))
    theirs.eval()
    table = theirs.prompt_encoder["default"].embedding.weight.detach()
    width = table.shape[1] // (2 * layers)  # key/value heads x head dim: 16 under Llama's grouped-query attention
    ours = apply_petl(clone(base), [make_config("prefix", length=p, shift_positions=True)])
    attn_path = "attn" if kind == "gpt2" else "self_attn"
    with torch.no_grad():
        for layer, block in enumerate(ours.base_model.h if kind == "gpt2" else ours.base_model.layers):
            prefix = getattr(block, attn_path).prefix
            assert prefix.key.shape == (p, width)
            prefix.key.copy_(table[:, (2 * layer) * width : (2 * layer + 1) * width])
            prefix.value.copy_(table[:, (2 * layer + 1) * width : (2 * layer + 2) * width])
    _copy_head(ours, theirs)
    if kind == "gpt2":
        reference = _decoder_logits(theirs)
    else:
        # PEFT 0.21's prefix forward passes use_cache twice to transformers 5.23's Llama classifier
        # (TypeError); do what it does by hand: its own key/value cache and a widened mask
        ids, mask = decoder_batch()
        with torch.no_grad():
            cache = theirs.get_prompt(batch_size=ids.shape[0])
            wide = torch.cat([mask.new_ones(ids.shape[0], p), mask], dim=1)
            reference = theirs.base_model(input_ids=ids, attention_mask=wide, past_key_values=cache).logits
    assert torch.allclose(_decoder_logits(ours), reference, atol=1e-5)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_decoder_prompt_equals_peft_prompt_tuning(kind):
    base = _decoder(kind)
    p = 3
    theirs = peft.get_peft_model(clone(base), peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=p))
    theirs.eval()
    ours = apply_petl(clone(base), [make_config("prompt", length=p)])  # position auto: start, on decoders
    with torch.no_grad():
        ours.soft_prompt.embeddings.copy_(theirs.prompt_encoder["default"].embedding.weight)
    _copy_head(ours, theirs)
    assert torch.allclose(_decoder_logits(ours), _decoder_logits(theirs), atol=1e-5)


def test_export_peft_from_gpt2_conv1d_loads_in_peft_and_refuses_fused_slots(tmp_path):
    base = _decoder("gpt2")
    ours = apply_petl(clone(base), [make_config("lora", targets="o,ffn_in,ffn_out", rank=2, alpha=4)])
    _perturb(ours)
    export_peft(ours, tmp_path / "peft")
    loaded = peft.PeftModel.from_pretrained(clone(base), tmp_path / "peft")
    loaded.eval()
    assert torch.allclose(_decoder_logits(ours), _decoder_logits(loaded), atol=1e-5)
    fused = apply_petl(clone(base), [make_config("lora", targets="q,v", rank=2)])
    with pytest.raises(PetlError, match="fused projection"):
        export_peft(fused, tmp_path / "fused")

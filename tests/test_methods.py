"""Every method on tiny random BERT, RoBERTa and MPNet configs."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, clone, perturb, tiny_batch, tiny_model
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, RobertaConfig

from argument_classes import PetlArguments
from petl.core import PETL_WEIGHTS_FILE, apply_petl, load_petl, merge_petl, save_petl, trainable_summary, unmerge_petl
from petl.errors import PetlError
from petl.methods.prefix import drop_prefix_mlps
from petl.registry import make_config
from petl.state import get_state

ARCHS = ["bert", "roberta", "mpnet"]
H, I, L = TINY["hidden_size"], TINY["intermediate_size"], TINY["num_hidden_layers"]

IDENTITY_AT_INIT = [
    ("lora", {"targets": "q,k,v,o,ffn_in,ffn_out", "rank": 4}),
    ("adapter", {"dim": 8, "placement": "attn,ffn"}),
    ("adapter", {"dim": 8, "placement": "attn,ffn", "style": "parallel"}),
    ("adapter", {"dim": 8, "layernorm": True, "scaling": "learned"}),
    ("houlsby", {"dim": 8}),
    ("pfeiffer", {"dim": 8}),
    ("pfeiffer", {"dim": I}),  # over-complete: wider than the hidden size, as wide as the FFN
    ("parallel", {"dim": 8}),
    ("bitfit", {}),
]


def logits(model, seed=1):
    ids, mask = tiny_batch(seed)
    return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method,options", IDENTITY_AT_INIT)
def test_identity_at_init(arch, method, options):
    base = tiny_model(arch)
    model = apply_petl(clone(base), [make_config(method, **options)])
    assert torch.allclose(logits(model), logits(base), atol=1e-6, rtol=0)
    perturb(model)  # and the methods really act: perturbed parameters change the logits
    assert not torch.allclose(logits(model), logits(base), atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_and_prompt_change_logits_only_through_their_parameters(arch):
    base = tiny_model(arch)
    base_params = dict(base.named_parameters())
    for cfg in (make_config("prefix", length=3, layers="1"), make_config("prompt", length=2)):
        model = apply_petl(clone(base), [cfg])
        out = logits(model)
        assert out.shape == logits(base).shape and torch.isfinite(out).all()
        assert not torch.allclose(out, logits(base), rtol=0, atol=1e-6)  # the prefix or prompt changes the logits (~1e-5 here)
        owner = get_state(model).owner
        own = {n for n, (method, _) in owner.items() if method == cfg.method}
        params = dict(model.named_parameters())
        # the backbone is left as loaded: every tensor the method does not own is the base model's
        assert all(torch.equal(p, base_params[n]) for n, p in params.items() if n not in owner)
        out.sum().backward()
        reached = {n for n, p in params.items() if p.grad is not None and p.grad.abs().sum() > 0}
        assert own and own <= reached, own - reached  # every prefix/prompt tensor reaches the logits ...
        assert reached <= own | {n for n, (method, _) in owner.items() if method == "head"}  # ... and no frozen one
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():  # and moving them moves the logits
            for n in own:
                params[n].add_(torch.randn(params[n].shape, generator=g))
        assert not torch.allclose(logits(model), out, rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_counts_equal_the_formula(arch):
    base = tiny_model(arch)
    cases = [
        ("lora", {"targets": "q,v", "rank": 4, "layers": "0,2"}, 2 * 2 * 4 * (H + H)),
        ("lora", {"targets": "ffn_in", "rank": 2, "layers": "1"}, 2 * (H + I)),
        ("adapter", {"dim": 8, "placement": "attn,ffn", "layers": "1-2"}, 2 * 2 * (2 * H * 8 + 8 + H)),
        ("adapter", {"dim": 8, "layernorm": True, "scaling": "learned", "layers": "0"}, 2 * H * 8 + 8 + H + 2 * H + 1),
        ("adapter", {"dim": I, "layers": "0"}, 2 * H * I + I + H),
        ("bitfit", {"layers": "all"}, L * (7 * H + I)),
        ("bitfit", {"targets": "q,ffn_in", "layers": "2"}, H + I),
        ("prefix", {"length": 5, "layers": "0,1"}, 2 * 2 * 5 * H),
        ("prefix", {"length": 5, "layers": "0", "mlp_dim": 16}, 5 * H + (H * 16 + 16) + (16 * 2 * H + 2 * H)),
        ("prompt", {"length": 7}, 7 * H),
        ("ffn", {"layers": "1"}, 2 * H * I + I + H),
        ("ffn", {"layers": "1", "include_layernorm": True}, 2 * H * I + I + H + 2 * H),
    ]
    for method, options, expected in cases:
        model = apply_petl(clone(base), [make_config(method, **options)])
        summary = trainable_summary(model)
        assert summary["trainable_parameters_without_head"] == expected, (method, options)
        assert sum(r["parameters"] for r in summary["rows"] if r["method"] == method) == expected
        head = sum(p.numel() for n, p in model.named_parameters() if get_state(model).owner.get(n, ("",))[0] == "head")
        assert summary["head_parameters"] == head > 0
        assert summary["backbone_parameters"] == sum(p.numel() for p in base.parameters()) - head

    # full fine-tuning trains the head too, but its count "without head" is the backbone's, and the head is counted as the head
    model = apply_petl(clone(base), [make_config("full")])
    summary = trainable_summary(model)
    total = sum(p.numel() for p in base.parameters())
    assert summary["trainable_parameters"] == total and summary["head_parameters"] == head
    assert summary["trainable_parameters_without_head"] == summary["backbone_parameters"] == total - head
    assert sum(r["parameters"] for r in summary["rows"] if r["method"] == "full") == total - head


def test_adapterhub_preset_counts_on_roberta_base():
    cfg = RobertaConfig(
        vocab_size=50265,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=514,
        type_vocab_size=1,
        num_labels=2,
    )
    base = AutoModelForSequenceClassification.from_config(cfg)
    expected = {"pfeiffer": 894_528, "houlsby": 1_789_056}  # AdapterHub, reduction factor 16 (dim 48)
    for method, count in expected.items():
        model = apply_petl(clone(base), [make_config(method, dim=768 // 16)])
        assert trainable_summary(model)["trainable_parameters_without_head"] == count


@pytest.mark.parametrize("arch", ARCHS)
def test_only_chosen_layers_and_targets_get_parameters(arch):
    model = apply_petl(
        tiny_model(arch), [make_config("lora", targets="q,v", rank=2, layers="1"), make_config("adapter", dim=4, layers="2")]
    )
    owner = get_state(model).owner
    lora = {n for n, (m, _) in owner.items() if m == "lora"}
    adapter = {n for n, (m, _) in owner.items() if m == "adapter"}
    assert {owner[n][1] for n in lora} == {1} and {owner[n][1] for n in adapter} == {2}
    assert len(lora) == 4 and len(adapter) == 4  # A,B x q,v ; down/up weight+bias
    from petl.arch import arch_for

    a = arch_for(model)
    assert all((f".{a.q}.lora_" in n) or (f".{a.v}.lora_" in n) for n in lora)
    assert all(f".{a.ffn_out}.adapter." in n for n in adapter)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "method,options",
    [
        ("lora", {"rank": 2, "layers": "1"}),
        ("houlsby", {"dim": 4, "layers": "0,2"}),
        ("parallel", {"dim": 4}),
        ("bitfit", {"layers": "2"}),
        ("prefix", {"length": 2, "layers": "1", "mlp_dim": 8}),
        ("prompt", {"length": 2}),
        ("ffn", {"layers": "1"}),
        ("head", {}),
    ],
)
def test_frozen_tensors_are_bit_identical_after_training(arch, method, options):
    model = apply_petl(tiny_model(arch), [make_config(method, **options)])
    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.01)
    ids, mask = tiny_batch()
    for _ in range(3):
        out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 1]))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], t) for n, t in frozen.items())
    changed = [n for n, t in trained.items() if not torch.equal(params[n], t)]
    assert set(changed) == set(trained), set(trained) - set(changed)


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_merge_and_unmerge(arch):
    base = tiny_model(arch)
    model = apply_petl(clone(base), [make_config("lora", targets="q,k,v,o,ffn_in,ffn_out", rank=3)])
    perturb(model)
    weights = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    unmerged = logits(model)
    assert merge_petl(model) == 6 * L
    assert torch.allclose(logits(model), unmerged, atol=1e-5)
    assert any(not torch.equal(p, weights[n]) for n, p in model.named_parameters() if n in weights)
    assert unmerge_petl(model) == 6 * L
    assert torch.allclose(logits(model), unmerged, atol=1e-5)
    assert all(torch.allclose(p, weights[n], atol=1e-6) for n, p in model.named_parameters() if n in weights)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_and_load_round_trip_every_method(arch, tmp_path):
    base = tiny_model(arch)
    combos = [
        [make_config("lora", rank=2, layers="0"), make_config("adapter", dim=4, layers="2", style="parallel")],
        [make_config("houlsby", dim=4), make_config("bitfit", layers="1")],
        [make_config("prefix", length=2, layers="1,2", mlp_dim=4)],
        [make_config("prompt", length=3, position="start")],
        [make_config("ffn", layers="2", include_layernorm=True)],
        [make_config("full")],
    ]
    for i, methods in enumerate(combos):
        model = apply_petl(clone(base), methods)
        perturb(model, seed=i)
        save_petl(model, tmp_path / str(i))
        restored = load_petl(clone(base), tmp_path / str(i))
        assert [c.to_dict() for c in get_state(restored).methods] == [c.to_dict() for c in methods]
        assert torch.allclose(logits(restored), logits(model), atol=1e-6), methods


def test_prefix_mlp_can_be_dropped_after_training(tmp_path):
    base = tiny_model("bert")
    model = apply_petl(clone(base), [make_config("prefix", length=2, mlp_dim=8, layers="0,2")])
    perturb(model)
    before = logits(model)
    assert drop_prefix_mlps(model) == 2
    tables = {f"bert.encoder.layer.{i}.attention.self.prefix.{kv}" for i in (0, 2) for kv in ("key", "value")}
    params = dict(model.named_parameters())
    assert {n for n in params if ".prefix." in n} == tables  # the MLP and its embedding are gone
    assert trainable_summary(model)["trainable_parameters_without_head"] == 2 * 2 * 2 * H
    assert torch.allclose(logits(model), before, atol=1e-6)
    save_petl(model, tmp_path)
    assert {n for n in load_file(tmp_path / PETL_WEIGHTS_FILE) if ".prefix." in n} == tables  # the delta holds the tables only
    restored = load_petl(clone(base), tmp_path)
    assert get_state(restored).methods[0].mlp_dim == 0
    assert torch.allclose(logits(restored), before, atol=1e-6)


def test_combinations_and_conflicts():
    model = apply_petl(tiny_model("bert"), [make_config("adapter", dim=8), make_config("lora")])
    assert {m for m, _ in get_state(model).owner.values()} == {"adapter", "lora", "head"}
    for bad, match in [
        ("full,lora", "cannot be combined"),
        ("head,lora", "cannot be combined"),
        ("houlsby,pfeiffer", "which are all adapter methods"),
        ("lora,lora", "twice"),
        ("dora", "unknown"),
    ]:
        with pytest.raises(PetlError, match=match):
            apply_petl(tiny_model("bert"), bad)


@pytest.mark.parametrize(
    "method,options,match",
    [
        ("lora", {"rank": 0}, "--lora_rank 0"),
        ("lora", {"rank": 40}, "--lora_rank 40 is larger"),
        ("lora", {"targets": "q,gate"}, "unknown target 'gate'"),
        ("lora", {"layers": "3"}, "layer 3 is out of range"),
        ("adapter", {"dim": 0}, "--adapter_dim 0"),
        ("adapter", {"dim": 65}, "--adapter_dim 65 is larger than the FFN's width; allowed: 1..64"),
        ("adapter", {"activation": "swiglu"}, "--adapter_activation"),
        ("bitfit", {"targets": "q,z"}, "unknown target 'z'"),
        ("prefix", {"length": 0}, "--prefix_length 0"),
        ("prompt", {"length": 0}, "--prompt_length 0"),
        ("ffn", {"layers": "0,7"}, "layer 7 is out of range"),
    ],
)
def test_bad_method_options_are_one_line_errors(method, options, match):
    with pytest.raises(PetlError, match=match) as err:
        apply_petl(tiny_model("bert"), [make_config(method, **options)])
    assert "\n" not in str(err.value)


def test_flags_of_unselected_methods_are_rejected():
    with pytest.raises(PetlError, match="--lora_rank was given but --method 'adapter'"):
        PetlArguments(method="adapter", lora_rank=4).method_configs()
    with pytest.raises(PetlError, match="conflicts with --method houlsby"):
        PetlArguments(method="houlsby", adapter_style="parallel").method_configs()
    cfgs = PetlArguments(method="adapter,lora", adapter_layers="5", lora_layers="10", lora_rank=4).method_configs()
    assert [(c.method, c.layers) for c in cfgs] == [("adapter", "5"), ("lora", "10")] and cfgs[1].rank == 4

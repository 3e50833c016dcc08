"""Every registered method on a tiny random config of every architecture in the map (petl/arch.py):
identity at init, the method in effect, only owned tensors train, save/load round trip, cache exactness
(or its refusal), LoRA, prompt and prefix tuning against PEFT, and the refusals the map states. The
README's method x architecture table is this file's matrix. BERT, RoBERTa, MPNet, GPT-2 and Llama use
conftest's tiny models (deeper method tests: test_methods.py, test_decoders.py, test_peft_oracle.py)."""

from __future__ import annotations

import functools
import inspect
import re

import peft
import pytest
import torch
from conftest import CONFIGS as OLD_ENCODER_CONFIGS
from conftest import TINY, clone, collate, decoder_config, token_dataset
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from petl.arch import ARCHITECTURES, arch_for, get_module, input_embedding_width, slot_range
from petl.cache import build_cache, cache_start_layer, run_from_layer
from petl.core import apply_petl, load_petl, save_petl
from petl.errors import PetlError
from petl.models import PooledClassifier
from petl.peft_export import unpack_prefix_table
from petl.registry import METHODS, make_config
from petl.state import get_state

ENCODERS = ["deberta-v2", "electra", "distilbert", "xlm-roberta", "modernbert", "albert"]
DECODERS = ["qwen2", "qwen3", "mistral", "gemma", "phi3"]
KINDS = ENCODERS + DECODERS  # added for issue 22
OLD_DECODERS = ["gpt2", "llama"]
ALL_KINDS = [*OLD_ENCODER_CONFIGS, *OLD_DECODERS, *KINDS]
H, VOCAB, PAD = 32, TINY["vocab_size"], 1
COMMON = dict(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=2, intermediate_size=64, max_position_embeddings=64, num_labels=2)
GQA = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=8)  # grouped-query attention: k, v narrower than q
CONFIGS = {
    # DeBERTa-v3's settings: relative attention only (no absolute positions), shared position keys
    "deberta-v2": dict(
        num_attention_heads=2,
        relative_attention=True,
        position_biased_input=False,
        pos_att_type=["p2c", "c2p"],
        max_relative_positions=-1,
        position_buckets=16,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        type_vocab_size=0,
    ),
    "electra": dict(num_attention_heads=2, embedding_size=H),  # base/large: no embeddings projection
    "distilbert": dict(dim=H, n_layers=2, n_heads=2, hidden_dim=64),
    "xlm-roberta": dict(num_attention_heads=2),
    "modernbert": dict(num_attention_heads=2, cls_token_id=2, sep_token_id=3),
    "albert": dict(num_attention_heads=2, embedding_size=16),  # one shared layer group, run at both depths
    **{kind: GQA for kind in DECODERS},
}


def tiny_config(kind: str, **overrides):
    cfg = AutoConfig.for_model(
        kind, **{**COMMON, "pad_token_id": PAD, "bos_token_id": PAD, "eos_token_id": PAD, **CONFIGS[kind], **overrides}
    )
    if kind in DECODERS:
        cfg.use_cache = False
    return cfg


@functools.cache
def _base(kind: str, pooled: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind in OLD_ENCODER_CONFIGS:
        cfg = OLD_ENCODER_CONFIGS[kind](**TINY)
    else:
        cfg = decoder_config(kind) if kind in OLD_DECODERS else tiny_config(kind)
    if pooled:  # the project's pooled head (decoders' default: last-token pooling), on the bare backbone as load_backbone builds it
        extra = (
            {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(AutoModel._model_mapping[type(cfg)]).parameters else {}
        )
        model = PooledClassifier(AutoModel.from_config(cfg, **extra), 2, "last" if is_decoder_kind(kind) else "cls", dropout=0.0)
    else:
        model = AutoModelForSequenceClassification.from_config(cfg)
    return model.eval()


def base_model(kind: str, pooled: bool | None = None) -> torch.nn.Module:
    """A fresh copy of the kind's tiny random model (built once per session); by default the project's
    default head: the model's own for encoders, the pooled one for decoders."""
    return clone(_base(kind, is_decoder_kind(kind) if pooled is None else pooled))


def is_decoder_kind(kind: str) -> bool:
    return kind in DECODERS or kind in OLD_DECODERS


def batch(seed: int = 1, b: int = 3, t: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, t - 3 :], ids[1, t - 3 :] = 0, PAD  # one right-padded row
    return ids, mask


def logits(model) -> torch.Tensor:
    ids, mask = batch()
    return model(input_ids=ids, attention_mask=mask).logits


# one case per registered method (test_every_registered_method_has_a_case keeps it so)
CASES = {
    "full": {},
    "head": {},
    "ffn": {"layers": "-1", "include_layernorm": True},
    "bitfit": {},
    "lora": {"targets": "q,k,v,o,ffn_in,ffn_out", "rank": 2},
    "adapter": {"dim": 4, "placement": "attn,ffn", "style": "parallel"},
    "houlsby": {"dim": 4},
    "pfeiffer": {"dim": 4},
    "parallel": {"dim": 4},
    "prefix": {"length": 2, "mlp_dim": 8},
    "prompt": {"length": 2},
    "ptuning": {"length": 2, "hidden": 4},
    "ia3": {},
    "idpg": {"variant": "reparam", "hidden": 4, "prompt_length": 2},  # the encoder variants' encoder is a model of its own
    "linear-probe": {},  # needs the pooled head; its fit is the Trainer's (test_linear_probe.py), here one gradient step
}
POOLED_ONLY = {"linear-probe"}
OPTIONS = {("qwen2", "bitfit"): {"targets": "q,k,v"}}  # Qwen2: biases on q, k, v only
IDENTITY_AT_INIT = {"full", "head", "ffn", "bitfit", "lora", "adapter", "houlsby", "pfeiffer", "parallel", "ia3"}
NO_BIASES = "BitFit needs biases"
PREFIX_REFUSED = r"--method prefix is not supported for {}: its attention takes no past_key_values and .*"
REFUSED = {
    ("deberta-v2", "prefix"): PREFIX_REFUSED.format("deberta-v2") + "relative position",
    ("modernbert", "prefix"): PREFIX_REFUSED.format("modernbert") + "rotary positions",
    **{(kind, "bitfit"): NO_BIASES for kind in ("llama", "modernbert", "qwen3", "mistral", "gemma", "phi3")},
    ("qwen2", "bitfit-default"): NO_BIASES + r", but self_attn.o_proj in qwen2 has none",
}


def test_every_registered_method_has_a_case():
    assert set(CASES) == set(METHODS)


def test_every_architecture_in_the_map_is_tested():
    assert set(ARCHITECTURES) == set(ALL_KINDS)


def _perturb_owned(model, method: str) -> dict[str, torch.Tensor]:
    """Move the method's own tensors (not the head's) in place; returns their old values. (In place: hooks
    hold references to the modules they were made for, so a deep copy of a model with methods is no model.)"""
    owner = get_state(model).owner
    g = torch.Generator().manual_seed(3)
    old = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if owner.get(name, ("",))[0] == method:
                old[name] = p.detach().clone()
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return old


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("method", list(CASES))
def test_method_on_architecture(kind, method, tmp_path):
    """Identity at init, the method in effect, only owned tensors train (frozen ones bit-identical), and
    the saved delta restores the same logits; or the one-line refusal the architecture map states."""
    base = base_model(kind, pooled=True if method in POOLED_ONLY else None)
    cfg = make_config(method, **OPTIONS.get((kind, method), CASES[method]))
    if (kind, method) in REFUSED:
        with pytest.raises(PetlError, match=REFUSED[kind, method]) as err:
            apply_petl(clone(base), [cfg])
        assert "\n" not in str(err.value)
        return
    model = apply_petl(clone(base), [cfg])
    owned = set(get_state(model).owner)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == owned
    reference = logits(base)
    if method in IDENTITY_AT_INIT:
        assert torch.allclose(logits(model), reference, atol=1e-6, rtol=0)
    if method not in ("full", "head", "ffn", "linear-probe"):  # methods with tensors of their own: moving them moves the logits
        at_init = logits(model)
        old = _perturb_owned(model, method)
        assert not torch.allclose(logits(model), at_init, rtol=0, atol=1e-6)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(old.get(name, p))

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    ids, mask = batch()
    reached = set()
    for _ in range(2):  # two steps: LoRA's A and an adapter's down-projection get gradients once B / up are not zero
        model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 1])).loss.backward()
        reached |= {n for n, p in model.named_parameters() if p.grad is not None}
        opt.step()
        opt.zero_grad()
    model.eval()
    params = dict(model.named_parameters())
    frozen_changed = [n for n in params if n not in owned and not torch.equal(params[n], before[n])]
    assert not frozen_changed
    assert reached == owned  # every owned tensor is in the loss's graph, no frozen one
    changed = {n for n in owned if not torch.equal(params[n], before[n])}
    owner = get_state(model).owner
    assert changed and (method in ("head", "linear-probe") or any(owner[n][0] == method for n in changed))

    save_petl(model, tmp_path / "delta")
    restored = load_petl(clone(base), tmp_path / "delta")
    assert torch.allclose(logits(restored), logits(model), atol=1e-6)


def test_qwen2_bitfit_with_default_targets_names_the_projection_without_bias():
    with pytest.raises(PetlError, match=REFUSED["qwen2", "bitfit-default"]):
        apply_petl(base_model("qwen2"), [make_config("bitfit")])


# ---------------------------------------------------------------------------------------------
# Frozen-layer cache: exact where valid, refused with the reason where not

CACHEABLE = [
    ("lora", {"targets": "q,v,ffn_out", "rank": 2, "layers": "1"}),
    ("houlsby", {"dim": 4, "layers": "1"}),
    ("prefix", {"length": 2, "layers": "1"}),
    ("head", {}),
]
CACHE_REFUSED = {
    "albert": "ALBERT runs its one shared layer group at every depth",
    "gpt2": "its embeddings are not one module that the cached states could replace",
}


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_cached_logits_equal_uncached(kind):
    ds = token_dataset()
    full = collate([ds[i] for i in range(len(ds))])
    if kind in CACHE_REFUSED:
        for method in ("lora", "head"):
            with pytest.raises(PetlError, match=f"not supported for {kind}: {CACHE_REFUSED[kind]}"):
                cache_start_layer(apply_petl(base_model(kind), method))
        return
    for method, options in CACHEABLE:
        if (kind, method) in REFUSED:
            continue
        model = apply_petl(base_model(kind), [make_config(method, **options)])
        _perturb_owned(model, method)
        start = cache_start_layer(model)
        assert start == 1 or (
            method == "head" and start == len(get_module(model.base_model, arch_for(model).layers)) - arch_for(model).cache_keeps_layers
        )
        cache = build_cache(model, start, ds, collate, batch_size=3)
        with torch.no_grad():
            expected = model(**full).logits
            with run_from_layer(model, start, cache.padded(list(range(len(ds))), full["attention_mask"])):
                got = model(**full).logits
        assert torch.allclose(got, expected, atol=1e-5, rtol=0), (method, (got - expected).abs().max())


@pytest.mark.parametrize(
    "kind,overrides,message",
    [
        ("electra", {"embedding_size": 16}, "ELECTRA with embedding_size 16 != hidden_size 32 projects the embeddings"),
        ("deberta-v2", {"conv_kernel_size": 3}, "DeBERTa-v2 with conv_kernel_size > 0 applies its convolution"),
    ],
)
def test_cache_refused_where_the_embeddings_are_not_the_first_states(kind, overrides, message):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config(kind, **overrides))
    model = apply_petl(model, [make_config("lora", layers="1")])
    with pytest.raises(PetlError, match=f"--cache_frozen_layers is not supported for {kind}: {message}") as err:
        cache_start_layer(model)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# ALBERT's shared layers, fused projections, unknown architectures


def test_albert_method_on_the_shared_layer_acts_at_every_depth_and_per_depth_placement_is_refused():
    model = apply_petl(base_model("albert"), [make_config("lora", targets="q", rank=2)])
    query = model.albert.encoder.albert_layer_groups[0].albert_layers[0].attention.query
    calls = []
    query.register_forward_hook(lambda *_: calls.append(1))
    logits(model)
    assert len(calls) == model.config.num_hidden_layers == 2  # one LoRA, applied at both depths
    assert {layer for _, layer in get_state(model).owner.values() if layer is not None} == {0}
    for method in ("lora", "ffn", "houlsby"):
        with pytest.raises(PetlError, match=r"layer 1 is out of range.*\(ALBERT shares one layer group's weights across all depths") as err:
            apply_petl(base_model("albert"), [make_config(method, layers="1")])
        assert "\n" not in str(err.value)


def test_albert_with_several_layers_per_group_is_refused():
    model = AutoModelForSequenceClassification.from_config(tiny_config("albert", inner_group_num=2))
    with pytest.raises(PetlError, match=r"albert with inner_group_num=2 is not supported; allowed: inner_group_num=1"):
        apply_petl(model, [make_config("lora")])


def test_phi3_fused_qkv_slots_follow_grouped_query_widths():
    """q is 4 heads x 8 wide, k and v 2 key/value heads x 8: LoRA on k touches exactly columns 32..47."""
    model = base_model("phi3")
    qkv = model.backbone.layers[0].self_attn.qkv_proj
    spec = arch_for(model)
    assert [slot_range(qkv, s, spec, model.config) for s in "qkv"] == [(0, 32), (32, 48), (48, 64)]
    x = torch.randn(2, 5, H)
    ref = qkv(x)
    lora = apply_petl(clone(model), [make_config("lora", targets="k", rank=2, layers="0")])
    _perturb_owned(lora, "lora")
    out = lora.backbone.layers[0].self_attn.qkv_proj(x)
    changed = (out - ref).abs().amax(dim=(0, 1)) > 0
    assert changed[32:48].all() and not changed[:32].any() and not changed[48:].any()


def test_unknown_architecture_is_one_line_naming_the_supported_ones_and_the_map():
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("bloom", vocab_size=VOCAB, hidden_size=H, n_layer=2, n_head=2, num_labels=2)
    model = AutoModelForSequenceClassification.from_config(cfg)
    with pytest.raises(PetlError) as err:
        apply_petl(model, [make_config("lora")])
    message = str(err.value)
    assert "\n" not in message and "model_type 'bloom' is not supported" in message and "petl/arch.py" in message
    assert all(kind in message for kind in ARCHITECTURES)


# ---------------------------------------------------------------------------------------------
# LoRA against PEFT: PEFT's own module names, written here by hand (not read from the map under test)

PEFT_LORA = {  # BERT, RoBERTa, GPT-2, Llama: test_peft_oracle.py
    "mpnet": ("q,v,o", ["attn.q", "attn.v", "attn.o"]),
    "deberta-v2": ("q,v", ["query_proj", "value_proj"]),
    "electra": ("q,v,ffn_in", ["query", "value", "intermediate.dense"]),
    "distilbert": ("q,v,ffn_in", ["q_lin", "v_lin", "lin1"]),
    "xlm-roberta": ("q,v", ["query", "value"]),
    "modernbert": ("o,ffn_in,ffn_out", ["Wo", "Wi"]),  # q, k, v are one fused Wqkv: PEFT adapts it as one matrix
    "albert": ("q,v,ffn_out", ["query", "value", "ffn_output"]),  # the one shared layer: one LoRA at every depth
    "qwen2": ("q,v", ["q_proj", "v_proj"]),
    "qwen3": ("q,k,v,o", ["q_proj", "k_proj", "v_proj", "o_proj"]),
    "mistral": ("v,ffn_in", ["v_proj", "gate_proj", "up_proj"]),
    "gemma": ("k,o,ffn_out", ["k_proj", "o_proj", "down_proj"]),
    "phi3": ("o,ffn_in,ffn_out", ["o_proj", "gate_up_proj", "down_proj"]),
}


@pytest.mark.parametrize("kind", list(PEFT_LORA))
def test_lora_logits_equal_peft(kind):
    targets, names = PEFT_LORA[kind]
    base = base_model(kind, pooled=False)
    ours = apply_petl(clone(base), [make_config("lora", targets=targets, rank=2, alpha=6)])
    _perturb_owned(ours, "lora")  # the head stays as in base: PEFT's trained copy of it starts from the same values
    theirs = peft.get_peft_model(clone(base), peft.LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=6, target_modules=names))
    theirs_params = dict(theirs.named_parameters())
    ours_lora = {n: p for n, p in ours.named_parameters() if ".lora_" in n}
    with torch.no_grad():
        for name, p in ours_lora.items():
            theirs_params[f"base_model.model.{name.replace('.weight', '.default.weight')}"].copy_(p)
    assert len(ours_lora) == sum(".lora_" in n for n in theirs_params)  # the same modules adapted, no more
    theirs.eval()
    assert torch.allclose(logits(ours), logits(theirs), atol=1e-5)
    assert not torch.allclose(logits(ours), logits(base), atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_prompt_at_start_equals_peft_prompt_tuning(kind):
    base = base_model(kind, pooled=False)
    p = 3
    # token_dim: the token embeddings' width, which PEFT reads from hidden_size (wrong for ALBERT's 16); num_attention_heads:
    # PEFT asks for it where the config names it otherwise (DistilBERT), and prompt tuning does not use it
    cfg = peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=p, token_dim=input_embedding_width(base), num_attention_heads=2)
    theirs = peft.get_peft_model(clone(base), cfg).eval()
    ours = apply_petl(clone(base), [make_config("prompt", length=p, position="start")])
    with torch.no_grad():
        ours.soft_prompt.embeddings.copy_(theirs.prompt_encoder["default"].embedding.weight)
    assert torch.allclose(logits(ours), logits(theirs), atol=1e-5)


@pytest.mark.parametrize("kind,overrides", [("albert", {}), ("electra", {"embedding_size": 16})])  # ELECTRA-small: 16 < hidden 32
def test_prompt_exports_to_and_imports_from_peft_at_the_token_embeddings_width(tmp_path, kind, overrides):
    """Prompts are as wide as the token embeddings (ALBERT's and ELECTRA-small's embedding_size), not hidden_size."""
    from conftest import perturb

    from petl.peft_export import export_peft
    from petl.peft_import import load_peft

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_config(tiny_config(kind, **overrides)).eval()
    base.save_pretrained(tmp_path / "base")
    ours = apply_petl(clone(base), [make_config("prompt", length=3, position="start")])
    perturb(ours, scale=0.2)
    ours.eval()
    export_peft(ours, tmp_path / "peft", str(tmp_path / "base"))
    theirs = peft.PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(tmp_path / "base"), tmp_path / "peft")
    with torch.no_grad():
        assert torch.allclose(logits(ours), logits(theirs.eval()), atol=1e-5)
        assert torch.allclose(logits(load_peft(clone(base), tmp_path / "peft").eval()), logits(ours), atol=1e-5)


@pytest.mark.parametrize("kind", ["deberta-v2", "modernbert", "mpnet", "distilbert", "albert"])
def test_load_peft_refuses_a_prefix_adapter_where_peft_prefix_cannot_run_naming_the_adapter(tmp_path, kind):
    """Refused (deberta-v2, modernbert) or not runnable by PEFT (no past_key_values: mpnet, distilbert, albert):
    one line in terms of --load_peft, not of a --method the user never gave."""
    from petl.peft_import import load_peft

    base = base_model(kind, pooled=False)
    shape = dict(num_layers=base.config.num_hidden_layers, token_dim=H, num_attention_heads=2)
    peft.get_peft_model(clone(base), peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=2, **shape)).save_pretrained(tmp_path)
    with pytest.raises(PetlError, match=f"^--load_peft .*: a PREFIX_TUNING adapter is not supported for {kind}: ") as err:
        load_peft(base, tmp_path)
    assert "--method" not in str(err.value) and "\n" not in str(err.value)


PEFT_PREFIX = ["electra", "xlm-roberta", *DECODERS]  # attention with past_key_values: PEFT's prefix tuning applies


@pytest.mark.parametrize("kind", PEFT_PREFIX)
def test_prefix_with_shifted_positions_equals_peft_prefix_tuning(kind):
    base = base_model(kind, pooled=False)
    p, layers = 2, base.config.num_hidden_layers
    theirs = peft.get_peft_model(clone(base), peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=p)).eval()
    table = theirs.prompt_encoder["default"].embedding.weight.detach()  # (P, layers x (key, value) x key/value width)
    ours = apply_petl(clone(base), [make_config("prefix", length=p, shift_positions=True)])
    spec = arch_for(ours)
    with torch.no_grad():
        for block, (key, value) in zip(get_module(ours.base_model, spec.layers), unpack_prefix_table(table, layers), strict=True):
            prefix = get_module(block, spec.self_attn).prefix
            assert prefix.key.shape == (p, table.shape[1] // (2 * layers))
            prefix.key.copy_(key)
            prefix.value.copy_(value)
    ids, mask = batch()
    with torch.no_grad():
        if kind in DECODERS:  # PEFT 0.21's prefix forward passes use_cache twice to transformers 5.23's decoders: its own steps by hand
            cache = theirs.get_prompt(batch_size=ids.shape[0])
            wide = torch.cat([mask.new_ones(ids.shape[0], p), mask], dim=1)
            reference = theirs.base_model(input_ids=ids, attention_mask=wide, past_key_values=cache).logits
        else:
            reference = theirs(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(logits(ours), reference, atol=1e-5)


ORACLE_ELSEWHERE = {  # tests/test_peft_oracle.py (and test_ia3.py for IA3 on BERT)
    "bert": {"LoRA", "prefix", "prompt", "IA3"},
    "roberta": {"LoRA"},
    "gpt2": {"LoRA", "prefix", "prompt"},
    "llama": {"LoRA", "prefix", "prompt"},
}
PEFT_TESTED = {  # the PEFT oracle tests each architecture has, here or elsewhere
    kind: ORACLE_ELSEWHERE.get(kind, set())
    | ({"LoRA"} if kind in PEFT_LORA else set())
    | ({"prefix"} if kind in PEFT_PREFIX else set())
    | ({"prompt"} if kind in KINDS else set())  # test_prompt_at_start_equals_peft_prompt_tuning
    for kind in ARCHITECTURES
}


def test_readme_table_has_every_architecture_and_marks_exactly_the_refusals_tested_here():
    """The README's method x architecture table: a row per model_type in the map; a cell starts with
    "refused" exactly where this module expects the refusal, and "tested" everywhere else."""
    from conftest import REPO

    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index("### Architectures: method x architecture")
    first = next(i for i in range(start, len(lines)) if lines[i].startswith("|"))
    table = lines[first : next(i for i in range(first, len(lines)) if not lines[i].startswith("|"))]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    rows = {row.strip("|").split("|")[0].split()[0]: [cell.strip() for cell in row.strip("|").split("|")] for row in table[2:]}
    assert set(rows) == set(ARCHITECTURES)
    adapters = {"adapters": ["adapter", "houlsby", "pfeiffer", "parallel"]}
    columns = {method: i for i, title in enumerate(header[1:], 1) for method in adapters.get(title, title.split(", "))}
    assert set(METHODS) <= set(columns) and "frozen-layer cache" in columns
    for kind, cells in rows.items():
        for method in METHODS:
            refused = (kind, method) in REFUSED
            assert cells[columns[method]].startswith("refused" if refused else "tested"), (kind, method, cells[columns[method]])
        cache = cells[columns["frozen-layer cache"]]
        assert cache.startswith("refused" if kind in CACHE_REFUSED else "tested"), (kind, cache)
        # "equal to PEFT (tested)": exactly the pairs a PEFT oracle test here or in test_peft_oracle.py covers, and LoRA
        # qualified where the oracle leaves out q, k, v (slots of a fused projection PEFT adapts as one matrix)
        claims = [item.strip() for item in re.sub(r"\([^)]*\)", "", cells[columns["equal to PEFT (tested)"]]).split(",")]
        assert {claim.split()[0] for claim in claims} == PEFT_TESTED[kind], (kind, claims)
        if kind in PEFT_LORA and not set(PEFT_LORA[kind][0].split(",")) & {"q", "k", "v"}:
            assert f"LoRA (on {PEFT_LORA[kind][0].replace(',', ', ')} only" in cells[columns["equal to PEFT (tested)"]], kind


@pytest.mark.parametrize("kind", ["deberta-v2", "qwen2"])
def test_entry_point_trains_saves_and_reloads_a_new_architecture(kind, tmp_path, glue_dir, minilm_path):
    """run_glue.py on a saved tiny model (MiniLM's tokenizer): the loading path (the model's own head for
    an encoder, last-token pooling and the pair template for a decoder), training, the delta and its reload."""
    import json

    from conftest import run_glue_main
    from transformers import AutoTokenizer

    folder = tmp_path / "model"
    torch.manual_seed(0)
    AutoModel.from_config(tiny_config(kind, vocab_size=30522)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    common = ["--task_name", "rte", "--model_name_or_path", str(folder), "--max_train_samples", "16", "--max_seq_length", "64"]
    code, out = run_glue_main([*common, "--method", "lora", "--lora_layers", "1", "--num_train_epochs", "1"], tmp_path, glue_dir=glue_dir)
    assert code == 0
    record = json.loads((out / "results.json").read_text())
    code, again = run_glue_main([*common, "--load_petl", str(out)], tmp_path, "reload", glue_dir=glue_dir)
    assert code == 0
    assert json.loads((again / "results.json").read_text())["test_metrics"]["loss"] == pytest.approx(
        record["test_metrics"]["loss"], abs=1e-9
    )


def test_prompts_start_at_gemma_token_embeddings_as_the_model_scales_them():
    """Gemma multiplies its token embeddings by sqrt(hidden) inside embed_tokens: prompts initialised from the
    vocabulary (prompt tuning, IDPG's generator) are the module's outputs, not raw table rows."""
    base = base_model("gemma")
    embed = base.backbone.embed_tokens
    with torch.no_grad():
        scaled = embed(torch.arange(VOCAB))
    assert not torch.allclose(scaled, embed.weight)  # the scale is real (sqrt(32))

    def rows_of_scaled_vocabulary(rows: torch.Tensor) -> bool:
        return all(torch.isclose(scaled, row, atol=1e-6).all(dim=1).any() for row in rows)

    prompt = apply_petl(clone(base), [make_config("prompt", length=3, init="vocab")])
    assert rows_of_scaled_vocabulary(prompt.soft_prompt.embeddings.detach())
    idpg = apply_petl(clone(base), [make_config("idpg", variant="reparam", hidden=4, prompt_length=2)])
    assert rows_of_scaled_vocabulary(idpg.idpg.generator.up.bias.detach().view(2, H))

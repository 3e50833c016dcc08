"""IA3: identity at init, parameter count, training, save/load, merge, the PEFT oracle, the CLI."""

from __future__ import annotations

import peft
import pytest
import torch
from conftest import TINY, clone, decoder_batch, tiny_batch, tiny_decoder, tiny_model

from petl.core import apply_petl, load_petl, merge_petl, save_petl, trainable_summary, unmerge_petl
from petl.errors import PetlError
from petl.registry import make_config
from petl.state import get_state
from petl.training import build_param_groups

H, I, L = TINY["hidden_size"], TINY["intermediate_size"], TINY["num_hidden_layers"]
ENCODERS = ["bert", "roberta", "mpnet"]
DECODERS = ["gpt2", "llama"]
# scaled widths per layer: k, v, FFN activation. Llama: 2 key/value heads of 8 (grouped-query); GPT-2: FFN 4H
WIDTHS = {**{a: (H, H, I) for a in ENCODERS}, "gpt2": (H, H, 4 * H), "llama": (16, 16, 64)}


def build(arch: str) -> torch.nn.Module:
    return tiny_model(arch) if arch in ENCODERS else tiny_decoder(arch)


def logits(model: torch.nn.Module, arch: str) -> torch.Tensor:
    ids, mask = tiny_batch() if arch in ENCODERS else decoder_batch()
    return model(input_ids=ids, attention_mask=mask).logits


def randomise(model: torch.nn.Module, seed: int = 3, only: str = "") -> None:
    """Every trainable tensor (whose name contains `only`) off its initial value, so nothing can pass on ones or zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and only in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)


def ia3_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if ".ia3_" in n}


@pytest.mark.parametrize("arch", ENCODERS + DECODERS)
def test_identity_at_init_and_parameter_count(arch):
    base = build(arch)
    model = apply_petl(clone(base), "ia3")
    assert torch.equal(logits(model, arch), logits(base, arch))
    assert trainable_summary(model)["trainable_parameters_without_head"] == L * sum(WIDTHS[arch])
    rows = [r for r in trainable_summary(model)["rows"] if r["method"] == "ia3"]
    assert [(r["layer"], r["parameters"]) for r in rows] == [(layer, sum(WIDTHS[arch])) for layer in range(L)]
    randomise(model)
    assert not torch.allclose(logits(model, arch), logits(base, arch), atol=1e-4)


@pytest.mark.parametrize("targets,layers", [("k", "0"), ("v,ffn", "1-2"), ("ffn", "all")])
def test_targets_and_layers_choose_the_vectors(targets, layers):
    model = apply_petl(tiny_model("bert"), [make_config("ia3", targets=targets, layers=layers)])
    chosen = {"0": [0], "1-2": [1, 2], "all": [0, 1, 2]}[layers]
    paths = {"k": "attention.self.key.ia3_scale", "v": "attention.self.value.ia3_scale", "ffn": "output.dense.ia3_input_scale"}
    expected = {f"bert.encoder.layer.{i}.{paths[t]}" for i in chosen for t in targets.split(",")}
    assert set(ia3_parameters(model)) == expected


@pytest.mark.parametrize(
    "options,message",
    [({"targets": "q"}, "unknown target 'q'; allowed: k, v, ffn"), ({"layers": "3"}, "--ia3_layers: layer 3 is out of range")],
)
def test_bad_options_are_one_clear_error(options, message):
    with pytest.raises(PetlError, match=message):
        apply_petl(tiny_model("bert"), [make_config("ia3", **options)])


@pytest.mark.parametrize("arch", ["roberta", "gpt2"])
def test_only_ia3_vectors_train_undecayed_and_frozen_weights_stay_bit_identical(arch):
    model = apply_petl(build(arch), "ia3")
    vectors = ia3_parameters(model)
    heads = {n for n, (m, _) in get_state(model).owner.items() if m == "head"}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(vectors) | heads
    groups = build_param_groups(model, 1e-3, 0.1, None, 5e-3)
    ia3_group = [g for g in groups if any(p is vectors[next(iter(vectors))] for p in g["params"])]
    assert ia3_group[0]["group_name"] == "petl/no_decay" and ia3_group[0]["lr"] == 5e-3  # no decay pulling scales to 0
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in vectors.items()}
    model.train()
    opt = torch.optim.AdamW(groups)
    ids, mask = tiny_batch() if arch in ENCODERS else decoder_batch()
    model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 1])).loss.backward()
    opt.step()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], t) for n, t in frozen.items())
    assert all(not torch.equal(params[n], t) for n, t in before.items())


@pytest.mark.parametrize("arch", ["mpnet", "llama"])
def test_save_and_load_round_trip(arch, tmp_path):
    base = build(arch)
    model = apply_petl(clone(base), [make_config("ia3", targets="k,ffn", layers="1,2")])
    randomise(model)
    save_petl(model, tmp_path)
    restored = load_petl(clone(base), tmp_path)
    assert torch.equal(logits(restored, arch), logits(model, arch))


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_merge_keeps_logits_and_unmerge_restores_weights(arch):
    model = apply_petl(build(arch), "ia3")
    randomise(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    unmerged = logits(model, arch)
    scaled_modules = 3 if arch != "gpt2" else 2  # GPT-2: k and v are slots of one c_attn
    assert merge_petl(model) == L * scaled_modules
    assert merge_petl(model) == 0  # already merged
    assert torch.allclose(logits(model, arch), unmerged, atol=1e-5)
    changed = {n for n, p in model.named_parameters() if n in weights and not torch.equal(p, weights[n])}
    assert changed and all(".key." in n or ".value." in n or "k_proj" in n or "v_proj" in n or "down_proj" in n
                           or "c_attn" in n or "mlp.c_proj" in n or ".output.dense." in n for n in changed)  # fmt: skip
    assert not any("attention.output.dense" in n or n.endswith(("output.dense.bias", "down_proj.bias")) for n in changed)
    assert unmerge_petl(model) == L * scaled_modules
    assert torch.allclose(logits(model, arch), unmerged, atol=1e-5)
    assert all(torch.allclose(p, weights[n], atol=1e-6) for n, p in model.named_parameters() if n in weights)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_merge_folds_additive_methods_before_the_scaling(arch):
    """LoRA and BitFit on the very projections IA3 scales: the scale applies to their updates too,
    so folding must add them first and scale after (and unfold in reverse), whatever the --method order."""
    base = build(arch)
    model = apply_petl(
        clone(base),
        [make_config("ia3", targets="k,v"), make_config("lora", targets="k,v", rank=2), make_config("bitfit", targets="k,v")],
    )
    randomise(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    unmerged = logits(model, arch)
    merge_petl(model)
    assert torch.allclose(logits(model, arch), unmerged, atol=1e-5)
    unmerge_petl(model)
    assert torch.allclose(logits(model, arch), unmerged, atol=1e-5)
    assert all(torch.allclose(p, weights[n], atol=1e-6) for n, p in model.named_parameters() if n in weights)


def test_unmerge_refuses_a_vector_with_zeros_and_changes_nothing():
    model = apply_petl(tiny_model("bert"), [make_config("ia3", layers="0")])
    randomise(model)
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.value.ia3_scale[3] = 0.0
    merge_petl(model)
    merged = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(PetlError, match=r"unmerge: bert\.encoder\.layer\.0\.attention\.self\.value\.ia3_scale has zero entries"):
        unmerge_petl(model)
    assert all(torch.equal(p, merged[n]) for n, p in model.named_parameters())


def test_logits_equal_peft_ia3():
    """PEFT's IA3 on k, v and the FFN output projection (a feedforward module: its input is scaled),
    at layers 0 and 2, with the same random vectors: the same logits, the same vector count."""
    base = tiny_model("bert")
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in base.named_parameters():
            if name.endswith(".bias"):  # HF initialises biases to zero: k/v scaling must be seen to scale them too
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        base.classifier.weight.mul_(100)  # logits of order 1 (the tiny model's are ~0.01), so 1e-5 means something
    ours = apply_petl(clone(base), [make_config("ia3", layers="0,2")])
    randomise(ours, only=".ia3_")  # the head stays as in `base`, which PEFT copies
    ffn_out = r".*\.layer\.(0|2)\.output\.dense"
    cfg = peft.IA3Config(
        task_type="SEQ_CLS", target_modules=rf".*\.layer\.(0|2)\.attention\.self\.(key|value)|{ffn_out}", feedforward_modules=ffn_out
    )
    theirs = peft.get_peft_model(clone(base), cfg).eval()
    their_vectors = {n: p for n, p in theirs.named_parameters() if ".ia3_l." in n}
    assert len(their_vectors) == len(ia3_parameters(ours)) == 2 * 3
    with torch.no_grad():
        for name, p in ia3_parameters(ours).items():
            module = name.rsplit(".", 1)[0]
            their_vectors[f"base_model.model.{module}.ia3_l.default"].copy_(
                p.view_as(their_vectors[f"base_model.model.{module}.ia3_l.default"])
            )
    reference = logits(theirs, "bert")
    assert reference.abs().max() > 0.1
    assert torch.allclose(logits(ours, "bert"), reference, atol=1e-5)
    assert not torch.allclose(logits(base, "bert"), reference, atol=1e-3)
    theirs.merge_adapter()  # and PEFT's merge folds into the same weights as ours
    merge_petl(ours)
    ours_weights = {n: p for n, p in ours.named_parameters() if n.endswith((".weight", ".bias")) and ".layer." in n}
    theirs_weights = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in theirs.named_parameters()}
    assert all(torch.allclose(p, theirs_weights[n], atol=1e-6) for n, p in ours_weights.items())


def test_dry_run_through_run_glue(tmp_path, glue_dir, capsys):
    import run_glue

    argv = ["--model_name_or_path", "minilm-l6", "--num_hidden_layers", "2", "--task_name", "mrpc", "--glue_dir", str(glue_dir)]
    code = run_glue.main([*argv, "--output_dir", str(tmp_path / "out"), "--method", "ia3", "--ia3_targets", "v,ffn", "--dry_run"])
    assert code == 0
    report = capsys.readouterr().out
    hidden, ffn = 384, 1536  # MiniLM-L6
    assert f"trainable {2 * (hidden + ffn) + 384 * 384 + 384 + 2 * 384 + 2:,} (without head {2 * (hidden + ffn):,}" in report


@pytest.mark.parametrize("arch", ENCODERS + DECODERS)
def test_ia3_with_prefix_is_the_same_model_whatever_the_method_order(arch):
    """IA3 scales the projections' keys and values, never the prefix rows (as PEFT): on every
    architecture, `ia3,prefix` and `prefix,ia3` with the same tensors give the same logits."""
    first, second = build(arch), build(arch)
    apply_petl(first, [make_config("ia3"), make_config("prefix")])
    apply_petl(second, [make_config("prefix"), make_config("ia3")])
    randomise(first)
    second.load_state_dict(first.state_dict())  # the same tensors in both models
    torch.testing.assert_close(logits(first, arch), logits(second, arch), rtol=0, atol=1e-6)

"""Decoder backbones (GPT-2 with its fused Conv1D c_attn, Llama with grouped-query attention and a
gated FFN), P-tuning and IDPG, on tiny random configs."""

from __future__ import annotations

import pytest
import torch
from conftest import DECODER_VOCAB, TINY, clone, collate, decoder_batch, decoder_config, perturb, tiny_decoder, tiny_model, token_dataset
from transformers import AutoModel, AutoTokenizer

from petl.core import apply_petl, is_new_parameter, load_petl, merge_petl, save_petl, trainable_summary, unmerge_petl
from petl.data import check_pair_template, join_pairs
from petl.errors import PetlError
from petl.registry import make_config
from petl.state import get_state

KINDS = ["gpt2", "llama"]
H, L, VOCAB = TINY["hidden_size"], TINY["num_hidden_layers"], DECODER_VOCAB


def logits(model, seed: int = 1):
    ids, mask = decoder_batch(seed)
    return model(input_ids=ids, attention_mask=mask).logits


IDENTITY_AT_INIT = [
    ("lora", {"targets": "q,k,v,o,ffn_in,ffn_out", "rank": 4}),
    ("adapter", {"dim": 8, "placement": "attn,ffn"}),
    ("adapter", {"dim": 8, "placement": "attn,ffn", "style": "parallel"}),
    ("houlsby", {"dim": 8}),
    ("pfeiffer", {"dim": 8}),
    ("parallel", {"dim": 8}),
    ("ffn", {"layers": "1"}),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method,options", IDENTITY_AT_INIT + [("bitfit", {})])
def test_identity_at_init_on_decoders(kind, method, options):
    base = tiny_decoder(kind)
    if method == "bitfit" and kind == "llama":
        with pytest.raises(PetlError, match=r"BitFit needs biases, but self_attn.q_proj in llama has none"):
            apply_petl(clone(base), [make_config(method, **options)])
        return
    model = apply_petl(clone(base), [make_config(method, **options)])
    assert torch.allclose(logits(model), logits(base), atol=1e-6, rtol=0)
    perturb(model)
    assert not torch.allclose(logits(model), logits(base), atol=1e-4)


ALL_METHODS = IDENTITY_AT_INIT + [
    ("bitfit", {"targets": "q,v,o,ffn_in,ffn_out,attn_ln,ffn_ln"}),
    ("prefix", {"length": 3, "layers": "0,2"}),
    ("prefix", {"length": 3, "mlp_dim": 16}),
    ("prompt", {"length": 3}),
    ("ptuning", {"length": 3}),
    ("idpg", {"variant": "reparam", "hidden": 8, "prompt_length": 2}),
    ("full", {}),
    ("head", {}),
]


@pytest.mark.parametrize(
    "kind,method,options",
    [(kind, m, o) for kind in KINDS for m, o in ALL_METHODS if not (kind == "llama" and m == "bitfit")],  # llama: no biases
)
def test_only_owned_tensors_train_and_deltas_round_trip(kind, method, options, tmp_path):
    base = tiny_decoder(kind)
    model = apply_petl(clone(base), [make_config(method, **options)])
    owned = set(get_state(model).owner)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == owned
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    ids, mask = decoder_batch()
    out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 1]))
    out.loss.backward()
    opt.step()
    model.eval()
    for name, p in model.named_parameters():
        if name in owned:
            continue
        assert torch.equal(p, before[name]), f"frozen {name} changed"
    changed = [n for n, p in model.named_parameters() if n in owned and not torch.equal(p, before[n])]
    assert changed and (method == "head" or any(not n.startswith(("head.", "score.")) for n in changed))
    save_petl(model, tmp_path / "delta")
    restored = load_petl(clone(base), tmp_path / "delta")
    assert torch.allclose(logits(restored), logits(model), atol=1e-6)


def test_gpt2_fused_qkv_slices_change_only_their_columns():
    """LoRA and BitFit on q of GPT-2's fused c_attn leave the k and v columns untouched."""
    base = tiny_decoder("gpt2")
    x = torch.randn(2, 5, H)
    ref = base.backbone.h[0].attn.c_attn(x)
    for method, options, counts in (
        ("lora", {"targets": "q,v", "rank": 2, "layers": "0"}, 2 * (2 * H + H * 2)),
        ("bitfit", {"targets": "q", "layers": "0"}, H),
    ):
        model = apply_petl(clone(base), [make_config(method, **options)])
        assert trainable_summary(model)["trainable_parameters_without_head"] == counts
        perturb(model)
        out = model.backbone.h[0].attn.c_attn(x)
        assert not torch.allclose(out[..., :H], ref[..., :H], atol=1e-4)  # q changed
        assert torch.equal(out[..., H : 2 * H], ref[..., H : 2 * H])  # k untouched
        v_changed = not torch.allclose(out[..., 2 * H :], ref[..., 2 * H :], atol=1e-4)
        assert v_changed == (method == "lora")


@pytest.mark.parametrize("kind", KINDS)
def test_lora_merge_and_unmerge_on_decoders(kind):
    model = apply_petl(tiny_decoder(kind), [make_config("lora", targets="q,k,v,o,ffn_in,ffn_out", rank=2)])
    perturb(model)
    before = logits(model)
    modules_per_layer = 4 if kind == "gpt2" else 7  # GPT-2: c_attn (q, k, v slots), c_proj, c_fc, mlp.c_proj
    assert merge_petl(model) == L * modules_per_layer
    assert torch.allclose(logits(model), before, atol=1e-5)
    unmerge_petl(model)
    assert torch.allclose(logits(model), before, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_last_token_pooling_ignores_right_padding_with_pad_equal_eos(kind):
    """A right-padded row (pad == eos, and an eos inside the text) gets the logits it gets alone."""
    model = tiny_decoder(kind)
    ids, mask = decoder_batch()
    together = model(input_ids=ids, attention_mask=mask).logits
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        alone = model(input_ids=ids[row : row + 1, :n], attention_mask=mask[row : row + 1, :n]).logits
        assert torch.allclose(together[row], alone[0], atol=1e-5)
    # pooling from pad ids would stop at the eos inside row 0: the mask-based position differs from it
    assert int((ids[0] != 1).long().argmin()) != int(mask[0].sum()) - 1


@pytest.mark.parametrize("kind", KINDS)
def test_prefix_equals_a_real_key_value_cache(kind):
    """Prefix tables set to the keys/values the model computes for P real tokens give exactly the
    model run on [those tokens; text]: causal mask, positions and grouped-query heads all right."""
    base = tiny_decoder(kind)
    p, t = 4, 6
    g = torch.Generator().manual_seed(7)
    prefix_ids = torch.randint(2, VOCAB, (1, p), generator=g)
    ids = torch.randint(2, VOCAB, (2, t), generator=g)
    backbone = base.backbone
    with torch.no_grad():
        cache = backbone(input_ids=prefix_ids, use_cache=True).past_key_values
        full = backbone(input_ids=torch.cat([prefix_ids.expand(2, -1), ids], dim=1)).last_hidden_state[:, p:]
    model = apply_petl(clone(base), [make_config("prefix", length=p, shift_positions=True)])
    layers = model.backbone.h if kind == "gpt2" else model.backbone.layers
    with torch.no_grad():
        for i, layer in enumerate(layers):
            attn = layer.attn if kind == "gpt2" else layer.self_attn
            keys, values = cache.layers[i].keys[0], cache.layers[i].values[0]  # (kv heads, P, head dim)
            attn.prefix.key.copy_(keys.transpose(0, 1).reshape(p, -1))
            attn.prefix.value.copy_(values.transpose(0, 1).reshape(p, -1))
        ours = model.backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        ours_no_mask = model.backbone(input_ids=ids).last_hidden_state  # mask None: causal must still hold
        padded = torch.ones_like(ids)
        padded[1, -2:] = 0  # a right-padded row: a 4-D padding mask, widened by the prefix
        ours_padded = model.backbone(input_ids=ids, attention_mask=padded).last_hidden_state
    assert torch.allclose(ours, full, atol=1e-5)
    assert torch.allclose(ours_no_mask, full, atol=1e-5)
    assert torch.allclose(ours_padded[0], full[0], atol=1e-5) and torch.allclose(ours_padded[1, :-2], full[1, :-2], atol=1e-5)


def test_ptuning_trains_with_batch_size_one():
    model = apply_petl(tiny_decoder("llama"), [make_config("ptuning", length=4)])
    encoder = model.ptuning_encoder
    before = encoder.embedding.detach().clone()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    ids, mask = (x[:1] for x in decoder_batch())
    for _ in range(2):
        loss = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([1])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(encoder.embedding, before)
    counts = trainable_summary(model)["trainable_parameters_without_head"]
    lstm = sum(p.numel() for p in encoder.lstm.parameters())
    mlp = sum(p.numel() for p in encoder.mlp.parameters())
    assert counts == 4 * H + lstm + mlp


# ---------------------------------------------------------------------------------------------
# IDPG


def idpg_inputs(encoder_dir: str, texts: list[str]) -> dict:
    tok = AutoTokenizer.from_pretrained(encoder_dir)
    enc = tok(texts, padding=True, return_tensors="pt")
    return {f"idpg_{k}": v for k, v in enc.items()}


@pytest.mark.parametrize("variant", ["original", "trained", "prompt_only", "reparam"])
def test_idpg_variants(variant, tiny_encoder_dir, tmp_path):
    base = tiny_decoder("gpt2")
    cfg = make_config("idpg", encoder=tiny_encoder_dir, variant=variant, hidden=8, prompt_length=3)
    model = apply_petl(clone(base), [cfg])
    texts = ["a short first text", "another, different and longer input sentence", "third"]
    extra = idpg_inputs(tiny_encoder_dir, texts)
    ids, mask = decoder_batch()
    prompts = model.idpg(**{k.removeprefix("idpg_"): v for k, v in extra.items()}) if variant in ("original", "trained") else model.idpg()
    per_instance = variant in ("original", "trained")
    assert prompts.shape == ((3, 3, H) if per_instance else (1, 3, H))
    if per_instance:
        assert not torch.allclose(prompts[0], prompts[1])  # instance-dependent
        assert get_state(model).extra_inputs["idpg"].name_or_path == tiny_encoder_dir
    out = model(input_ids=ids, attention_mask=mask, **(extra if per_instance else {})).logits
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    summary = trainable_summary(model)
    rows = {r["method"]: r["parameters"] for r in summary["rows"]}
    enc_dim = 24 if variant != "reparam" else H
    assert rows["idpg/generator"] == enc_dim * 8 + 8 + 8 * 3 * H + 3 * H
    encoder_params = 0 if variant == "reparam" else sum(p.numel() for p in model.idpg.encoder.parameters())
    assert rows.get("idpg/encoder", 0) == (encoder_params if variant == "trained" else 0)
    assert summary["auxiliary_frozen_parameters"] == (encoder_params if variant in ("original", "prompt_only") else 0)
    assert summary["backbone_parameters"] == sum(p.numel() for p in base.backbone.parameters())
    assert rows.get("idpg/input prompt", 0) == (3 * 24 if variant == "prompt_only" else 0)
    if variant == "trained":
        name = next(n for n in get_state(model).owner if ".encoder." in n)
        assert not is_new_parameter(model, name)  # pretrained encoder: --learning_rate, not --petl_lr
    if variant in ("original", "prompt_only"):
        model.train()
        assert not model.idpg.encoder.training  # frozen encoder: no dropout in its features
    # round trip: the frozen encoder is rebuilt from its path, trained tensors come from the delta
    perturb(model)
    save_petl(model, tmp_path / "delta")
    restored = load_petl(clone(base), tmp_path / "delta")
    restored.eval(), model.eval()
    kwargs = extra if per_instance else {}
    assert torch.allclose(
        restored(input_ids=ids, attention_mask=mask, **kwargs).logits, model(input_ids=ids, attention_mask=mask, **kwargs).logits, atol=1e-5
    )


def test_idpg_composes_with_lora_and_works_on_encoders(tiny_encoder_dir):
    for base in (tiny_decoder("llama"), tiny_model("bert")):
        model = apply_petl(
            clone(base), [make_config("idpg", encoder=tiny_encoder_dir, hidden=8, prompt_length=2), make_config("lora", rank=2)]
        )
        extra = idpg_inputs(tiny_encoder_dir, ["one", "two words", "three more words"])
        ids = torch.randint(5, VOCAB, (3, 7))
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits
        assert out.shape == (3, 2)
        assert {m for m, _ in get_state(model).owner.values()} == {"idpg", "lora", "head"}


def test_bad_decoder_and_prompt_inputs_are_one_line_errors(tmp_path):
    cases = [
        (lambda: make_config("prompt", length=0), r"--prompt_length 0 is invalid; allowed: >= 1"),
        (lambda: make_config("ptuning", length=0), r"--ptuning_length 0 is invalid"),
        (lambda: make_config("idpg", prompt_length=0), r"--idpg_prompt_length 0 is invalid; allowed: >= 1"),
        (lambda: make_config("idpg", variant="magic"), r"--idpg_variant 'magic' is not one of original, trained"),
        (
            lambda: apply_petl(tiny_decoder("gpt2"), [make_config("idpg", encoder=str(tmp_path / "nope"))]),
            r"--idpg_encoder '.*nope' cannot be loaded: --model_name_or_path '.*nope' does not exist",
        ),
        (
            lambda: apply_petl(tiny_decoder("gpt2"), [make_config("idpg", encoder=str(tmp_path))]),
            r"--idpg_encoder '.*' cannot be loaded: .*folder without config.json",
        ),
        (lambda: check_pair_template("{s1} and then"), r"--pair_template '\{s1\} and then' lacks \{s2\}"),
        (lambda: apply_petl(tiny_decoder("gpt2"), "prompt,ptuning"), r"combines prompt,ptuning, which are all input prompt methods"),
    ]
    for call, match in cases:
        with pytest.raises(PetlError, match=match) as err:
            call()
        assert "\n" not in str(err.value)


def test_pair_template_joins_with_an_explicit_boundary():
    joined, second = join_pairs(["The cat sat."], ["A cat was sitting."], "{s1}\n{s2}")
    assert joined == ["The cat sat.\nA cat was sitting."] and second is None
    assert join_pairs(["x"], None, "{s1} || {s2}") == (["x"], None)  # single sentences stay as they are


def test_decoder_end_to_end_through_run_glue(tmp_path, glue_dir, minilm_path, tiny_encoder_dir):
    """run_glue on a tiny local Llama whose tokenizer has no pad token: pad = eos is set, pairs are
    joined by the template, pooling is `last`, IDPG's encoder tokens are collated; reload works."""
    import run_glue

    folder = tmp_path / "tiny-llama"
    model = AutoModel.from_config(decoder_config("llama", vocab=30522))
    model.config.pad_token_id = None
    model.save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(minilm_path)
    tok.pad_token = None
    tok.eos_token = "[SEP]"
    tok.save_pretrained(folder)
    common = ["--task_name", "mrpc", "--glue_dir", str(glue_dir), "--model_name_or_path", str(folder), "--max_train_samples", "16"]
    common += ["--max_eval_samples", "16", "--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--report_to", "none"]
    common += ["--disable_tqdm", "true", "--save_strategy", "no"]
    out = tmp_path / "run"
    args = ["--method", "idpg,lora", "--idpg_encoder", tiny_encoder_dir, "--idpg_hidden", "8", "--lora_rank", "2", "--output_dir", str(out)]
    record = run_glue.run(*run_glue.parse_args(common + args))
    assert record["model"]["pooler_type"] == "last" and record["model"]["pair_template"] == "{s1}\n{s2}"
    assert {r["method"] for r in record["parameter_report"]} == {"idpg/generator", "lora", "head"}
    reloaded = run_glue.run(*run_glue.parse_args(common + ["--load_petl", str(out), "--output_dir", str(tmp_path / "eval")]))
    assert reloaded["validation_metrics"]["loss"] == pytest.approx(record["validation_metrics"]["loss"], rel=1e-5)
    with pytest.raises(PetlError, match="lacks"):
        run_glue.run(*run_glue.parse_args(common + ["--method", "lora", "--pair_template", "{s1}", "--output_dir", str(tmp_path / "x")]))


@pytest.mark.parametrize(
    "method,options,start",
    [("lora", {"targets": "q,v,ffn_in", "rank": 2, "layers": "1-2"}, 1), ("prefix", {"length": 3, "layers": "2"}, 2), ("head", {}, L)],
)
def test_llama_cached_logits_equal_uncached_and_gpt2_is_refused(method, options, start):
    """Llama's embeddings are one module and its positions are rotary (inside attention), so the
    frozen-layer cache can stand in for the embeddings and the layers below the first trained one."""
    from petl.cache import build_cache, cache_start_layer, run_from_layer

    with pytest.raises(PetlError, match="not supported for gpt2"):
        cache_start_layer(apply_petl(tiny_decoder("gpt2"), [make_config(method, **options)]))
    model = apply_petl(tiny_decoder("llama"), [make_config(method, **options)])
    perturb(model)
    assert cache_start_layer(model) == start
    ds = token_dataset()
    cache = build_cache(model, start, ds, collate, batch_size=3)
    batch_ = collate([ds[i] for i in range(len(ds))])  # right padding, as decoders use
    with torch.no_grad():
        expected = model(**batch_).logits
        with run_from_layer(model, start, cache.padded(list(range(len(ds))), batch_["attention_mask"])):
            got = model(**batch_).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()

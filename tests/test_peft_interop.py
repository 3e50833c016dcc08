"""Interoperability: PEFT export and import (LoRA, prefix, prompt) with PEFT itself as the oracle,
and merge-and-save to a plain HF model that transformers loads with nothing missing or unexpected.
Tiny random BERT and Llama bases saved to tmp_path (no hub); the run_glue.py cases use FAST."""

from __future__ import annotations

import json
import logging

import peft
import pytest
import torch
from conftest import DECODER_VOCAB, clone, decoder_batch, perturb, run_glue_main, tiny_batch, tiny_decoder, tiny_model
from transformers import AutoModelForSequenceClassification

from petl import load_peft, merge_and_unload
from petl.core import apply_petl, load_petl
from petl.errors import PetlError
from petl.merge import MERGE_INFO_FILE, save_merged
from petl.models import load_model
from petl.peft_export import EXPORT_INFO_FILE, export_peft
from petl.registry import make_config

SHORT = ["--task_name", "mrpc", "--max_train_samples", "32", "--max_eval_samples", "16", "--max_steps", "2",
         "--per_device_train_batch_size", "16", "--max_seq_length", "48", "--learning_rate", "1e-2"]  # fmt: skip


def _base(kind: str, folder) -> tuple[torch.nn.Module, str]:
    """A tiny random base with HF's own head, saved to `folder` (what PEFT and from_pretrained load)."""
    model = tiny_model("bert") if kind == "bert" else tiny_decoder("llama", pooler="model")
    model.save_pretrained(folder)
    return model, str(folder)


def _logits(model, kind: str) -> torch.Tensor:
    ids, mask = tiny_batch() if kind == "bert" else decoder_batch()
    extra = {"token_type_ids": torch.zeros_like(ids)} if kind == "bert" else {}
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, **extra).logits


EXPORTED = {
    "lora": {"targets": "q,v,ffn_out", "rank": 2, "alpha": 6, "layers": "1-2"},
    "prefix": {"length": 3, "shift_positions": True},
    "prefix-mlp": {"length": 3, "shift_positions": True, "mlp_dim": 8},  # exported as the tables its MLP produces
    "prompt": {"length": 3, "position": "start"},
}


@pytest.mark.parametrize(
    "kind,case", [("bert", "lora"), ("bert", "prefix"), ("bert", "prefix-mlp"), ("bert", "prompt"), ("llama", "lora"), ("llama", "prompt")]
)
def test_export_loads_in_peft_with_equal_logits(tmp_path, kind, case):
    base, base_dir = _base(kind, tmp_path / "base")
    ours = apply_petl(clone(base), [make_config(case.split("-")[0], **EXPORTED[case])])
    perturb(ours, scale=0.2)
    ours.eval()
    export_peft(ours, tmp_path / "peft", base_dir)
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "base").resolve())
    theirs = peft.PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base_dir), tmp_path / "peft").eval()
    assert torch.allclose(_logits(ours, kind), _logits(theirs, kind), atol=1e-5)
    assert not torch.allclose(_logits(base, kind), _logits(theirs, kind), atol=1e-3)  # the method and head did arrive
    assert json.loads((tmp_path / "peft" / EXPORT_INFO_FILE).read_text())["peft_type"] == config["peft_type"]
    back = load_peft(clone(base), tmp_path / "peft", base_dir).eval()  # and back: the round trip keeps the logits
    assert torch.allclose(_logits(back, kind), _logits(ours, kind), atol=1e-5)


def test_export_refuses_settings_peft_computes_differently_naming_the_one_to_use(tmp_path):
    base = tiny_model("bert")
    cases = [
        (make_config("prefix", length=2), "--prefix_shift_positions"),
        (make_config("prefix", length=2, shift_positions=True, layers="0,1"), "--prefix_layers all"),
        (make_config("prompt", length=2), "--prompt_position start"),
        (make_config("adapter"), "--export_peft writes one of lora, prefix, prompt"),
    ]
    for config, fragment in cases:
        with pytest.raises(PetlError, match=fragment) as err:
            export_peft(apply_petl(clone(base), [config]), tmp_path / "refused")
        assert "\n" not in str(err.value)
    pooled = apply_petl(tiny_decoder("llama", pooler="last"), [make_config("lora")])
    with pytest.raises(PetlError, match="--pooler_type model"):
        export_peft(pooled, tmp_path / "refused")
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())


def test_run_glue_export_names_the_packaged_origin_and_the_truncation_and_peft_reproduces_it(tmp_path, glue_dir, minilm_path):
    """minilm-l6 cut to 2 layers: the adapter names sentence-transformers/all-MiniLM-L6-v2, petl_export.json
    says how to load the base, and PEFT on that base gives the logits of the run's own saved delta."""
    args = [*SHORT, "--method", "prompt", "--prompt_length", "3", "--prompt_position", "start", "--pooler_type", "model"]
    code, out = run_glue_main([*args, "--export_peft", str(tmp_path / "peft")], tmp_path, glue_dir=glue_dir)
    assert code == 0
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    info = json.loads((tmp_path / "peft" / EXPORT_INFO_FILE).read_text())
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2" and config["peft_type"] == "PROMPT_TUNING"
    assert info["truncated"] and info["num_hidden_layers"] == 2 and info["base_num_hidden_layers"] == 6
    assert "num_hidden_layers=2" in info["load_base_with"] and info["model_name_or_path"] == "minilm-l6"
    ours = load_petl(load_model(minilm_path, 2, "model", num_hidden_layers=2), out).eval()
    hf_base = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2, num_hidden_layers=2)
    theirs = peft.PeftModel.from_pretrained(hf_base, tmp_path / "peft").eval()
    assert torch.allclose(_logits(ours, "bert"), _logits(theirs, "bert"), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# import: adapters PEFT made


IMPORTED = {
    "lora": lambda kind: peft.LoraConfig(
        task_type="SEQ_CLS", r=2, lora_alpha=6, layers_to_transform=[0, 2],
        target_modules=["query", "value"] if kind == "bert" else ["q_proj", "v_proj", "gate_proj", "up_proj"],
    ),
    "rslora": lambda kind: peft.LoraConfig(  # "dense": attention output, FFN in and out (the pooler's is outside layer 1)
        task_type="SEQ_CLS", r=4, lora_alpha=3, use_rslora=True, target_modules=["key", "dense"], layers_to_transform=[1],
    ),
    "prefix": lambda kind: peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=3),
    "prompt": lambda kind: peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=3),
}  # fmt: skip


@pytest.mark.parametrize(
    "kind,case", [("bert", "lora"), ("bert", "rslora"), ("bert", "prefix"), ("bert", "prompt"), ("llama", "lora"), ("llama", "prompt")]
)
def test_import_from_peft_gives_peft_logits_and_trains_on_only_owned_tensors(tmp_path, kind, case):
    base, base_dir = _base(kind, tmp_path / "base")
    theirs = peft.get_peft_model(clone(base), IMPORTED[case](kind))
    perturb(theirs, scale=0.2)  # trained-looking: LoRA's B is no longer zero, the classifier moved
    theirs.save_pretrained(tmp_path / "adapter")
    theirs.eval()
    ours = load_peft(clone(base), tmp_path / "adapter", base_dir).eval()
    assert torch.allclose(_logits(ours, kind), _logits(theirs, kind), atol=1e-5)
    assert not torch.allclose(_logits(ours, kind), _logits(base, kind), atol=1e-3)
    # training continues from PEFT's tensors: one step changes the logits, and only owned tensors
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    owned = set(ours.petl_state.owner)
    ids, mask = tiny_batch() if kind == "bert" else decoder_batch()
    ours.train()
    optimizer = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=0.5)
    ours(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 1])).loss.backward()
    optimizer.step()
    changed = {n for n, p in ours.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= owned
    assert any(not name.startswith(("classifier", "score", "bert.pooler")) for name in changed)  # the method's own tensors trained
    assert not torch.allclose(_logits(ours.eval(), kind), _logits(theirs, kind), atol=1e-4)


def test_import_of_a_lora_made_on_the_bare_backbone_finds_its_layers_under_the_classifiers_root(tmp_path):
    """PEFT on AutoModel names the layers `encoder.layer.0...`; the classifier has them under `bert.`."""
    base = tiny_model("bert")
    theirs = peft.get_peft_model(clone(base.bert), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"]))
    perturb(theirs, scale=0.2)
    theirs.save_pretrained(tmp_path / "adapter")
    ours = load_peft(clone(base), tmp_path / "adapter").eval()
    ids, mask = tiny_batch()
    with torch.no_grad():
        expected = theirs.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.allclose(ours.bert(input_ids=ids, attention_mask=mask).last_hidden_state, expected, atol=1e-5)
        assert not torch.allclose(base.bert(input_ids=ids, attention_mask=mask).last_hidden_state, expected, atol=1e-3)


def test_import_warns_when_the_adapter_names_another_base_and_refuses_other_shapes_or_depths(tmp_path, caplog):
    base, base_dir = _base("bert", tmp_path / "base")
    theirs = peft.get_peft_model(clone(base), IMPORTED["lora"]("bert"))
    theirs.save_pretrained(tmp_path / "adapter")
    config_file = tmp_path / "adapter" / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "base_model_name_or_path": "someone/other-model"}))
    with caplog.at_level(logging.WARNING, logger="petl.peft_import"):
        load_peft(clone(base), tmp_path / "adapter", base_dir)
    assert "made on base 'someone/other-model'" in caplog.text
    with pytest.raises(PetlError, match=r"has shape \(2, 32\); the model's is \(2, 48\) \(another base\?\)"):
        load_peft(tiny_model("bert", hidden_size=48), tmp_path / "adapter")
    with pytest.raises(PetlError, match="LoRA on layer 2, the model only 2 layers .*--num_hidden_layers"):
        load_peft(tiny_model("bert", num_hidden_layers=2), tmp_path / "adapter")
    peft.get_peft_model(clone(base), IMPORTED["prefix"]("bert")).save_pretrained(tmp_path / "prefix")
    with pytest.raises(PetlError, match="the prefix is for 3 layers .* the model has 2 layers"):
        load_peft(tiny_model("bert", num_hidden_layers=2), tmp_path / "prefix")


@pytest.mark.parametrize("method,options", [("prompt", {"length": 3, "position": "start"}), ("lora", {"targets": "q,v", "rank": 2})])
def test_import_of_a_truncated_runs_export_refuses_a_base_of_another_depth(tmp_path, method, options):
    """A prompt or an all-layer LoRA from 2 of 3 layers would run on the 3-layer base, silently otherwise."""
    from petl.peft_export import base_provenance

    _, base_dir = _base("bert", tmp_path / "base")
    model = apply_petl(load_model(base_dir, 2, "model", num_hidden_layers=2), [make_config(method, **options)])
    perturb(model, scale=0.2)
    export_peft(model.eval(), tmp_path / "peft", base_dir, info=base_provenance(base_dir, base_dir, model))
    refused = r"exported from a model of 2 layers \(petl_export.json\); this model has 3: pass --num_hidden_layers 2$"
    with pytest.raises(PetlError, match=refused):
        load_peft(load_model(base_dir, 2, "model"), tmp_path / "peft", base_dir)
    back = load_peft(load_model(base_dir, 2, "model", num_hidden_layers=2), tmp_path / "peft", base_dir).eval()
    assert torch.allclose(_logits(back, "bert"), _logits(model, "bert"), atol=1e-5)


@pytest.mark.parametrize(
    "config,named",
    [
        (lambda: peft.LoHaConfig(task_type="SEQ_CLS", r=2, target_modules=["query"]), "PEFT adapter type LOHA is not supported"),
        (lambda: peft.IA3Config(task_type="SEQ_CLS", target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"]),
         "PEFT adapter type IA3 is not supported"),
        (lambda: peft.AdaLoraConfig(task_type="SEQ_CLS", init_r=2, total_step=10, target_modules=["query"]),
         "PEFT adapter type ADALORA is not supported"),
        (lambda: peft.LoraConfig(task_type="SEQ_CLS", r=2, use_dora=True, target_modules=["query"]), "a LORA adapter with use_dora=True"),
        (lambda: peft.LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["word_embeddings"]), "LoRA on bert.embeddings.word_embeddings"),
        (lambda: peft.LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query"], layers_to_transform=[0], rank_pattern={"query": 4}),
         "per-module ranks"),
        # PiSSA also rewrites the base weights: PEFT's tensors alone do not give its logits
        (lambda: peft.LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query"], init_lora_weights="pissa"),
         "a LORA adapter with init_lora_weights='pissa'"),
        # a setting outside the known-harmless keys, with a non-default value, is refused by its key
        (lambda: {"some_future_option": 3}, "a LORA adapter with some_future_option=3"),
    ],
)  # fmt: skip
def test_import_refuses_adapters_it_cannot_compute_alike_in_one_line_naming_what_loads(tmp_path, config, named):
    base = tiny_model("bert")
    made = config()
    if isinstance(made, dict):  # extra keys written into a plain LoRA adapter's config
        plain = peft.LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query"])
        peft.get_peft_model(clone(base), plain).save_pretrained(tmp_path / "adapter")
        config_file = tmp_path / "adapter" / "adapter_config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **made}))
    else:
        peft.get_peft_model(clone(base), made).save_pretrained(tmp_path / "adapter")
    with pytest.raises(PetlError, match=named) as err:
        load_peft(clone(base), tmp_path / "adapter")
    assert "\n" not in str(err.value)
    if "not supported" in named or "a LORA adapter with" in named:
        assert "loadable: LORA (plain or rsLoRA), PREFIX_TUNING (without prefix_projection), PROMPT_TUNING" in str(err.value)


def test_run_glue_load_peft_trains_on_and_refuses_unsupported_types_with_exit_2(tmp_path, glue_dir, minilm_path, capsys):
    hf_base = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2, num_hidden_layers=2)
    theirs = peft.get_peft_model(hf_base, peft.LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["query", "value"]))
    perturb(theirs, scale=0.05)
    theirs.save_pretrained(tmp_path / "adapter")
    code, out = run_glue_main([*SHORT, "--load_peft", str(tmp_path / "adapter"), "--do_train"], tmp_path, glue_dir=glue_dir)
    assert code == 0
    record = json.loads((out / "results.json").read_text())
    assert record["method"] == "lora" and record["method_configs"][0]["layers"] == "all" and record["model"]["pooler_type"] == "model"
    trained = load_petl(load_model(minilm_path, 2, "model", num_hidden_layers=2), out)
    start = load_peft(
        AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2, num_hidden_layers=2), tmp_path / "adapter"
    )
    lora_a = "bert.encoder.layer.1.attention.self.query.lora_A.weight"
    assert not torch.equal(dict(trained.named_parameters())[lora_a], dict(start.named_parameters())[lora_a])
    capsys.readouterr()
    loha = peft.get_peft_model(tiny_model("bert"), peft.LoHaConfig(task_type="SEQ_CLS", r=2, target_modules=["query"]))
    loha.save_pretrained(tmp_path / "loha")
    code, refused = run_glue_main([*SHORT, "--load_peft", str(tmp_path / "loha")], tmp_path, "refused", glue_dir)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: --load_peft") and "PEFT adapter type LOHA is not supported; loadable: LORA" in err[-1]
    assert not refused.exists()
    code, _ = run_glue_main([*SHORT, "--load_peft", str(tmp_path / "adapter"), "--method", "lora"], tmp_path, "both", glue_dir)
    assert code == 2 and "omit --method" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# merge and save


def _assert_plain_reload(folder, ours, kind: str, layers: int) -> None:
    reloaded, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"] and not info["error_msgs"], info
    assert reloaded.config.num_hidden_layers == layers
    assert torch.allclose(_logits(reloaded.eval(), kind), _logits(ours, kind), atol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_merge_and_save_writes_a_plain_hf_model_with_the_same_logits_also_truncated(tmp_path, kind):
    _, base_dir = _base(kind, tmp_path / "base")
    methods = [make_config("lora", targets="q,v,ffn_in", rank=2), make_config("ia3")]
    if kind == "bert":
        methods.append(make_config("bitfit"))  # Llama's projections have no biases
    model = load_model(base_dir, 2, "model", num_hidden_layers=2)  # a truncated backbone: 2 of 3 layers
    apply_petl(model, methods)
    perturb(model, scale=0.2)
    model.eval()
    reference = _logits(model, kind)
    save_merged(model, tmp_path / "merged")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not hasattr(model, "petl_state")
    _assert_plain_reload(tmp_path / "merged", model, kind, layers=2)
    assert torch.allclose(_logits(model, kind), reference, atol=1e-5)
    assert json.loads((tmp_path / "merged" / MERGE_INFO_FILE).read_text())["num_hidden_layers"] == 2
    with pytest.raises(PetlError, match="not an empty folder"):  # a merged model never replaces another
        save_merged(apply_petl(tiny_model("bert"), [make_config("lora")]), tmp_path / "merged")


def test_merge_and_save_of_a_truncated_qwen2_cuts_its_per_layer_config_lists(tmp_path):
    """Qwen2's config lists a type per layer (layer_types), which transformers checks against the depth on save."""
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(
        "qwen2", vocab_size=DECODER_VOCAB, hidden_size=32, num_hidden_layers=3, intermediate_size=64, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, num_labels=2, pad_token_id=1, bos_token_id=1, eos_token_id=1, use_cache=False,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(tmp_path / "base")
    model = load_model(str(tmp_path / "base"), 2, "model", num_hidden_layers=2)
    assert len(model.config.layer_types) == 2
    apply_petl(model, [make_config("lora", targets="q,v", rank=2)])
    perturb(model, scale=0.2)
    save_merged(model.eval(), tmp_path / "merged")
    _assert_plain_reload(tmp_path / "merged", model, "llama", layers=2)


def test_merge_and_unload_refuses_methods_that_cannot_be_folded_by_name(tmp_path):
    for method in ("adapter", "prefix", "prompt"):
        model = apply_petl(tiny_model("bert"), [make_config(method), *([make_config("lora")] if method == "adapter" else [])])
        with pytest.raises(PetlError, match=rf"{method} cannot be folded into the base weights .* methods that can: .*lora") as err:
            merge_and_unload(model)
        assert "\n" not in str(err.value)
        assert any(".lora_" in n or "prefix" in n or "soft_prompt" in n or "adapter" in n for n, _ in model.named_parameters())  # untouched
    with pytest.raises(PetlError, match="--pooler_type model"):
        merge_and_unload(apply_petl(tiny_decoder("llama", pooler="last"), [make_config("lora")]))


def test_run_glue_merge_and_save(tmp_path, glue_dir, minilm_path, capsys):
    """LoRA + BitFit on minilm-l6 cut to 2 layers: the merged folder loads as a plain 2-layer model with
    the logits of the run's saved delta; an unfoldable method is refused before training (exit 2)."""
    target = tmp_path / "merged"
    code, out = run_glue_main(
        [*SHORT, "--method", "lora,bitfit", "--pooler_type", "model", "--merge_and_save", str(target)], tmp_path, glue_dir=glue_dir
    )
    assert code == 0
    ours = load_petl(load_model(minilm_path, 2, "model", num_hidden_layers=2), out).eval()
    _assert_plain_reload(target, ours, "bert", layers=2)
    assert (target / "tokenizer.json").is_file() or (target / "vocab.txt").is_file()
    assert json.loads((target / MERGE_INFO_FILE).read_text())["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    capsys.readouterr()
    for extra, folder, fragment in (
        (["--method", "lora,adapter"], tmp_path / "new", "--merge_and_save: adapter cannot be folded into the base weights"),
        (["--method", "lora", "--pooler_type", "avg"], tmp_path / "new", "--merge_and_save needs --pooler_type model"),
        (["--method", "lora", "--pooler_type", "model"], target, "already exists and is not an empty folder"),
    ):
        code, refused = run_glue_main([*SHORT, *extra, "--merge_and_save", str(folder)], tmp_path, "refused", glue_dir)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err[-1].startswith("error: ") and fragment in err[-1], err[-3:]
        assert not refused.exists() and not (tmp_path / "new").exists()  # refused before training: no output folder
        assert json.loads((target / MERGE_INFO_FILE).read_text())["task"] == "mrpc"
        assert not (refused / "results.json").exists()

"""Frozen-prefix activation cache: exact logits, refusals, storage, and the real entry point."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, clone, collate, perturbed_petl_model, run_glue_main, tiny_batch, tiny_model, token_dataset

from petl.cache import (
    CACHE_INPUT,
    CachedCollator,
    build_cache,
    cache_start_layer,
    compute_hidden_states,
    keep_frozen_bottom_in_eval_mode,
    run_from_layer,
    tag_dataset,
)
from petl.core import apply_petl
from petl.errors import PetlError
from petl.registry import make_config

ARCHS = ["bert", "roberta", "mpnet"]
L = TINY["num_hidden_layers"]

CACHEABLE = [
    ("lora", {"targets": "q,v,ffn_out", "rank": 4, "layers": "1-2"}, 1),
    ("adapter", {"dim": 8, "placement": "attn,ffn", "layers": "2"}, 2),
    ("parallel", {"dim": 8, "layers": "1,2"}, 1),
    ("bitfit", {"layers": "2"}, 2),
    ("prefix", {"length": 3, "layers": "1-2"}, 1),
    ("ffn", {"layers": "2"}, 2),
    ("head", {}, L),
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method,options,start", CACHEABLE)
def test_cached_logits_equal_uncached(arch, method, options, start):
    model = perturbed_petl_model(arch, method, options)
    assert cache_start_layer(model) == start
    ds = token_dataset()
    cache = build_cache(model, start, ds, collate, batch_size=3)
    assert len(cache) == len(ds) and cache.states.shape[0] == sum(len(x) for x in ds["input_ids"])
    batch = collate([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        expected = model(**batch).logits
        hidden = cache.padded(list(range(len(ds))), batch["attention_mask"])
        with run_from_layer(model, start, hidden):
            got = model(**batch).logits
        assert len(model.base_model.encoder.layer) == L  # the full layer list is back
        assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_cache_places_states_at_real_tokens_for_either_padding(padding_side):
    model = perturbed_petl_model("bert", "lora", {"layers": "2"})
    ds = token_dataset()
    cache = build_cache(model, 2, ds, lambda f: collate(f, padding_side))
    batch = collate([ds[i] for i in range(len(ds))], padding_side)
    with torch.no_grad():
        expected = compute_hidden_states(model, 2, batch)
        hidden = cache.padded(list(range(len(ds))), batch["attention_mask"])
    keep = batch["attention_mask"].bool()
    assert torch.allclose(hidden[keep], expected[keep], atol=1e-6)
    assert hidden[~keep].abs().sum() == 0


def test_training_gradients_equal_with_and_without_cache():
    """Same loss and same gradients on every trainable tensor (frozen bottom in eval mode)."""
    model = perturbed_petl_model("mpnet", "lora", {"layers": "1-2", "targets": "q,v"})
    model.train()
    torch.nn.Module.eval(model.base_model.encoder.layer[0])
    for module in model.modules():  # no dropout anywhere: the two passes must match exactly
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    ds = token_dataset()
    batch = collate([ds[i] for i in range(len(ds))])
    model(**batch).loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    cache = build_cache(model, 1, ds, collate)
    with run_from_layer(model, 1, cache.padded(list(range(len(ds))), batch["attention_mask"])):
        model(**batch).loss.backward()
    for name, grad in expected.items():
        got = dict(model.named_parameters())[name].grad
        assert torch.allclose(got, grad, atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize(
    "configs,message",
    [
        ([make_config("full")], "cannot be used with --method full"),
        ([make_config("prompt", length=2)], "cannot be used with --method prompt"),
        ([make_config("lora", layers="0-2")], "nothing to cache: lora trains layer 0"),
        ([make_config("adapter", dim=8, layers="2"), make_config("lora", layers="0")], "lora trains layer 0"),
    ],
)
def test_cache_refused_when_nothing_below_is_frozen(configs, message):
    model = apply_petl(tiny_model("bert"), configs)
    with pytest.raises(PetlError, match=message):
        cache_start_layer(model)


def test_combination_caches_below_its_lowest_method():
    model = apply_petl(tiny_model("bert"), [make_config("adapter", dim=8, layers="2"), make_config("lora", layers="1")])
    assert cache_start_layer(model) == 1


def test_uncached_run_keeps_nothing_below_the_lowest_trained_layer_for_autograd():
    model = apply_petl(tiny_model("bert"), [make_config("lora", layers="2")])
    model.train()
    seen = {}

    def record(module, args, kwargs):
        seen["requires_grad"] = args[0].requires_grad
        seen["grad_fn"] = args[0].grad_fn

    model.base_model.encoder.layer[2].register_forward_pre_hook(record, with_kwargs=True)
    ids, mask = tiny_batch()
    model(input_ids=ids, attention_mask=mask).logits.sum().backward()
    assert seen == {"requires_grad": False, "grad_fn": None}


def test_16_bit_caches_are_half_the_size_and_close():
    model = perturbed_petl_model("bert", "lora", {"layers": "1-2"})
    ds = token_dataset()
    full = build_cache(model, 1, ds, collate, dtype="float32")
    for dtype in ("bfloat16", "float16"):
        half = build_cache(model, 1, ds, collate, dtype=dtype)
        assert half.nbytes * 2 == full.nbytes
        assert torch.allclose(half.states.float(), full.states, atol=0.05, rtol=0.02)
    with pytest.raises(PetlError, match="--cache_dtype 'int8' is not one of float32, bfloat16, float16"):
        build_cache(model, 1, ds, collate, dtype="int8")


def test_disk_cache_is_reused_keyed_and_never_read_half_written(tmp_path):
    model = perturbed_petl_model("bert", "lora", {"layers": "1-2"})
    ds = token_dataset()
    first = build_cache(model, 1, ds, collate, dtype="bfloat16", cache_dir=tmp_path)
    folders = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert len(folders) == 1 and (folders[0] / "complete").is_file()
    assert json.loads((folders[0] / "meta.json").read_text())["dtype"] == "bfloat16"
    # reuse: the stored file is served memory-mapped, identical, and not recomputed
    stamp = (folders[0] / "states.bin").stat().st_mtime_ns
    again = build_cache(model, 1, ds, collate, dtype="bfloat16", cache_dir=tmp_path)
    assert torch.equal(again.states, first.states) and (folders[0] / "states.bin").stat().st_mtime_ns == stamp
    # other inputs, another layer, or other frozen weights: another key
    build_cache(model, 1, token_dataset(seed=6), collate, dtype="bfloat16", cache_dir=tmp_path)
    build_cache(model, 2, ds, collate, dtype="bfloat16", cache_dir=tmp_path)
    other = clone(model)
    with torch.no_grad():
        other.base_model.embeddings.word_embeddings.weight[7] += 1.0
    build_cache(other, 1, ds, collate, dtype="bfloat16", cache_dir=tmp_path)
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 4
    # the upper layers do not matter: training them never invalidates the cache
    upper = clone(model)
    with torch.no_grad():
        upper.base_model.encoder.layer[2].output.dense.weight.add_(1.0)
    build_cache(upper, 1, ds, collate, dtype="bfloat16", cache_dir=tmp_path)
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 4
    # an interrupted write (no `complete` marker) is recomputed, not read
    reference = first.states.clone()  # `first` is a view of the file about to be damaged
    (folders[0] / "complete").unlink()
    with open(folders[0] / "states.bin", "r+b") as fh:
        fh.write(b"\xff" * 64)
    fixed = build_cache(model, 1, ds, collate, dtype="bfloat16", cache_dir=tmp_path)
    assert torch.equal(fixed.states, reference)


def test_collator_adds_the_right_states_for_mixed_splits():
    model = perturbed_petl_model("roberta", "lora", {"layers": "2"})
    a, b = token_dataset(seed=1, n=5), token_dataset(seed=2, n=4)
    caches = {0: build_cache(model, 2, a, collate), 1: build_cache(model, 2, b, collate)}
    collator = CachedCollator(collate, caches)
    ta, tb = tag_dataset(a, 0), tag_dataset(b, 1)
    features = [dict(ta[3]), dict(tb[0]), dict(ta[1])]
    batch = collator(features)
    plain = collate([a[3], b[0], a[1]])
    assert torch.equal(batch["input_ids"], plain["input_ids"])
    with torch.no_grad():
        expected = compute_hidden_states(model, 2, plain)
    keep = plain["attention_mask"].bool()
    assert torch.allclose(batch[CACHE_INPUT][keep], expected[keep], atol=1e-6)


def test_eval_mode_helper_switches_off_dropout_below_the_start_only():
    model = apply_petl(tiny_model("bert", hidden_dropout_prob=0.5), [make_config("lora", layers="2")])
    keep_frozen_bottom_in_eval_mode(model, 2)
    model.train()
    ids, mask = tiny_batch()
    model(input_ids=ids, attention_mask=mask)
    layers = model.base_model.encoder.layer
    assert not layers[0].training and not layers[1].training and not model.base_model.embeddings.training
    assert layers[2].training


def test_entry_point_cached_run_matches_uncached_eval_mode_run(tmp_path, glue_dir, capsys):
    """run_glue.py as a user runs it: --cache_frozen_layers gives the validation metrics of an uncached
    run whose frozen layers run without dropout, and a second run reuses the disk cache."""
    args = ["--task_name", "mrpc", "--method", "lora", "--lora_layers", "1", "--pooler_type", "avg",
            "--max_train_samples", "160", "--num_train_epochs", "1", "--learning_rate", "4e-3",
            "--per_device_train_batch_size", "16", "--results_file", str(tmp_path / "all.jsonl")]  # fmt: skip
    code, plain_out = run_glue_main([*args, "--frozen_layers_eval_mode"], tmp_path, "plain", glue_dir)
    assert code == 0
    cache_args = [*args, "--cache_frozen_layers", "--cache_dir", str(tmp_path / "cache")]
    code, cached_out = run_glue_main(cache_args, tmp_path, "cached", glue_dir)
    assert code == 0
    plain = json.loads((plain_out / "results.json").read_text())
    cached = json.loads((cached_out / "results.json").read_text())
    info = cached["frozen_layer_cache"]
    assert info["start_layer"] == 1 and info["num_layers"] == 2 and info["bytes"] == info["tokens"] * 384 * 4
    assert plain["frozen_layer_cache"] is None
    for split in ("validation", "test"):
        for key, value in plain["eval_metrics"][split].items():
            if key in ("loss", "accuracy", "f1"):
                assert cached["eval_metrics"][split][key] == pytest.approx(value, abs=1e-4), (split, key)
    caches = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(caches) == 3  # train, validation, test halves
    code, again_out = run_glue_main(cache_args, tmp_path, "again", glue_dir)
    assert code == 0
    again = json.loads((again_out / "results.json").read_text())
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == caches
    assert again["eval_metrics"]["test"]["loss"] == pytest.approx(cached["eval_metrics"]["test"]["loss"], abs=1e-6)


@pytest.mark.parametrize(
    "method,message",
    [
        (["--method", "full"], "--cache_frozen_layers cannot be used with --method full"),
        (["--method", "prompt"], "--cache_frozen_layers cannot be used with --method prompt"),
        (["--method", "lora", "--lora_layers", "0"], "nothing to cache: lora trains layer 0"),
        (["--method", "lora", "--cache_dtype", "int8"], "--cache_dtype 'int8' is not one of float32, bfloat16, float16"),
    ],
)
def test_entry_point_refuses_invalid_cache_requests(method, message, tmp_path, glue_dir, capsys):
    code, out = run_glue_main(["--task_name", "mrpc", *method, "--cache_frozen_layers"], tmp_path, glue_dir=glue_dir)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1], err[-1:]
    assert not (out / "results.json").exists()

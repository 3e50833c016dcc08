"""Faults around the frozen-layer cache and atomic writes: a cache key that covers every input of the
cached states (issue 16: a config override reused a stale cache), and temporary files and folders
removed on failure and, when a killed process left them, at the next start (never a live writer's)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, clone, collate, perturbed_petl_model, tiny_decoder, tiny_model, token_dataset

from petl.cache import build_cache, fingerprint, prepare_cached_datasets
from petl.core import PETL_CONFIG_FILE, PETL_WEIGHTS_FILE, apply_petl, save_petl
from petl.errors import PetlError
from petl.models import _build_once, load_model
from petl.registry import make_config
from petl.results import STALE_TEMP_SECONDS, _host_tag, write_atomic, write_json_atomic, write_text_atomic

LORA = {"layers": "1-2"}


def _folders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if not p.name.startswith("."))


def _hidden(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.startswith("."))


class _Tokenizer:
    def __init__(self, padding_side: str):
        self.padding_side = padding_side


class _PaddingCollator:
    """Stands in for DataCollatorWithPadding: a tokenizer with a padding side."""

    def __init__(self, padding_side: str):
        self.tokenizer = _Tokenizer(padding_side)
        self.pad_to_multiple_of = None

    def __call__(self, features):
        return collate(features, self.tokenizer.padding_side)


def _collate_masks(features: list[dict]) -> dict:
    """Right padding that keeps each example's own attention mask (zeros inside a row included)."""
    length = max(len(f["input_ids"]) for f in features)
    batch = {k: torch.zeros(len(features), length, dtype=torch.long) for k in ("input_ids", "attention_mask")}
    for row, f in enumerate(features):
        for k in batch:
            batch[k][row, : len(f[k])] = torch.tensor(f[k])
    return batch


def _base():
    assert TINY["num_hidden_layers"] == 3  # start 1 or 2: layers below it frozen, LoRA at 1-2
    model = perturbed_petl_model("bert", "lora", LORA)
    return {"model": model, "start": 1, "dataset": token_dataset(), "dtype": "float32", "collator": _collate_masks}


def _with_model(change):
    def variant(base):
        model = clone(base["model"])
        change(model)
        return {**base, "model": model}

    return variant


def _with_rows(columns, change):
    def variant(base):
        ds = base["dataset"].map(lambda row, i: {c: change(row[c], i) for c in columns}, with_indices=True)
        return {**base, "dataset": ds}

    return variant


def _config_override(base):
    # the same weights (same seed), built with another layer_norm_eps: what --config_overrides does
    model = apply_petl(tiny_model("bert", layer_norm_eps=0.5), [make_config("lora", **LORA)])
    model.load_state_dict(base["model"].state_dict())
    model.eval()
    return {**base, "model": model}


def _eager_attention(model):
    model.set_attn_implementation("eager" if model.config._attn_implementation != "eager" else "sdpa")


def _first_layer_weight(model):
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.query.weight[0, 0] += 0.5


def _module_setting(model):
    model.bert.embeddings.LayerNorm.eps = 0.5  # set on the module, not in the config


def _prefix_shift(base):
    model = perturbed_petl_model("bert", "prefix", {"length": 3, "layers": "1-2", "shift_positions": True})
    plain = perturbed_petl_model("bert", "prefix", {"length": 3, "layers": "1-2"})
    return {**base, "model": model}, {**base, "model": plain}


# each changes one input of the cached states; every one must give another key (and folder)
CHANGES = {
    "config_override_layer_norm_eps": _config_override,
    "attention_implementation": _with_model(_eager_attention),
    "frozen_bottom_layer_weight": _with_model(_first_layer_weight),
    "embedding_weight": _with_model(lambda m: m.bert.embeddings.word_embeddings.weight.data[7].add_(1.0)),
    "module_setting_outside_config": _with_model(_module_setting),
    "start_layer": lambda base: {**base, "start": 2},
    "input_ids": _with_rows(["input_ids"], lambda ids, i: [*ids[:-1], 6 if ids[-1] != 6 else 7] if i == 3 else ids),
    "attention_mask": _with_rows(["attention_mask"], lambda mask, i: [*mask[:-1], 0] if i == 3 else mask),
    "truncation": _with_rows(["input_ids", "attention_mask"], lambda values, i: values[:6]),  # a smaller max_seq_length
    "dtype": lambda base: {**base, "dtype": "bfloat16"},
    "left_padding": lambda base: {**base, "collator": _PaddingCollator("left")},
}


def _build(case, cache_dir=None):
    return build_cache(case["model"], case["start"], case["dataset"], case["collator"], case["dtype"], cache_dir)


@pytest.mark.parametrize("change", list(CHANGES))
def test_each_input_of_the_cached_states_gives_another_cache(change, tmp_path):
    base = _base()
    changed = CHANGES[change](base)
    assert fingerprint(**_key_args(changed)) != fingerprint(**_key_args(base))
    _build(base, tmp_path)
    (first,) = _folders(tmp_path)
    served = _build(changed, tmp_path)
    assert len(_folders(tmp_path)) == 2, f"{change}: the cache built without it was reused"
    # and what is served is what the changed model computes, not the first run's states
    fresh = _build(changed)
    assert torch.equal(served.states, fresh.states)


def _key_args(case) -> dict:
    return {k: case[k] for k in ("model", "start", "dataset", "dtype", "collator")}


def test_prefix_position_shift_below_the_start_gives_another_cache():
    shifted, plain = _prefix_shift({"start": 1, "dataset": token_dataset(), "dtype": "float32", "collator": _collate_masks})
    assert fingerprint(**_key_args(shifted)) != fingerprint(**_key_args(plain))
    assert not torch.equal(_build(shifted).states, _build(plain).states)


def test_decoder_position_shift_on_the_backbone_gives_another_cache():
    """On a decoder the prefix's position shift is a hook on the backbone, not the embeddings: it
    moves the rotary positions of every layer, the frozen ones too."""
    shifted, plain = (
        apply_petl(tiny_decoder("llama"), [make_config("prefix", length=3, layers="2", shift_positions=shift)]).eval()
        for shift in (True, False)
    )
    common = {"start": 2, "dataset": token_dataset(), "dtype": "float32", "collator": _collate_masks}
    assert fingerprint(shifted, **common) != fingerprint(plain, **common)
    assert not torch.equal(_build({**common, "model": shifted}).states, _build({**common, "model": plain}).states)


@pytest.mark.parametrize("library", ["torch", "transformers"])
def test_library_versions_are_in_the_key(library, monkeypatch):
    base = _base()
    before = fingerprint(**_key_args(base))
    import petl.cache

    module = getattr(petl.cache, library)  # the module object the key reads (transformers' lazy module may be replaced)
    monkeypatch.setattr(module, "__version__", module.__version__ + ".other")
    assert fingerprint(**_key_args(base)) != before


def test_same_inputs_reuse_the_cache(tmp_path):
    """A model rebuilt from scratch (same seed), the same data: the same key, the file is reused."""
    first = _build(_base(), tmp_path)
    (folder,) = _folders(tmp_path)
    stamp = (folder / "states.bin").stat().st_mtime_ns
    again = _build(_base(), tmp_path)
    assert _folders(tmp_path) == [folder] and (folder / "states.bin").stat().st_mtime_ns == stamp
    assert torch.equal(again.states, first.states)


def _relabelled(model):
    model.config.id2label = {0: "no", 1: "yes", 2: "maybe"}
    model.config.label2id = {"no": 0, "yes": 1, "maybe": 2}
    model.config.problem_type = "single_label_classification"


def _dropout_changed(model):
    model.config.hidden_dropout_prob = 0.0
    model.config.attention_probs_dropout_prob = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _pooler_changed(model):
    with torch.no_grad():
        model.bert.pooler.dense.weight.add_(1.0)


def _upper_layer_changed(model):
    with torch.no_grad():
        model.bert.encoder.layer[2].output.dense.weight.add_(1.0)


@pytest.mark.parametrize(
    "change", [_relabelled, _dropout_changed, _pooler_changed, _upper_layer_changed], ids=["labels", "dropout", "pooler", "upper_layer"]
)
def test_what_cannot_change_the_states_keeps_the_key(change, tmp_path):
    """Left out of the key on purpose, and rightly: the states computed afresh are identical."""
    base = _base()
    changed = _with_model(change)(base)
    assert fingerprint(**_key_args(changed)) == fingerprint(**_key_args(base))
    assert torch.equal(_build(changed).states, _build(base).states)


def test_config_overrides_with_a_shared_cache_dir_never_reuse_a_stale_cache(tmp_path):
    """The reported case, through the real loader: --config_overrides layer_norm_eps=0.5 with the
    --cache_dir of a run without it computes its own cache (the states the override gives)."""
    checkpoint = tmp_path / "tiny-bert"
    tiny_model("bert").save_pretrained(checkpoint)
    cache_dir = tmp_path / "cache"
    served = {}
    for overrides in (None, "layer_norm_eps=0.5"):
        model = apply_petl(load_model(str(checkpoint), num_labels=2, config_overrides=overrides), [make_config("lora", **LORA)])
        model.eval()
        data = {"train": token_dataset(), "validation": token_dataset(seed=9)}
        _, collator, info = prepare_cached_datasets(model, data, _collate_masks, cache_dir=cache_dir)
        served[overrides] = collator.caches[0].states.clone()
        assert info["start_layer"] == 1
        assert torch.equal(served[overrides], build_cache(model, 1, token_dataset(), _collate_masks).states)
    assert len(_folders(cache_dir)) == 4  # two data sets, each twice
    assert not torch.equal(served[None], served["layer_norm_eps=0.5"])


# ---------------------------------------------------------------------------------------------
# Temporary files and folders


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temp(folder: Path, final: str, pid: int, host: str | None = None, is_dir: bool = True) -> Path:
    path = folder / f".{final}.tmp-{host or _host_tag()}-{pid}-0123abcd"
    if is_dir:
        path.mkdir(parents=True)
        (path / "states.bin").write_bytes(b"\0" * 1024)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return path


def _age(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()], ids=["full_disk", "ctrl_c"])
def test_a_failed_delta_write_leaves_no_temporary_file_and_the_old_delta(exc, tmp_path, monkeypatch):
    model = perturbed_petl_model("bert", "lora", LORA)
    save_petl(model, tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in (PETL_WEIGHTS_FILE, PETL_CONFIG_FILE)}

    def failing_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")  # the disk filled up mid-write
        raise exc

    monkeypatch.setattr("petl.core.save_file", failing_save_file)
    with pytest.raises(type(exc)):
        save_petl(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_a_failed_text_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    write_json_atomic(target, {"ok": 1})
    with pytest.raises(UnicodeEncodeError):  # fails part-way through writing the text
        write_text_atomic(target, "fine so far \ud800")
    monkeypatch.setattr(os, "replace", _no_space)
    with pytest.raises(OSError, match="No space"):
        write_json_atomic(target, {"ok": 2})
    monkeypatch.undo()

    def interrupted(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, interrupted)
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"] and target.read_text() == '{\n  "ok": 1\n}\n'


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()], ids=["full_disk", "ctrl_c"])
def test_a_failed_cache_write_leaves_no_temporary_folder(exc, tmp_path, monkeypatch):
    def failing_save(path, array):
        Path(path).write_bytes(b"partial")
        raise exc

    monkeypatch.setattr("petl.cache.np.save", failing_save)
    with pytest.raises(PetlError if isinstance(exc, OSError) else KeyboardInterrupt) as info:
        _build(_base(), tmp_path)
    if isinstance(exc, OSError):  # one line naming the folder, what happened and what to do
        assert str(info.value).startswith(f"--cache_dir {str(tmp_path)!r}: the cache could not be written (No space left on device)")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()], ids=["full_disk", "ctrl_c"])
def test_a_failed_model_unpack_leaves_no_temporary_folder(exc, tmp_path, monkeypatch):
    monkeypatch.setenv("PETL_CACHE", str(tmp_path))

    def build(folder: Path):
        (folder / "model.safetensors").write_bytes(b"\0" * 4096)
        raise exc

    with pytest.raises(PetlError if isinstance(exc, OSError) else KeyboardInterrupt) as info:
        _build_once("minilm-l6", build)
    if isinstance(exc, OSError):
        assert "packaged model 'minilm-l6' could not be prepared" in str(info.value) and "$PETL_CACHE" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_model_folder_without_its_completion_marker_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("PETL_CACHE", str(tmp_path))
    (tmp_path / "minilm-l6" / "model").mkdir(parents=True)  # a build of an older version, cut short
    (tmp_path / "minilm-l6" / "model" / "half").write_text("x")
    target = _build_once("minilm-l6", lambda folder: (folder / "model").mkdir())
    assert (target / ".complete").is_file() and sorted(p.name for p in (target / "model").iterdir()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["minilm-l6"]


_HOLDER = """
import sys, time
from pathlib import Path
from petl.results import temporary_path
with temporary_path(Path(sys.argv[1]), folder=sys.argv[2] == "folder") as tmp:
    if sys.argv[2] == "folder":
        (tmp / "states.bin").write_bytes(bytes(1024))
    print(tmp, flush=True)
    time.sleep(600)
"""


def _live_writer(final: Path, kind: str = "folder") -> tuple[subprocess.Popen, Path]:
    """Another process in the middle of writing `final` (holding its temporary)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(final), kind], stdout=subprocess.PIPE, text=True, cwd=REPO)
    line = proc.stdout.readline().strip()
    assert line, "the writer process did not start"
    return proc, Path(line)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_cache_build_removes_what_killed_builds_left_and_keeps_live_ones(tmp_path):
    cache_dir = tmp_path / "cache"
    key = "0" * 24
    dead = _temp(cache_dir, key, _dead_pid())
    legacy_old = _age(_temp(cache_dir, "x", 1).rename(cache_dir / f".{'a' * 24}-k3j_x9ab"), STALE_TEMP_SECONDS + 60)
    legacy_new = _temp(cache_dir, "x", 1).rename(cache_dir / f".{'b' * 24}-k3j_x9ab")
    other_host = _temp(cache_dir, key, _dead_pid(), host="feedf00d")  # cannot be checked from here: kept a day
    other_host_old = _age(_temp(cache_dir, "1" * 24, _dead_pid(), host="feedf00d"), STALE_TEMP_SECONDS + 60)
    unrelated = cache_dir / ".keep-me"
    unrelated.write_text("not ours")
    writer, live = _live_writer(cache_dir / key)
    try:
        _build(_base(), cache_dir)
        left = _hidden(cache_dir)
        assert dead.name not in left and legacy_old.name not in left and other_host_old.name not in left
        assert {live.name, legacy_new.name, other_host.name, unrelated.name} <= set(left)
        assert (live / "states.bin").is_file()  # a live writer's folder is untouched
        _kill(writer)  # kill -9: no cleanup ran
        assert live.is_dir()
        _build(_base(), cache_dir)  # the next start removes it
        assert sorted(_hidden(cache_dir)) == sorted([legacy_new.name, other_host.name, unrelated.name])
        assert len(_folders(cache_dir)) == 1
    finally:
        if writer.poll() is None:
            _kill(writer)


def test_a_live_pid_without_its_lock_is_kept_until_a_day_old(tmp_path):
    """A pid that runs (perhaps reused by another program): never removed at once."""
    young = _temp(tmp_path, "c" * 24, os.getpid())
    old = _age(_temp(tmp_path, "d" * 24, os.getpid()), STALE_TEMP_SECONDS + 60)
    _build(_base(), tmp_path)
    assert young.is_dir() and not old.exists()


def test_model_builds_remove_what_killed_builds_left(tmp_path, monkeypatch):
    monkeypatch.setenv("PETL_CACHE", str(tmp_path))
    dead = _temp(tmp_path, "mpnet-base", _dead_pid())
    legacy = _age(_temp(tmp_path, "x", 1).rename(tmp_path / ".mpnet-base-a1b2c3d4"), STALE_TEMP_SECONDS + 60)
    writer, live = _live_writer(tmp_path / "smollm2-135m")
    try:
        target = _build_once("minilm-l6", lambda folder: (folder / "model").mkdir())
        assert not dead.exists() and not legacy.exists() and live.is_dir()
        _kill(writer)
        assert _build_once("minilm-l6", lambda folder: None) == target  # already built: still sweeps
        assert [p.name for p in tmp_path.iterdir()] == ["minilm-l6"]
    finally:
        if writer.poll() is None:
            _kill(writer)


def test_file_writes_remove_what_killed_writes_left(tmp_path):
    dead_delta = _temp(tmp_path, PETL_WEIGHTS_FILE, _dead_pid(), is_dir=False)
    dead_results = _temp(tmp_path, "results.json", _dead_pid(), is_dir=False)
    legacy = tmp_path / ".results.json.ab_9xyz0"  # tempfile's name, before temporaries carried a pid
    legacy.touch()
    _age(legacy, STALE_TEMP_SECONDS + 60)
    writer, live = _live_writer(tmp_path / "results.json", kind="file")
    try:
        save_petl(perturbed_petl_model("bert", "lora", LORA), tmp_path)
        assert not dead_delta.exists() and dead_results.exists()  # each write clears its own file's leftovers
        write_json_atomic(tmp_path / "results.json", {"ok": 1})
        assert not dead_results.exists() and not legacy.exists() and live.is_file()
        _kill(writer)
        write_json_atomic(tmp_path / "results.json", {"ok": 2})
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([PETL_WEIGHTS_FILE, PETL_CONFIG_FILE, "results.json"])
    finally:
        if writer.poll() is None:
            _kill(writer)

"""Frozen-prefix activation cache: pay only for the part of the network a run trains.

When every trainable parameter and every method hook sits at layer k or above, the hidden states
entering layer k are a fixed function of the input. `build_cache` computes them once per data set
(frozen layers in eval mode, no autograd) and stores each example at its real length, in memory or
memory-mapped from `--cache_dir`. `run_from_layer` then runs the model's *own* forward with two
temporary changes: the embeddings' output is replaced by the cached states, and the layer list is
cut to layers k.. . Masks, position handling (MPNet's relative bias, ...) and every method hook run
as usual; nothing architecture-specific is forked.

Exactness: with a float32 cache, logits equal those of an uncached model whose layers below k run in
eval mode (up to float rounding). An uncached run in train mode applies dropout in those layers;
the cached run does not (the frozen bottom acts as a fixed feature extractor).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn

from petl.arch import arch_for, backbone_of, get_module, num_layers
from petl.choices import CACHE_DTYPES
from petl.errors import PetlError
from petl.progress import progress_bar
from petl.results import build_folder, remove_stale_temps
from petl.state import attach_state, get_state

logger = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # petl.choices.CACHE_DTYPES
# numpy has no bfloat16: 16-bit caches are stored as raw int16 words and viewed back
_STORAGE_DTYPES = {"float32": np.float32, "bfloat16": np.int16, "float16": np.int16}
CACHE_FORMAT_VERSION = 1
CACHE_KEY_VERSION = 2  # 2: the key covers the model config, library versions, device, module settings and hooks
MODEL_INPUT_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")  # all that the frozen bottom is given
SPLIT_COLUMN = "petl_cache_split"
INDEX_COLUMN = "petl_cache_index"
CACHE_INPUT = "cached_hidden_states"


def cache_start_layer(model: nn.Module) -> int:
    """Lowest layer holding a trainable parameter or method hook; refuses when that is the
    embeddings (full fine-tuning, prompt tuning) or layer 0 (nothing below it to cache)."""
    state = get_state(model)
    if not state.applied:
        raise PetlError("--cache_frozen_layers needs PETL methods applied first")
    owner = state.owner
    refusal = arch_for(model).cache_refusal
    reason = refusal(model.config) if refusal else None
    if reason:
        raise PetlError(f"--cache_frozen_layers is not supported for {model.config.model_type}: {reason}; drop the flag")
    if arch_for(model).embeddings is None:
        raise PetlError(
            f"--cache_frozen_layers is not supported for {model.config.model_type}: its embeddings are not one module "
            "that the cached states could replace; drop the flag"
        )
    below_layers = sorted({m for n, (m, layer) in owner.items() if layer is None and m != "head"})
    if below_layers:
        raise PetlError(
            f"--cache_frozen_layers cannot be used with --method {','.join(below_layers)}: it trains parameters "
            "outside the transformer layers (embeddings), so nothing below it is frozen"
        )
    layers = [layer for m, layer in owner.values() if layer is not None]
    start = min(layers) if layers else num_layers(model) - arch_for(model).cache_keeps_layers
    if start == 0:
        first = sorted({m for m, layer in owner.values() if layer == 0})
        raise PetlError(
            f"--cache_frozen_layers has nothing to cache: {','.join(first)} trains layer 0; "
            "place the methods at layers >= 1 (e.g. --lora_layers 4-5) or drop the flag"
        )
    return start


class _CachedStates(nn.Module):
    """Stands in for the embeddings module: returns the cached states, computes nothing (no
    embedding lookup, no dropout: the RNG stream matches an uncached run in eval mode below)."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden

    def forward(self, input_ids=None, *args, **kwargs) -> torch.Tensor:
        if input_ids is not None and input_ids.shape[:2] != self.hidden.shape[:2]:
            raise PetlError(f"cached states have shape {tuple(self.hidden.shape[:2])}, the batch {tuple(input_ids.shape[:2])}")
        return self.hidden


def _child_slot(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, attr = path.rpartition(".")
    backbone = backbone_of(model)
    return (get_module(backbone, parent_path) if parent_path else backbone), attr


@contextmanager
def run_from_layer(model: nn.Module, start: int, hidden: torch.Tensor):
    """Inside the block, `model(**batch)` runs layers `start`.. on `hidden` (the states entering
    layer `start`, padded like the batch) instead of the embeddings and the layers below."""
    spec = arch_for(model)
    layers_parent, layers_attr = _child_slot(model, spec.layers)
    emb_parent, emb_attr = _child_slot(model, spec.embeddings)
    full_layers = layers_parent._modules[layers_attr]
    embeddings = emb_parent._modules[emb_attr]
    param = next(model.parameters())
    hidden = hidden.to(device=param.device, dtype=param.dtype)
    layers_parent._modules[layers_attr] = nn.ModuleList(list(full_layers)[start:])
    emb_parent._modules[emb_attr] = _CachedStates(hidden)
    try:
        yield
    finally:
        layers_parent._modules[layers_attr] = full_layers
        emb_parent._modules[emb_attr] = embeddings


def _eval_mode_pre_hook(module, args, kwargs):
    module.eval()


def keep_frozen_bottom_in_eval_mode(model: nn.Module, start: int) -> list:
    """Run the embeddings and layers below `start` in eval mode (no dropout) even while the model
    trains, as a cached run does: the uncached run to compare a cached one with."""
    backbone = backbone_of(model)
    spec = arch_for(model)
    modules = [get_module(backbone, spec.embeddings), *list(get_module(backbone, spec.layers))[:start]]
    return [m.register_forward_pre_hook(_eval_mode_pre_hook, with_kwargs=True) for m in modules]


class _Captured(Exception):
    def __init__(self, hidden: torch.Tensor):
        self.hidden = hidden


def _capture_hook(start: int, total: int):
    """Pre-hook on layer `start` (or post-hook on the last layer when start == total) that stops
    the forward and hands back the hidden states entering layer `start`."""
    if start < total:

        def pre(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            raise _Captured(hidden)

        return pre

    def post(module, args, output):
        raise _Captured(output[0] if isinstance(output, tuple) else output)

    return post


@torch.no_grad()
def compute_hidden_states(model: nn.Module, start: int, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """States entering layer `start` for one padded batch, frozen layers in eval mode."""
    layers = get_module(backbone_of(model), arch_for(model).layers)
    total = len(layers)
    hook = _capture_hook(start, total)
    if start < total:
        handle = layers[start].register_forward_pre_hook(hook, with_kwargs=True)
    else:
        handle = layers[total - 1].register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        model(**{k: v for k, v in batch.items() if k != "labels"})
    except _Captured as cap:
        return cap.hidden
    finally:
        handle.remove()
        model.train(was_training)
    raise PetlError("internal: the forward finished without reaching the cache layer")


@dataclass
class HiddenStateCache:
    """One data set's states entering layer `start`: a flat (sum of lengths, hidden) array plus
    per-example offsets. `states` is a tensor in memory or a view of a memory-mapped file."""

    states: torch.Tensor
    offsets: np.ndarray  # (n + 1,) int64
    start: int
    dtype: str

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        return self.states.numel() * self.states.element_size()

    def example(self, i: int) -> torch.Tensor:
        return self.states[int(self.offsets[i]) : int(self.offsets[i + 1])]

    def padded(self, indices: list[int], attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L, hidden) float32 for a batch whose padding is `attention_mask` (B, L): each example's
        states go to its real-token positions (right or left padding alike), zeros elsewhere.
        Padding never reaches real tokens: the attention mask keeps it out of every real position."""
        keep = attention_mask.bool()
        out = torch.zeros(*keep.shape, self.states.shape[-1], dtype=torch.float32)
        for row, i in enumerate(indices):
            ex = self.example(i)
            if ex.shape[0] != int(keep[row].sum()):
                raise PetlError(f"cached example {i} has {ex.shape[0]} tokens, the batch row {int(keep[row].sum())}")
            out[row, keep[row]] = ex.to(torch.float32)
        return out


# Config fields that cannot change the states entering the start layer, left out of the key so that
# runs differing only in them share a cache: the task's labels (read by the head alone), where the
# files were found (the weights themselves are hashed), the version that wrote the config file (the
# running library versions are hashed instead), and dropout rates (the frozen layers run in eval
# mode, where dropout is the identity). Every other field is kept, whether it matters or not.
_CONFIG_FIELDS_IGNORED = frozenset(
    {"id2label", "label2id", "num_labels", "problem_type", "finetuning_task", "_name_or_path", "transformers_version"}
)
# the temporary folders of versions before CACHE_KEY_VERSION 2 (no pid in the name): removed when a day old
_LEGACY_TEMP_FOLDER = re.compile(r"^\.[0-9a-f]{24}-(?:stale-)?[a-z0-9_]{8}$")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _config_for_key(config) -> dict:
    fields = {
        k: v for k, v in config.to_dict().items() if k not in _CONFIG_FIELDS_IGNORED and "dropout" not in k and not k.endswith("_pdrop")
    }
    fields["_attn_implementation"] = getattr(config, "_attn_implementation", None)  # eager, sdpa, flash: other numerics
    return fields


def _stable_repr(value) -> str:
    return f"{type(value).__qualname__}:{_ADDRESS.sub('', repr(value))}"


def _tensor_bytes(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()


def _describe(value, depth: int = 0) -> str:
    """A description of a hook, or of what it closes over, that is the same in every process (no
    memory addresses): what it is, and the values it was made with."""
    if depth > 4:
        return type(value).__qualname__
    if isinstance(value, torch.Tensor):
        return f"tensor:{value.dtype}:{tuple(value.shape)}:{hashlib.sha256(_tensor_bytes(value)).hexdigest()}"
    if isinstance(value, nn.Module):
        return f"module:{type(value).__module__}.{type(value).__qualname__}({value.extra_repr()})"
    if isinstance(value, (bool, int, float, str, bytes, type(None))):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__}[{','.join(_describe(v, depth + 1) for v in value)}]"
    if isinstance(value, dict):
        return f"dict[{','.join(f'{k!r}={_describe(v, depth + 1)}' for k, v in sorted(value.items(), key=lambda kv: repr(kv[0])))}]"
    if isinstance(value, functools.partial):
        return f"partial[{_describe(value.func, depth + 1)},{_describe(value.args, depth + 1)},{_describe(value.keywords, depth + 1)}]"
    if inspect.ismethod(value):
        return f"method:{_describe(value.__func__, depth + 1)}@{type(value.__self__).__qualname__}"
    if inspect.isfunction(value):
        cells = []
        for cell in value.__closure__ or ():
            try:
                cells.append(_describe(cell.cell_contents, depth + 1))
            except ValueError:  # an empty cell
                cells.append("<empty>")
        return f"function:{value.__module__}.{value.__qualname__}[{','.join(cells)}]"
    return _stable_repr(value)


def _frozen_bottom_modules(model: nn.Module, start: int):
    """(name, module) of the backbone that can act on the states entering layer `start`: everything
    but the layers from `start` up and the pooler (it reads only the last layer's output)."""
    backbone = backbone_of(model)
    layers_path = arch_for(model).layers
    pooler = "pooler" if isinstance(getattr(backbone, "pooler", None), nn.Module) else None
    for name, module in backbone.named_modules():
        if pooler is not None and (name == pooler or name.startswith(pooler + ".")):
            continue
        if name.startswith(layers_path + ".") and int(name[len(layers_path) + 1 :].split(".", 1)[0]) >= start:
            continue
        yield name, module


def _padding_description(collator, batch_size: int | None) -> dict:
    """How batches are padded. Right padding never reaches real tokens; left padding moves absolute
    positions (BERT), so then the batching changes the states too."""
    seen, tokenizer = collator, None
    for _ in range(4):  # through wrappers (ExtraInputsCollator.collator, CachedCollator.base)
        tokenizer = getattr(seen, "tokenizer", None)
        inner = getattr(seen, "collator", None) or getattr(seen, "base", None)
        if tokenizer is not None or inner is None:
            break
        seen = inner
    side = getattr(tokenizer, "padding_side", None)
    out = {"padding_side": side, "pad_to_multiple_of": getattr(seen, "pad_to_multiple_of", None)}
    if side == "left":
        out["batch_size"] = batch_size
    return out


def fingerprint(model: nn.Module, start: int, dataset, dtype: str, collator=None, batch_size: int | None = None) -> str:
    """Identifies a cache by everything that changes the states entering layer `start`:
    - the model: its config (`to_dict()` less `_CONFIG_FIELDS_IGNORED` and dropout rates) and the
      attention implementation; every parameter and buffer (name, type, shape, bytes), module type and
      setting (`extra_repr`: a LayerNorm's eps even if set on the module alone) and forward hook of the
      model's top and of the backbone below `start` (embeddings, shared modules such as MPNet's relative
      bias; not the pooler, not the layers from `start` up, which training changes);
    - the start layer, the storage type, the model inputs (every row of MODEL_INPUT_COLUMNS) and how
      they are padded;
    - what computes them: the torch and transformers versions and the device type (kernels differ).
    The frozen layers always run in eval mode (no dropout). Any change gives another key."""
    h = hashlib.sha256()
    param = next(model.parameters())
    header = {
        "key_version": CACHE_KEY_VERSION,
        "format_version": CACHE_FORMAT_VERSION,
        "start": start,
        "dtype": dtype,
        "config": _config_for_key(model.config),
        "padding": _padding_description(collator, batch_size),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "device": param.device.type,
        "frozen_mode": "eval",
    }
    try:
        h.update(json.dumps(header, sort_keys=True, default=_stable_repr).encode())
    except TypeError:  # a config dict whose keys do not sort (mixed types)
        h.update(_describe(header).encode())
    for hook in [*model._forward_pre_hooks.values(), *model._forward_hooks.values()]:
        h.update(f"model-hook:{_describe(hook)}\n".encode())
    for name, module in _frozen_bottom_modules(model, start):
        setting = "" if isinstance(module, nn.Dropout) else module.extra_repr()  # eval mode: dropout is the identity
        h.update(f"module:{name}:{type(module).__module__}.{type(module).__qualname__}({setting})\n".encode())
        for hook in [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]:  # e.g. prefix position shifts
            h.update(f"hook:{_describe(hook)}\n".encode())
        for kind, tensors in (("param", module.named_parameters(recurse=False)), ("buffer", module.named_buffers(recurse=False))):
            for tname, tensor in tensors:
                h.update(f"{kind}:{name}.{tname}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
                h.update(_tensor_bytes(tensor))
    for column in MODEL_INPUT_COLUMNS:
        if column in dataset.column_names:
            rows = dataset[column]
            h.update(f"column:{column}:{len(rows)}\n".encode())
            for row in rows:
                values = np.asarray(row, dtype=np.int64)
                h.update(values.size.to_bytes(8, "little"))
                h.update(values.tobytes())
    return h.hexdigest()[:24]


def _iter_batches(dataset, collator, batch_size: int):
    lengths = np.array([len(x) for x in dataset["input_ids"]])
    order = np.argsort(-lengths, kind="stable")  # similar lengths together: little padding
    model_columns = [c for c in MODEL_INPUT_COLUMNS if c in dataset.column_names]
    for lo in range(0, len(order), batch_size):
        idx = order[lo : lo + batch_size].tolist()
        rows = dataset.select(idx)
        features = [{c: rows[i][c] for c in model_columns} for i in range(len(idx))]
        yield idx, collator(features)


def build_cache(
    model: nn.Module,
    start: int,
    dataset,
    collator,
    dtype: str = "float32",
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    name: str = "data",
) -> HiddenStateCache:
    """States entering layer `start` for every example of `dataset` (a tokenised datasets.Dataset).
    With `cache_dir`, reuse a complete cache of the same fingerprint or build one under that key's
    lock (`cache_build_lock`: cells of a sweep that want the same cache at once wait for the one that
    builds it, then reuse it) and write it atomically; first remove the temporary folders that killed
    runs left there (never one a live run is writing)."""
    if dtype not in CACHE_DTYPES:
        raise PetlError(f"--cache_dtype {dtype!r} is not one of {', '.join(CACHE_DTYPES)}")
    if cache_dir is None:
        return _compute_cache(model, start, dataset, collator, dtype, batch_size, name)
    for stale in remove_stale_temps(cache_dir, legacy=_LEGACY_TEMP_FOLDER):
        logger.info("cache: removed %s, left by an interrupted run", stale)
    key = fingerprint(model, start, dataset, dtype, collator, batch_size)
    folder = Path(cache_dir) / key
    found = _read_cache(folder, start, dtype)
    if found is None:
        with cache_build_lock(folder):
            found = _read_cache(folder, start, dtype)  # built by another cell while this one waited
            if found is None:
                _write_cache(folder, _compute_cache(model, start, dataset, collator, dtype, batch_size, name))
                logger.info("cache %s: wrote %s", name, folder)
                return _read_cache(folder, start, dtype)  # serve it memory-mapped
    logger.info("cache %s: reused %s (%d examples, %.1f MB)", name, folder, len(found), found.nbytes / 1e6)
    return found


@contextmanager
def cache_build_lock(folder: Path):
    """An exclusive flock on `.<key>.lock` beside the cache folder, held while the cache is built:
    another process (a sweep's cell on this node, or on another node when the cache directory is on a
    shared file system with flock) that wants the same cache blocks here, then finds it complete. The
    holder removes the lock file before releasing it, so none is left behind; a waiter whose lock
    turns out to be on a removed file takes the lock anew. Where flock is not supported the build goes
    on unlocked, the temporary-name-and-rename write (`build_folder`) remaining the safety net."""
    import fcntl

    lock_path = folder.parent / f".{folder.name}.lock"
    while True:
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise PetlError(
                f"--cache_dir {str(folder.parent)!r}: the cache's lock file cannot be created ({err.strerror or err}); "
                "give a writable --cache_dir, or none (caches in memory)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks (some NFS): build unlocked, as before
            logger.warning("cache %s: the file system does not support locks; another process may build it too", folder)
            break
        try:
            current = os.stat(lock_path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the holder before removed this file: lock the one there now
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)  # releases the lock


def _compute_cache(model: nn.Module, start: int, dataset, collator, dtype: str, batch_size: int, name: str) -> HiddenStateCache:
    """The forward pass through the frozen bottom, in memory."""
    lengths = np.array([len(x) if m is None else int(np.sum(m)) for x, m in _lengths_source(dataset)], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    states = torch.empty(int(offsets[-1]), model.config.hidden_size, dtype=TORCH_DTYPES[dtype])
    device = next(model.parameters()).device
    batches = -(-len(dataset) // batch_size)
    with progress_bar(total=batches, desc=f"cache {name} (layers 0-{start - 1})", unit="batch") as bar:
        for idx, batch in _iter_batches(dataset, collator, batch_size):
            keep = _keep_mask(batch)
            batch = {k: v.to(device) for k, v in batch.items()}
            out = compute_hidden_states(model, start, batch).to("cpu", TORCH_DTYPES[dtype])
            for row, i in enumerate(idx):
                states[offsets[i] : offsets[i + 1]] = out[row, keep[row]]
            bar.update(1)
    return HiddenStateCache(states, offsets, start, dtype)


def _keep_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    mask = batch.get("attention_mask")
    return torch.ones(batch["input_ids"].shape, dtype=torch.bool) if mask is None else mask.bool()


def _lengths_source(dataset):
    masks = dataset["attention_mask"] if "attention_mask" in dataset.column_names else [None] * len(dataset)
    return zip(dataset["input_ids"], masks, strict=True)


def _write_cache(folder: Path, cache: HiddenStateCache) -> None:
    """Write into a private temporary folder and rename it into place (`publish_folder`): a folder
    without the `complete` marker is never read back. A failed write (full disk, Ctrl-C) removes the
    temporary folder; one left by a killed run goes at the next start (`remove_stale_temps`)."""

    def fill(tmp: Path) -> None:
        raw = cache.states.contiguous()
        if cache.dtype != "float32":
            raw = raw.view(torch.int16)
        raw.numpy().tofile(tmp / "states.bin")
        np.save(tmp / "offsets.npy", cache.offsets)
        meta = {"format_version": CACHE_FORMAT_VERSION, "start": cache.start, "dtype": cache.dtype, "shape": list(cache.states.shape)}
        (tmp / "meta.json").write_text(json.dumps(meta))

    try:
        build_folder(folder, "complete", fill)
    except OSError as err:
        raise PetlError(
            f"--cache_dir {str(folder.parent)!r}: the cache could not be written ({err.strerror or err}); "
            "free space there, or give another --cache_dir or none (caches in memory)"
        ) from None


def _read_cache(folder: Path, start: int, dtype: str) -> HiddenStateCache | None:
    if not (folder / "complete").is_file():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        offsets = np.load(folder / "offsets.npy")
        shape = tuple(meta["shape"])
        raw = np.memmap(folder / "states.bin", dtype=_STORAGE_DTYPES[dtype], mode="r", shape=shape)
    except (OSError, ValueError, KeyError) as err:
        logger.warning("cache %s is unreadable (%s); recomputing", folder, err)
        return None
    if meta.get("start") != start or meta.get("dtype") != dtype or int(offsets[-1]) != shape[0]:
        return None
    return HiddenStateCache(_as_tensor(raw, dtype), offsets, start, dtype)


def _as_tensor(raw: np.memmap, dtype: str) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():  # read-only memory map: torch warns that it is not writable
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(raw)
    return tensor if dtype == "float32" else tensor.view(TORCH_DTYPES[dtype])


class CachedCollator:
    """Wraps the run's collator: pads as usual, then adds the cached states of the batch's examples
    (looked up by the split and index columns), padded to the batch's length."""

    def __init__(self, base, caches: dict[int, HiddenStateCache]):
        self.base = base
        self.caches = caches

    def __call__(self, features: list[dict]) -> dict:
        splits = [f.pop(SPLIT_COLUMN) for f in features]
        indices = [f.pop(INDEX_COLUMN) for f in features]
        batch = self.base(features)
        keep = _keep_mask(batch)
        groups: dict[int, list[int]] = {}
        for row, s in enumerate(splits):
            groups.setdefault(int(s), []).append(row)
        hidden = None
        for s, rows in groups.items():
            part = self.caches[s].padded([int(indices[r]) for r in rows], keep[rows])
            if hidden is None:
                hidden = torch.zeros(*keep.shape, part.shape[-1])
            hidden[rows] = part
        batch[CACHE_INPUT] = hidden
        return batch


def tag_dataset(dataset, split_id: int):
    """Add the two columns the collator uses to find an example's cached states."""
    return dataset.add_column(SPLIT_COLUMN, [split_id] * len(dataset)).add_column(INDEX_COLUMN, list(range(len(dataset))))


def prepare_cached_datasets(
    model: nn.Module,
    datasets: dict[str, object],
    collator,
    dtype: str = "float32",
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
) -> tuple[dict[str, object], CachedCollator, dict]:
    """Build (or reuse) one cache per data set; returns the tagged data sets, a collator that adds
    the cached states to each batch, and a summary for the log and the results record."""
    import time

    start = cache_start_layer(model)
    attach_state(model).cache_start = start
    total = num_layers(model)
    began = time.time()
    caches, tagged = {}, {}
    for split_id, (name, dataset) in enumerate(datasets.items()):
        caches[split_id] = build_cache(model, start, dataset, collator, dtype, cache_dir, batch_size, name)
        tagged[name] = tag_dataset(dataset, split_id)
    info = {
        "start_layer": start,
        "num_layers": total,
        "skipped_layer_share": start / total,
        "dtype": dtype,
        "examples": sum(len(c) for c in caches.values()),
        "tokens": sum(int(c.offsets[-1]) for c in caches.values()),
        "bytes": sum(c.nbytes for c in caches.values()),
        "seconds": time.time() - began,
        "cache_dir": None if cache_dir is None else str(cache_dir),
    }
    logger.info(
        "frozen-layer cache: states entering layer %d of %d for %d examples (%d tokens, %.1f MB %s, %.1f s); "
        "every step now skips the embeddings and layers 0-%d (%.0f%% of the layers' forward)",
        start,
        total,
        info["examples"],
        info["tokens"],
        info["bytes"] / 1e6,
        dtype,
        info["seconds"],
        start - 1,
        100 * start / total,
    )
    return tagged, CachedCollator(collator, caches), info

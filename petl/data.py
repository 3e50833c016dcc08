"""Data: GLUE readers (classic TSV layout, the hub, or custom csv/json/tsv files), the official and
held-out split protocols, seeded subsampling and tokenisation.

Every split is a `TextSplit`: columns of raw text, integer (or float, for regression) labels, and the
original row ids (for prediction files). Nothing here depends on the network unless the hub is the
chosen source.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from petl.errors import PetlError
from petl.tasks import GlueTask

logger = logging.getLogger(__name__)
csv.field_size_limit(sys.maxsize)

HELDOUT_SMALL_TASK_LIMIT = 10_000  # tasks with fewer training examples split dev 50/50
HELDOUT_VALIDATION_SIZE = 1_000  # larger tasks hold out this many training examples


@dataclass
class TextSplit:
    text_a: list[str]
    text_b: list[str] | None
    labels: list | None  # int class ids, floats for regression, None when unlabeled
    ids: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.text_a)

    def select(self, indices: list[int]) -> TextSplit:
        return TextSplit(
            [self.text_a[i] for i in indices],
            None if self.text_b is None else [self.text_b[i] for i in indices],
            None if self.labels is None else [self.labels[i] for i in indices],
            [self.ids[i] for i in indices],
        )


@dataclass
class LabelSpace:
    """Label names (classification) or None (regression)."""

    names: list[str] | None

    @property
    def is_regression(self) -> bool:
        return self.names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.names is None else len(self.names)


# ---------------------------------------------------------------------------------------------
# Readers


def _read_tsv(path: Path, header: bool, names: tuple[str, ...] = ()) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise PetlError(f"data file {str(path)!r} does not exist")
    try:
        # utf-8-sig strips the byte-order mark in MRPC's header; QUOTE_NONE because GLUE text contains quotes
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    except (OSError, UnicodeDecodeError) as err:
        raise PetlError(f"data file {str(path)!r} cannot be read: {err}") from None
    if header:
        if not rows:
            raise PetlError(f"data file {str(path)!r} is empty")
        return rows[0], rows[1:]
    return list(names), rows


def _column(header: list[str], name: str, path: Path) -> int:
    if name not in header:
        raise PetlError(f"column {name!r} missing in {str(path)!r}; columns: {', '.join(header)}")
    return header.index(name)


def _to_label(value: str, labels: LabelSpace, where: str):
    value = value.strip()
    if labels.is_regression:
        try:
            return float(value)
        except ValueError:
            raise PetlError(f"label {value!r} in {where} is not a number (regression task)") from None
    if value not in labels.names:
        raise PetlError(f"label {value!r} in {where} is not in the task's label set {labels.names}")
    return labels.names.index(value)


def read_glue_split(glue_dir: Path, task: GlueTask, split: str) -> TextSplit:
    """Read one split of a GLUE task from the classic TSV layout."""
    path = glue_dir / task.folder / f"{split}.tsv"
    is_test = split.startswith("test")
    header_present = split not in task.headerless
    header, rows = _read_tsv(path, header_present, task.headerless_columns)
    text_cols = (task.test_text_columns or task.text_columns) if is_test else task.text_columns
    idx_text = [_column(header, c, path) for c in text_cols]
    idx_label = None if is_test else _column(header, task.label_column, path)
    idx_id = header.index("index") if "index" in header else (header.index("id") if "id" in header else None)
    labels = LabelSpace(None if task.labels is None else list(task.labels))
    text_a, text_b, ys, ids = [], [] if len(idx_text) > 1 else None, [] if idx_label is not None else None, []
    for row_num, row in enumerate(rows, start=2 if header_present else 1):
        if len(row) < len(header):
            raise PetlError(f"{str(path)!r} line {row_num} has {len(row)} columns, expected {len(header)}")
        text_a.append(row[idx_text[0]])
        if text_b is not None:
            text_b.append(row[idx_text[1]])
        if ys is not None:
            ys.append(_to_label(row[idx_label], labels, f"{path}:{row_num}"))
        ids.append(row[idx_id] if idx_id is not None else str(len(ids)))
    return TextSplit(text_a, text_b, ys, ids)


def load_glue_dir(glue_dir: str | Path, task: GlueTask, need_test: bool) -> dict[str, TextSplit]:
    glue_dir = Path(glue_dir)
    if not (glue_dir / task.folder).is_dir():
        raise PetlError(f"--glue_dir {str(glue_dir)!r} has no folder {task.folder!r} for task {task.name!r}")
    splits = ["train", *task.dev_splits] + (list(task.test_splits) if need_test else [])
    return {s: read_glue_split(glue_dir, task, s) for s in splits}


def load_glue_hub(task: GlueTask, need_test: bool) -> dict[str, TextSplit]:
    """The hub copy (`nyu-mll/glue`); needs the network. Split names mapped to the TSV ones."""
    import datasets

    try:
        ds = datasets.load_dataset("nyu-mll/glue", task.name)
    except Exception as err:  # noqa: BLE001 - any hub failure becomes one clear line
        raise PetlError(
            f"no local GLUE data for {task.name!r} (give --glue_dir or set GLUE_DIR) and the hub failed: "
            f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        ) from None
    names = {"train": "train"}
    for dev, test in zip(task.dev_splits, task.test_splits, strict=True):
        names[dev] = dev.replace("dev", "validation")
        if need_test:
            names[test] = test
    out = {}
    for ours, theirs in names.items():
        d = ds[theirs]
        cols = task.hub_text_columns
        labeled = not ours.startswith("test")
        out[ours] = TextSplit(
            list(d[cols[0]]),
            list(d[cols[1]]) if len(cols) > 1 else None,
            [float(x) for x in d["label"]] if labeled and task.is_regression else (list(d["label"]) if labeled else None),
            [str(i) for i in d["idx"]],
        )
    return out


def _read_table(path: str) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise PetlError(f"data file {path!r} does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix in (".json", ".jsonl"):
            text = p.read_text(encoding="utf-8")
            if text.lstrip().startswith("["):
                return json.loads(text)
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if suffix in (".csv", ".tsv"):
            with open(p, encoding="utf-8-sig", newline="") as fh:
                delim = "\t" if suffix == ".tsv" else ","
                quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
                return list(csv.DictReader(fh, delimiter=delim, quoting=quoting))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PetlError(f"data file {path!r} cannot be read: {err}") from None
    raise PetlError(f"data file {path!r} has extension {suffix!r}; allowed: .csv, .tsv, .json, .jsonl")


def _infer_labels(values: list) -> LabelSpace:
    """Floats with fractional parts mean regression; anything else is a class label (sorted)."""

    def as_float(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return None

    floats = [as_float(v) for v in values]
    if all(f is not None for f in floats):
        if any(f != int(f) for f in floats):
            return LabelSpace(None)
        return LabelSpace([str(int(v)) for v in sorted({int(f) for f in floats})])
    return LabelSpace(sorted({str(v) for v in values}))


def load_custom_files(
    files: dict[str, str], text_columns: list[str], label_column: str, labels: LabelSpace | None
) -> tuple[dict[str, TextSplit], LabelSpace]:
    """Any sentence or sentence-pair classification/regression data in csv/tsv/json(l)."""
    if not 1 <= len(text_columns) <= 2:
        raise PetlError(f"--text_columns {','.join(text_columns)!r} must name one or two columns")
    tables = {split: _read_table(path) for split, path in files.items() if path}
    if "train" in tables and labels is None:
        if label_column not in (tables["train"][0] if tables["train"] else {}):
            raise PetlError(f"--label_column {label_column!r} missing in {files['train']!r}")
        labels = _infer_labels([r[label_column] for r in tables["train"]])
    out = {}
    for split, rows in tables.items():
        if not rows:
            raise PetlError(f"data file {files[split]!r} has no rows")
        for col in text_columns:
            if col not in rows[0]:
                raise PetlError(f"column {col!r} missing in {files[split]!r}; columns: {', '.join(rows[0])}")
        has_label = label_column in rows[0] and split != "test"
        norm = (
            (lambda v: str(int(float(v))))
            if labels is not None and labels.names and all(n.lstrip("-").isdigit() for n in labels.names)
            else str
        )
        ys = None
        if has_label:
            ys = [
                _to_label(norm(r[label_column]) if not labels.is_regression else str(r[label_column]), labels, f"{files[split]}:{i + 1}")
                for i, r in enumerate(rows)
            ]
        out[split] = TextSplit(
            [str(r[text_columns[0]]) for r in rows],
            [str(r[text_columns[1]]) for r in rows] if len(text_columns) > 1 else None,
            ys,
            [str(r.get("idx", r.get("index", i))) for i, r in enumerate(rows)],
        )
    return out, labels


# ---------------------------------------------------------------------------------------------
# Protocols


@dataclass
class SplitPlan:
    """What trains, what selects, what is reported, and what is predicted."""

    train: TextSplit
    eval_sets: dict[str, TextSplit]  # "validation" (selection) first, then the other reported sets
    report_prefix: str  # "validation" (official) or "test" (heldout)
    predict_sets: dict[str, TextSplit]
    description: dict


def _fingerprint(ids: list) -> str:
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()[:12]


def _seeded_subset(n: int, k: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return sorted(rng.sample(range(n), k))


def plan_splits(
    raw: dict[str, TextSplit],
    dev_names: tuple[str, ...],
    test_names: tuple[str, ...],
    split_mode: str,
    split_seed: int,
    max_train_samples: int | None = None,
    train_fraction: float | None = None,
    max_eval_samples: int | None = None,
) -> SplitPlan:
    """Build the split plan. `heldout` never reports on what it selects on:
    small tasks (< 10k train) split dev 50/50 into validation/test; larger tasks hold out 1,000
    training examples as validation and report on dev. Seeded by `split_seed` alone, so every
    training seed and every process sees the same split."""
    if "train" not in raw:
        raise PetlError("no training data: give a training file or a task with a train split")
    train = raw["train"]
    devs = [raw[d] for d in dev_names if d in raw]
    if not devs:
        raise PetlError(f"no validation data: expected one of {', '.join(dev_names)}")
    suffixes = ["" if i == 0 else "_" + dev_names[i].split("_", 1)[-1] for i in range(len(devs))]
    desc: dict = {"split_mode": split_mode, "split_seed": split_seed}
    if split_mode == "official":
        eval_sets = {f"validation{s}": d for s, d in zip(suffixes, devs, strict=True)}
        report_prefix = "validation"
    elif split_mode == "heldout":
        if devs[0].labels is None:
            raise PetlError("--split_mode heldout needs a labeled validation file")
        if len(train) < HELDOUT_SMALL_TASK_LIMIT:
            order = list(range(len(devs[0])))
            random.Random(split_seed).shuffle(order)
            half = len(order) // 2
            val_idx, test_idx = sorted(order[:half]), sorted(order[half:])
            eval_sets = {"validation": devs[0].select(val_idx), "test": devs[0].select(test_idx)}
            for s, d in zip(suffixes[1:], devs[1:], strict=True):
                eval_sets[f"test{s}"] = d
            desc["protocol"] = "dev split 50/50 into validation and test"
        else:
            order = list(range(len(train)))
            random.Random(split_seed).shuffle(order)
            val_idx, train_idx = sorted(order[:HELDOUT_VALIDATION_SIZE]), sorted(order[HELDOUT_VALIDATION_SIZE:])
            eval_sets = {"validation": train.select(val_idx)}
            train = train.select(train_idx)
            for s, d in zip(suffixes, devs, strict=True):
                eval_sets[f"test{s}"] = d
            desc["protocol"] = f"{HELDOUT_VALIDATION_SIZE} training examples held out as validation; dev is test"
        report_prefix = "test"
    else:
        raise PetlError(f"--split_mode {split_mode!r} is not one of official, heldout")

    if train_fraction is not None:
        if not 0 < train_fraction <= 1:
            raise PetlError(f"--train_fraction {train_fraction} is out of range; allowed: (0, 1]")
        train = train.select(_seeded_subset(len(train), max(1, round(len(train) * train_fraction)), split_seed))
    if max_train_samples is not None and max_train_samples < len(train):
        train = train.select(_seeded_subset(len(train), max(0, max_train_samples), split_seed))
    if max_eval_samples is not None:
        eval_sets = {
            k: (v.select(_seeded_subset(len(v), max(0, max_eval_samples), split_seed)) if max_eval_samples < len(v) else v)
            for k, v in eval_sets.items()
        }
    if len(train) == 0:
        raise PetlError("the training set is empty after subsampling; raise --max_train_samples or --train_fraction")
    for k, v in eval_sets.items():
        if len(v) == 0:
            raise PetlError(f"the {k} set is empty after subsampling; raise --max_eval_samples")
    predict_sets = {}
    for name in test_names:
        if name in raw:
            predict_sets[name] = raw[name]
    desc["sizes"] = {"train": len(train), **{k: len(v) for k, v in eval_sets.items()}}
    desc["fingerprints"] = {"train": _fingerprint(train.ids), **{k: _fingerprint(v.ids) for k, v in eval_sets.items()}}
    logger.info("split plan: %s", json.dumps(desc))
    return SplitPlan(train, eval_sets, report_prefix, predict_sets, desc)


# ---------------------------------------------------------------------------------------------
# Tokenisation


def check_pair_template(template: str) -> None:
    missing = [p for p in ("{s1}", "{s2}") if p not in template]
    if missing:
        raise PetlError(f"--pair_template {template!r} lacks {' and '.join(missing)}; it must contain both {{s1}} and {{s2}}")


def join_pairs(text_a: list[str], text_b: list[str] | None, template: str | None) -> tuple[list[str], list[str] | None]:
    """Sentence pairs as one text through `template` ("{s1}\n{s2}"); unchanged without a template."""
    if template is None or text_b is None:
        return text_a, text_b
    check_pair_template(template)
    return [template.replace("{s1}", a).replace("{s2}", b) for a, b in zip(text_a, text_b, strict=True)], None


def tokenize_split(
    split: TextSplit,
    tokenizer,
    max_seq_length: int,
    pad_to_max_length: bool,
    is_regression: bool,
    pair_template: str | None = None,
    extra_tokenizers: dict | None = None,
):
    """Tokenise into a `datasets.Dataset` with model inputs and `labels` (when labeled).

    `pair_template`: pairs are joined into one text (decoders, which have no pair format).
    `extra_tokenizers` ({prefix: tokenizer}): the raw text is also tokenised by each, as
    `<prefix>_input_ids` etc. (IDPG's encoder reads the input with its own vocabulary)."""
    import datasets

    text_a, text_b = join_pairs(split.text_a, split.text_b, pair_template)
    enc = tokenizer(text_a, text_b, truncation=True, max_length=max_seq_length, padding="max_length" if pad_to_max_length else False)
    columns = {k: v for k, v in enc.items()}
    for prefix, extra in (extra_tokenizers or {}).items():
        limit = min(max_seq_length, getattr(extra, "model_max_length", max_seq_length) or max_seq_length)
        extra_enc = extra(split.text_a, split.text_b, truncation=True, max_length=limit)
        columns.update({f"{prefix}_{k}": v for k, v in extra_enc.items()})
    if split.labels is not None:
        columns["labels"] = [float(y) for y in split.labels] if is_regression else [int(y) for y in split.labels]
    return datasets.Dataset.from_dict(columns)


class ExtraInputsCollator:
    """Pads `<prefix>_*` columns with their own tokenizer, everything else with the main collator."""

    def __init__(self, collator, extra_tokenizers: dict):
        self.collator = collator
        self.extra_tokenizers = extra_tokenizers

    def __call__(self, features: list[dict]) -> dict:
        prefixes = tuple(f"{p}_" for p in self.extra_tokenizers)
        main = [{k: v for k, v in f.items() if not k.startswith(prefixes)} for f in features]
        batch = dict(self.collator(main))
        for prefix, tokenizer in self.extra_tokenizers.items():
            own = [{k.removeprefix(f"{prefix}_"): v for k, v in f.items() if k.startswith(f"{prefix}_")} for f in features]
            padded = tokenizer.pad(own, return_tensors="pt")
            batch.update({f"{prefix}_{k}": v for k, v in padded.items()})
        return batch

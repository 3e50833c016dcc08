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
import math
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from petl.choices import SPLIT_MODES
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
# Labels: every label is checked when a file is read, before anything heavy (the model) loads

SOURCE_FLAGS = {"train": "--train_file", "validation": "--validation_file", "test": "--test_file"}
ABSENT = object()  # a JSON record without the label key
LABEL_RULE = "numbers only (whole numbers: classes; any decimal: regression) or class names only"


def _shown(value) -> str:
    """A label as its file spells it: CSV/TSV cells quoted, JSON values as JSON (null, NaN, Infinity)."""
    if value is ABSENT:
        return "(no key)"
    return repr(value) if isinstance(value, str) else json.dumps(value)


def _label_text(value, where: str) -> str | None:
    """The label as text; None when it is missing (no key, JSON null, an empty cell)."""
    if value is None or value is ABSENT:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return value.strip() or None
    raise PetlError(f"{where}: label {_shown(value)} is not a single value; allowed: a number or a class name")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _whole(text: str) -> str | None:
    """'2', '2.0', '2e0' -> '2'; None for anything that is not a finite whole number."""
    try:
        return str(int(text))
    except ValueError:
        number = _number(text)
        return str(int(number)) if number is not None and math.isfinite(number) and number.is_integer() else None


def _allowed(labels: LabelSpace) -> str:
    return "finite numbers (regression)" if labels.is_regression else ", ".join(labels.names)


def _parse_label(value, labels: LabelSpace, where: str) -> int | float:
    """A class index, or a finite float for regression; anything else is refused naming `where`."""
    text = _label_text(value, where)
    if text is None:
        raise PetlError(f"{where}: label {_shown(value)} is missing; allowed: {_allowed(labels)}")
    if labels.is_regression:
        number = _number(text)
        if number is None or not math.isfinite(number):
            problem = "is not a number" if number is None else "is not a finite number"
            raise PetlError(f"{where}: label {_shown(value)} {problem}; allowed: {_allowed(labels)}")
        return number
    if text not in labels.names and all(_whole(name) == name for name in labels.names):
        text = _whole(text) or text  # 1, 1.0 and "1" are class "1" (whole-number classes only: 1.5 is not 1)
    if text not in labels.names:
        raise PetlError(f"{where}: label {_shown(value)} is not in the label set; allowed: {_allowed(labels)}")
    return labels.names.index(text)


def _parse_labels(values: list[tuple[str, object]], labels: LabelSpace, optional: bool = False) -> list | None:
    """`values`: (where, raw label) pairs. `optional` (test files): when every label is missing the
    split is unlabeled (None); labels that are there are checked all the same."""
    if optional and all(_label_text(value, where) is None for where, value in values):
        return None
    return [_parse_label(value, labels, where) for where, value in values]


def _infer_labels(values: list[tuple[str, object]], source: str) -> LabelSpace:
    """The label space of custom data without a task, decided by the training file's labels:
    all numbers -> classes if every one is a whole number (sorted by value), else regression;
    all text -> classes (sorted). Never guessed from a corrupt column: a missing, NaN or infinite
    label, numbers mixed with text (the first label of the smaller kind is named), or a single
    class is an error."""
    texts = []
    for where, value in values:
        text = _label_text(value, where)
        if text is None:
            raise PetlError(f"{where}: label {_shown(value)} is missing; allowed: a number or a class name in every row")
        texts.append((where, value, text))
    numeric = [t for t in texts if _number(t[2]) is not None]
    if 0 < len(numeric) < len(texts):
        named = [t for t in texts if _number(t[2]) is None] if 2 * len(numeric) >= len(texts) else numeric
        where, value, _ = named[0]
        kind, other = ("is not a number", "are numbers") if named is not numeric else ("is a number", "are not")
        majority = f"{len(texts) - len(named)} of {len(texts)} labels {other}"
        raise PetlError(f"{where}: label {_shown(value)} {kind}, but {majority}; allowed: {LABEL_RULE}")
    if numeric:
        for where, value, text in numeric:
            if not math.isfinite(float(text)):
                raise PetlError(f"{where}: label {_shown(value)} is not a finite number; allowed: {LABEL_RULE}")
        wholes = [_whole(text) for _, _, text in texts]
        if None in wholes:
            return LabelSpace(None)
        names = sorted(set(wholes), key=int)
    else:
        names = sorted({text for _, _, text in texts})
    if len(names) < 2:
        raise PetlError(
            f"{source}: every label is {names[0]!r}; allowed: at least two classes "
            "(for regression a label with decimals, or --task_name stsb)"
        )
    return LabelSpace(names)


def _shape_error(source: str, line: int, fields: list[str], columns: list[str], header: bool) -> PetlError:
    expected = f"the header's {len(columns)}" if header else f"the {len(columns)} expected"
    if len(fields) < len(columns):
        missing = ", ".join(repr(c) for c in columns[len(fields) :])
        return PetlError(f"{source} line {line} is cut short: it has {len(fields)} of {expected} fields; missing: {missing}")
    return PetlError(f"{source} line {line} has {len(fields)} fields, more than {expected} ({', '.join(columns)}); a stray delimiter?")


# ---------------------------------------------------------------------------------------------
# Readers


def _read_tsv(path: Path, header: bool, names: tuple[str, ...] = ()) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the (line number, fields) of each row; blank lines are skipped."""
    if not path.is_file():
        raise PetlError(f"data file {str(path)!r} does not exist")
    try:
        # utf-8-sig strips the byte-order mark in MRPC's header; QUOTE_NONE because GLUE text contains quotes
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = _csv_rows(fh, "\t", csv.QUOTE_NONE)
    except (OSError, UnicodeDecodeError) as err:
        raise PetlError(f"data file {str(path)!r} cannot be read: {err}") from None
    if header:
        if not rows:
            raise PetlError(f"data file {str(path)!r} is empty")
        return rows[0][1], rows[1:]
    return list(names), rows


def _column(header: list[str], name: str, path: Path) -> int:
    if name not in header:
        raise PetlError(f"column {name!r} missing in {str(path)!r}; columns: {', '.join(header)}")
    return header.index(name)


def read_glue_split(glue_dir: Path, task: GlueTask, split: str) -> TextSplit:
    """Read one split of a GLUE task from the classic TSV layout. Rows of the wrong length and bad
    labels are refused by line; test splits carry no labels (checked, then dropped, if a file has them)."""
    path = glue_dir / task.folder / f"{split}.tsv"
    source = f"--glue_dir file {str(path)!r}"
    is_test = split.startswith("test")
    header_present = split not in task.headerless
    header, rows = _read_tsv(path, header_present, task.headerless_columns)
    text_cols = (task.test_text_columns or task.text_columns) if is_test else task.text_columns
    idx_text = [_column(header, c, path) for c in text_cols]
    if is_test:
        idx_label = header.index(task.label_column) if task.label_column in header else None
    else:
        idx_label = _column(header, task.label_column, path)
    idx_id = header.index("index") if "index" in header else (header.index("id") if "id" in header else None)
    labels = LabelSpace(None if task.labels is None else list(task.labels))
    text_a, text_b, label_values, ids = [], [] if len(idx_text) > 1 else None, [], []
    for line, row in rows:
        if len(row) != len(header):
            raise _shape_error(source, line, row, header, header_present)
        text_a.append(row[idx_text[0]])
        if text_b is not None:
            text_b.append(row[idx_text[1]])
        if idx_label is not None:
            label_values.append((f"{source} line {line}", row[idx_label]))
        ids.append(row[idx_id] if idx_id is not None else str(len(ids)))
    ys = _parse_labels(label_values, labels, optional=is_test) if idx_label is not None else None
    return TextSplit(text_a, text_b, None if is_test else ys, ids)


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


@dataclass
class _Record:
    line: int  # where the record starts in its file, 1-based
    values: dict


def _json_array(text: str) -> list[tuple[int, object]]:
    """The items of a top-level JSON array with the line each starts on."""
    decoder, space = json.JSONDecoder(), re.compile(r"\s*")
    pos = space.match(text, space.match(text).end() + 1).end()  # past '['
    items, line, counted = [], 1, 0
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            line, counted = line + text.count("\n", counted, pos), pos
            value, pos = decoder.raw_decode(text, pos)
            items.append((line, value))
            pos = space.match(text, pos).end()
            if text.startswith(",", pos):
                pos = space.match(text, pos + 1).end()
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
    if text[pos:].strip():
        raise json.JSONDecodeError("Extra data", text, pos)
    return items


def _json_line(row: str, line: int, source: str):
    try:
        return json.loads(row)
    except json.JSONDecodeError as err:
        raise PetlError(f"{source} line {line} is not JSON: {err.msg} (column {err.colno})") from None


def _csv_rows(fh, delimiter: str, quoting: int) -> list[tuple[int, list[str]]]:
    """(line the row starts on, fields) for each non-blank row; quoted fields may span lines."""
    reader = csv.reader(fh, delimiter=delimiter, quoting=quoting)
    rows, start = [], 1
    for fields in reader:
        if fields:
            rows.append((start, fields))
        start = reader.line_num + 1
    return rows


def _read_table(path: str, source: str) -> list[_Record]:
    """The records of a csv/tsv/json/jsonl file, each with its line; CSV/TSV rows must match the header."""
    p = Path(path)
    if not p.is_file():
        raise PetlError(f"data file {path!r} does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix in (".json", ".jsonl"):
            text = p.read_text(encoding="utf-8-sig")
            if text.lstrip().startswith("["):
                items = _json_array(text)
            else:  # JSON lines; split on newlines only (a JSON string may hold U+2028, which splitlines() breaks on)
                items = [(n, _json_line(row, n, source)) for n, row in enumerate(text.split("\n"), start=1) if row.strip()]
            for line, value in items:
                if not isinstance(value, dict):
                    raise PetlError(f"{source} line {line}: a record is {_shown(value)[:60]}; allowed: a JSON object of columns")
            return [_Record(line, value) for line, value in items]
        if suffix in (".csv", ".tsv"):
            with open(p, encoding="utf-8-sig", newline="") as fh:
                delimiter = "\t" if suffix == ".tsv" else ","
                rows = _csv_rows(fh, delimiter, csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL)
            if not rows:
                return []
            header = rows[0][1]
            for line, fields in rows[1:]:
                if len(fields) != len(header):
                    raise _shape_error(source, line, fields, header, header=True)
            return [_Record(line, dict(zip(header, fields, strict=True))) for line, fields in rows[1:]]
    except json.JSONDecodeError as err:
        raise PetlError(f"{source} line {err.lineno} is not JSON: {err.msg} (column {err.colno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PetlError(f"data file {path!r} cannot be read: {err}") from None
    raise PetlError(f"data file {path!r} has extension {suffix!r}; allowed: .csv, .tsv, .json, .jsonl")


def load_custom_files(
    files: dict[str, str], text_columns: list[str], label_column: str, labels: LabelSpace | None
) -> tuple[dict[str, TextSplit], LabelSpace]:
    """Any sentence or sentence-pair classification/regression data in csv/tsv/json(l).

    `labels` None (no task): the training file's labels decide the label space (`_infer_labels`).
    Training and validation files need a label in every row; a test file may have none, and
    labels it has are checked (then dropped: predictions never read them)."""
    if not 1 <= len(text_columns) <= 2:
        raise PetlError(f"--text_columns {','.join(text_columns)!r} must name one or two columns")
    sources = {split: f"{SOURCE_FLAGS.get(split, split)} {path!r}" for split, path in files.items() if path}
    tables = {split: _read_table(files[split], source) for split, source in sources.items()}
    for split, records in tables.items():
        if not records:
            raise PetlError(f"{sources[split]} has no data rows")
        for col in text_columns:
            if col not in records[0].values:
                raise PetlError(f"column {col!r} missing in {files[split]!r}; columns: {', '.join(records[0].values)}")
            for record in records:
                if record.values.get(col) is None:
                    raise PetlError(f"{sources[split]} line {record.line}: text column {col!r} is missing")
        if split != "test" and not any(label_column in record.values for record in records):
            raise PetlError(
                f"{sources[split]} has no label column {label_column!r}; columns: {', '.join(records[0].values)} (see --label_column)"
            )

    def label_values(split: str) -> list[tuple[str, object]]:
        return [(f"{sources[split]} line {r.line}", r.values.get(label_column, ABSENT)) for r in tables[split]]

    if labels is None:
        if "train" not in tables:
            raise PetlError("custom files without --task_name need --train_file: its labels decide the label set")
        labels = _infer_labels(label_values("train"), sources["train"])
        kind = "regression" if labels.is_regression else f"{labels.num_labels} classes: {', '.join(labels.names)}"
        logger.info("labels of %s: %s (no --task_name: decided by the training labels)", sources["train"], kind)
    out = {}
    for split, records in tables.items():
        ys = _parse_labels(label_values(split), labels, optional=split == "test")
        out[split] = TextSplit(
            [str(r.values[text_columns[0]]) for r in records],
            [str(r.values[text_columns[1]]) for r in records] if len(text_columns) > 1 else None,
            None if split == "test" else ys,
            [str(r.values.get("idx", r.values.get("index", i))) for i, r in enumerate(records)],
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
    heldout_validation_size: int | None = None,
) -> SplitPlan:
    """Build the split plan. `heldout` never reports on what it selects on:
    small tasks (< 10k train) split dev 50/50 into validation/test; larger tasks hold out 1,000
    (or `heldout_validation_size`) training examples as validation and report on dev. Seeded by `split_seed` alone, so every
    training seed and every process sees the same split."""
    if "train" not in raw:
        raise PetlError("no training data: give a training file or a task with a train split")
    train = raw["train"]
    devs = [raw[d] for d in dev_names if d in raw]
    if not devs:
        raise PetlError(f"no validation data: expected one of {', '.join(dev_names)}")
    suffixes = ["" if i == 0 else "_" + dev_names[i].split("_", 1)[-1] for i in range(len(devs))]
    desc: dict = {"split_mode": split_mode, "split_seed": split_seed}
    if heldout_validation_size is not None and split_mode != "heldout":
        raise PetlError(f"--heldout_validation_size {heldout_validation_size} needs --split_mode heldout (given: {split_mode})")
    if split_mode == "official":
        eval_sets = {f"validation{s}": d for s, d in zip(suffixes, devs, strict=True)}
        report_prefix = "validation"
    elif split_mode == "heldout":
        if devs[0].labels is None:
            raise PetlError("--split_mode heldout needs a labeled validation file")
        if len(train) < HELDOUT_SMALL_TASK_LIMIT:
            if heldout_validation_size is not None:
                raise PetlError(
                    f"--heldout_validation_size {heldout_validation_size} applies to tasks with {HELDOUT_SMALL_TASK_LIMIT:,}+ "
                    f"training examples; this one has {len(train):,} and splits its dev set 50/50 into validation and test"
                )
            order = list(range(len(devs[0])))
            random.Random(split_seed).shuffle(order)
            half = len(order) // 2
            val_idx, test_idx = sorted(order[:half]), sorted(order[half:])
            eval_sets = {"validation": devs[0].select(val_idx), "test": devs[0].select(test_idx)}
            for s, d in zip(suffixes[1:], devs[1:], strict=True):
                eval_sets[f"test{s}"] = d
            desc["protocol"] = "dev split 50/50 into validation and test"
        else:
            size = heldout_validation_size or HELDOUT_VALIDATION_SIZE
            if size >= len(train):
                raise PetlError(f"--heldout_validation_size {size} leaves no training data; allowed: 1 to {len(train) - 1:,}")
            order = list(range(len(train)))
            random.Random(split_seed).shuffle(order)
            val_idx, train_idx = sorted(order[:size]), sorted(order[size:])
            eval_sets = {"validation": train.select(val_idx)}
            train = train.select(train_idx)
            for s, d in zip(suffixes, devs, strict=True):
                eval_sets[f"test{s}"] = d
            desc["protocol"] = f"{size} training examples held out as validation; dev is test"
        report_prefix = "test"
    else:
        raise PetlError(f"--split_mode {split_mode!r} is not one of {', '.join(SPLIT_MODES)}")

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

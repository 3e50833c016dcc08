"""Tables and figures from sweep results (JSONL written by petl.sweep), and nothing else.

    python -m petl.report results/layers_minilm.jsonl --out figures/

Every choice is made on the VALIDATION split; the test split (the reported split: test under
--split_mode heldout) is only ever reported:
- hyperparameters: cells that differ only in an optimiser setting axis (a list of `learning_rate`,
  `petl_lr`, `head_lr`, ... in the grid: TUNED_AXES) are candidates; the one with the best mean
  validation score over the seeds all candidates ran is kept, with all its seeds (a tuned sweep's
  records that carry `tune.chosen` are trusted instead);
- the best layer of each method, the probe at a layer (the validation-better of the probe kinds
  there), full fine-tuning's row, the best PETL row of the table and each row's layer.

Paired bootstrap 95% confidence intervals (petl.stats) where the records carry per-example test
predictions (`test_predictions`; records from before they were stored get means only, and every
file says the CIs are unavailable): each method vs the probe at the same layer, vs full fine-tuning,
method vs method at the same layer, and each method's chosen layer vs its other layers. The
decision rule (figures/README.md): a difference is claimed only when its 95% CI excludes zero;
otherwise it is "not separable at this budget". The ratio rows (relative improvement, gap bridged)
carry bootstrap CIs and are n/a when their denominator's CI includes zero.

Writes, per model and task:
- layers_<task>_<model>.png / .md: test score vs target layer, one colour per method in every
  figure (METHOD_COLOURS), bands = 95% CI (bootstrap over examples and seeds, or a t-interval over
  seeds without predictions; the figure says which), the validation-chosen layer marked, probe and
  full fine-tuning with their CIs, the constant predictor dotted; legend outside the axes;
- comparisons_<task>_<model>.md (comparisons_scale_up_... for a scale-up): every paired comparison above, with its CI and verdict, and the
  hyperparameter choices;
- scale_up_<task>_<model>.png / .md, instead of the layers_ files, when a method has a numeric
  non-optimiser setting axis (e.g. adapter_dim): score vs that setting at the method's
  validation-best layer, ticks at the tested values, probe and full-FT references;
and per model: table_<results>_<model>.md / .csv, one row per method at its validation-chosen layer
and hyperparameters, the constant predictor, the differences best PETL - best probe and best PETL -
full fine-tuning (or the row --reference names in its place), relative improvement = (best PETL - best
probe) / best probe and gap bridged = (best PETL - best probe) / (full - best probe). Scores are the selection metric (or --metric) in
percent. With --metric equal to a task's own selection metric, that task's suffixed files would
repeat the unsuffixed ones and are not written.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import itertools
import json
import math
import os
import re
import statistics
import sys
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from petl.errors import PetlError, exit_status, invoked_as
from petl.results import read_jsonl, write_atomic, write_text_atomic
from petl.stats import Estimate, PairedBootstrap, t_interval

METRIC_LABELS = {"f1": "F1", "accuracy": "accuracy", "matthews_correlation": "MCC", "combined_score": "Pearson/Spearman mean"}
# optimiser settings: a list of them in a grid is a set of candidates to choose from on validation, not a study axis
TUNED_AXES = frozenset(
    {"learning_rate", "petl_lr", "head_lr", "weight_decay", "warmup_ratio", "warmup_steps", "num_train_epochs",
     "per_device_train_batch_size", "lr_scheduler_type", "classifier_dropout"}
)  # fmt: skip
PROBE_RUN_METHODS = ("head", "linear-probe")
RESAMPLED_METRICS = ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr", "combined_score")
NOT_SEPARABLE = "not separable at this budget"
BORDERLINE = "borderline"  # one CI end within BORDERLINE_POINTS of zero: another bootstrap RNG seed may flip the verdict
BORDERLINE_POINTS = 0.2
NO_CI = "no CI: records without per-example predictions"
# one colour per method in every figure; other names get a stable colour from their name
METHOD_COLOURS = {
    "ffn": "#d62728", "ffn-adapter": "#ff7f0e", "attn-adapter": "#2ca02c", "lora": "#1f77b4", "prefix": "#9467bd",
    "bitfit": "#8c564b", "raw": "#7f7f7f", "raw-avg": "#7f7f7f", "raw-cls": "#bcbd22", "linear-probe": "#17becf",
    "full": "#000000", "two-layers": "#e377c2", "plus-lora": "#393b79", "dim-64": "#ff7f0e", "dim-2": "#ad494a",
    "ffn-adapter-dim": "#ff7f0e",
}  # fmt: skip
EXTRA_COLOURS = ("#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363")


def method_colour(name: str) -> str:
    return METHOD_COLOURS.get(name) or EXTRA_COLOURS[zlib.crc32(name.encode()) % len(EXTRA_COLOURS)]


# ---------------------------------------------------------------------------------------------
# records


def load_records(path: str) -> list[dict]:
    file = Path(path)
    if not file.is_file():
        raise PetlError(f"results file {path!r} does not exist")
    found, bad = read_jsonl(file)
    for number in bad:
        print(f"warning: {path}:{number} is not JSON (an interrupted write?); skipped", file=sys.stderr)
    if not any(rec.get("status", "ok") == "ok" for rec in found):
        raise PetlError(f"results file {path!r} holds no finished cells")
    # a re-run cell (retried after failure, or repeated) counts once: the last finished record wins,
    # unless the cell's latest record (a failed run) was made with other arguments (petl.sweep's
    # arguments_hash): then the finished one is stale and left out, never averaged with newer cells
    latest_ok, latest = {}, {}
    for rec in found:
        key = rec.get("cell_id") or id(rec)
        latest[key] = rec
        if rec.get("status", "ok") == "ok":
            latest_ok[key] = rec
    current = [rec for key, rec in latest_ok.items() if rec.get("arguments_hash") == latest[key].get("arguments_hash")]
    if len(current) < len(latest_ok):
        print(f"warning: {path}: {len(latest_ok) - len(current)} cell(s) last failed with other arguments; older results left out",
              file=sys.stderr)  # fmt: skip
    if not current:
        raise PetlError(f"results file {path!r} holds no finished cells with their latest arguments")
    # lines appended by run_glue.py --results_file (not a sweep) have no cell coordinates: the method is the row
    return [rec if "method_name" in rec else {**rec, "method_name": rec.get("method", "?"), "setting": {}} for rec in current]


def score(rec: dict, reported: dict | None = None) -> float | None:
    """The selection metric on the reported split, in percent (None if missing)."""
    reported = rec.get("reported_metrics") or {} if reported is None else reported
    metric = rec.get("selection_metric", "accuracy")
    for name in ("test", "validation"):
        if name in reported and metric in reported[name]:
            return _percent(reported[name][metric])
    for values in reported.values():
        if metric in values:
            return _percent(values[metric])
    return None


def validation_score(rec: dict) -> float | None:
    """The selection metric (or --metric) on the validation split, in percent: what every choice is made on."""
    metrics = rec.get("validation_metrics") or (rec.get("eval_metrics") or {}).get("validation") or {}
    metric = rec.get("selection_metric", "accuracy")
    return _percent(metrics[metric]) if metric in metrics else None


def _percent(value: float | None) -> float:
    """A metric in percent; null (recorded for an undefined or non-finite value) is NaN, as such values were before."""
    return math.nan if value is None else 100.0 * float(value)


def baseline_score(rec: dict) -> float | None:
    """The constant predictor's score (training majority class, or mean label) on the reported split,
    in percent. Records from before run_glue stored it get it recomputed from the GLUE data ($GLUE_DIR)
    when the recorded split fingerprints match; otherwise None (no baseline drawn)."""
    stored = rec.get("baselines")
    if stored is None:
        split = rec.get("split") or {}
        sizes = split.get("sizes") or {}
        eval_size = max((v for k, v in sizes.items() if k != "train"), default=None)  # = --max_eval_samples if it cut
        stored = _recomputed_baselines(
            rec.get("task"), split.get("split_mode"), split.get("split_seed"), sizes.get("train"), eval_size,
            tuple(sorted((split.get("fingerprints") or {}).items())), os.environ.get("GLUE_DIR"),
        )  # fmt: skip
    if not stored:
        return None
    return score(rec, {name: values["constant"] for name, values in stored.items()})


@functools.lru_cache(maxsize=64)
def _recomputed_baselines(task_name, split_mode, split_seed, train_size, eval_size, fingerprints, glue_dir) -> dict | None:
    if not (task_name and split_mode and glue_dir and train_size):
        return None
    from petl.data import load_glue_dir, plan_splits
    from petl.metrics import constant_baselines
    from petl.tasks import get_task

    try:
        task = get_task(task_name)
        raw = load_glue_dir(glue_dir, task, False)
        plan = plan_splits(raw, task.dev_splits, task.test_splits, split_mode, split_seed, train_size, None, eval_size)
    except (PetlError, OSError):
        return None
    if tuple(sorted(plan.description["fingerprints"].items())) != fingerprints:
        return None  # not the split the record was trained and scored on
    num_labels, regression = (1, True) if task.labels is None else (len(task.labels), False)
    return constant_baselines(task_name, plan, num_labels, regression)


def model_tag(rec: dict) -> str:
    """The backbone's short name (a raw probe truncates the backbone but keeps its name)."""
    return Path(str((rec.get("model") or {}).get("name_or_path", "model"))).name


def is_probe(rec: dict) -> bool:
    """A head on the frozen (truncated) backbone: the trained MLP head (`raw*`) or the fitted linear probe."""
    return rec.get("method") in PROBE_RUN_METHODS or rec["method_name"].startswith(("raw", "probe", "linear-probe"))


def is_full(rec: dict) -> bool:
    """Full fine-tuning, or the row named by --reference in its place (then only that row)."""
    if "reference_arm" in rec:
        return rec["reference_arm"]
    return rec.get("method") == "full" or rec["method_name"].split("@")[0].split(" ")[0] == "full"


def _describe(records: list[dict]) -> str:
    tasks = sorted({r["task"] for r in records})
    seeds = sorted({r["seed"] for r in records})
    modes = sorted({(r.get("split") or {}).get("split_mode", "?") for r in records})
    metrics = sorted({METRIC_LABELS.get(r.get("selection_metric"), r.get("selection_metric")) for r in records})
    sizes = sorted({(r.get("split") or {}).get("sizes", {}).get("train") for r in records} - {None})
    train = f", train {sizes[0]}" if len(sizes) == 1 else (f", train {sizes[0]}-{sizes[-1]}" if sizes else "")
    return (
        f"{model_tag(records[0])}, {'/'.join(tasks).upper()}, split {'/'.join(modes)}{train}, "
        f"seeds {','.join(map(str, seeds))}, {'/'.join(metrics)} (%) on the reported split"
    )


def _numeric_axes(rec: dict) -> list[str]:
    return [k for k, v in study_setting(rec).items() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def study_setting(rec: dict) -> dict:
    """The cell's setting axes that are part of the study (adapter_dim, ...), not candidates to choose from."""
    return {k: v for k, v in (rec.get("setting") or {}).items() if k not in TUNED_AXES}


def tuned_setting(rec: dict) -> dict:
    return {k: v for k, v in (rec.get("setting") or {}).items() if k in TUNED_AXES}


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(finite) if finite else math.nan


# ---------------------------------------------------------------------------------------------
# arms: one configuration (method, layer, study setting) with its hyperparameters chosen on validation


@dataclass
class Arm:
    """The records (one per seed) of one method at one layer and study setting, after the choice of its
    hyperparameters on validation."""

    name: str
    layer: int | None
    setting: dict
    records: list[dict]
    chosen: dict = field(default_factory=dict)  # tuned axis -> value chosen on validation
    candidates: dict = field(default_factory=dict)  # candidate (json) -> mean validation score over the shared seeds
    choice_seeds: list = field(default_factory=list)
    trusted: bool = False  # chosen by a tuned sweep (tune.chosen), not here
    tuned_at: int | None = None  # the layer a tuned sweep chose at, where it differs from this arm's (tune_layer)

    @property
    def label(self) -> str:
        text = self.name + (f"@{self.layer}" if self.layer is not None else "")
        for k, v in sorted(self.setting.items()):
            text += f" {k}={v}"
        return text

    @property
    def seeds(self) -> list[int]:
        return sorted(r["seed"] for r in self.records)

    def by_seed(self, seeds: list[int] | None = None) -> list[dict]:
        wanted = self.seeds if seeds is None else seeds
        return [r for s in wanted for r in self.records if r["seed"] == s]

    def test_scores(self) -> list[float]:
        return [s for s in map(score, self.records) if s is not None]

    @property
    def test_mean(self) -> float:
        return _mean(self.test_scores())

    @property
    def validation_mean(self) -> float:
        return _mean([validation_score(r) for r in self.records])

    @property
    def probe(self) -> bool:
        return is_probe(self.records[0])

    @property
    def full(self) -> bool:
        return is_full(self.records[0])

    @property
    def params(self):
        return trainable_without_head(self.records[0])


def trainable_without_head(rec: dict) -> int | None:
    """The record's trainable parameters outside the head. Full fine-tuning records written before
    2026-11-30 counted the head in (head_parameters 0): there the backbone is exactly what trains."""
    count = rec.get("trainable_parameters_without_head")
    if rec.get("method") == "full" and rec.get("head_parameters") == 0 and rec.get("backbone_parameters"):
        return rec["backbone_parameters"]
    return count


def _setting_order(setting: dict) -> tuple:
    """Settings in numeric order where they are numbers (adapter_dim 1, 2, 4, 16, not 1, 16, 2, 4)."""
    numeric = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    return tuple((k, (0, v, "") if numeric(v) else (1, 0, str(v))) for k, v in sorted(setting.items()))


def _candidate_key(rec: dict) -> str:
    return json.dumps(tuned_setting(rec), sort_keys=True)


def _cell_coordinate(cell_id: str | None, key: str) -> str | None:
    """`key`'s value in a sweep cell id ("sst2/lora/layer=15/tune.learning_rate=0.01/seed=1"), or None."""
    found = re.search(rf"(?:^|/){re.escape(key)}=([^/]+)", cell_id or "")
    return found.group(1) if found else None


def build_arms(records: list[dict]) -> list[Arm]:
    """Group records into arms and choose each arm's tuned hyperparameters on validation (see the module
    docstring). A tuned sweep's candidate records (`tune_role: candidate`) are not arms: its final
    records carry the choice (`tune.chosen`, made on validation by petl.tune_cells) and are trusted."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    later: dict[tuple, dict[str, float]] = defaultdict(dict)  # candidates a final's tune block may predate (extend)
    for r in records:
        if r.get("tune_role") == "candidate":
            if r.get("status", "ok") == "ok" and r.get("tune_values"):
                values = json.dumps(r["tune_values"], sort_keys=True)
                later[(model_tag(r), r["task"], r.get("tune_group"))][values] = validation_score(r)
            continue
        key = (model_tag(r), r["task"], r["method_name"], r.get("layer"), json.dumps(study_setting(r), sort_keys=True))
        groups[key].append(r)
    arms = []
    for (_, _, name, layer, setting), recs in groups.items():
        tuned = next((r["tune"] for r in recs if isinstance(r.get("tune"), dict) and "chosen" in r["tune"]), None)
        if tuned is not None:
            means = {
                json.dumps(c.get("arguments") or {}, sort_keys=True): _percent(c.get("validation_score"))
                for c in tuned.get("candidates") or []
            }
            # a candidate trained past the grid's edge after these finals were recorded (the choice stood, so they
            # were not re-run): its score belongs to the evidence shown
            for key, value in later[(model_tag(recs[0]), recs[0]["task"], recs[0].get("tune_group"))].items():
                means.setdefault(key, value)
            # the seeds and the layer the candidates ran at (a tune_layer sweep reuses one layer's choice at the others)
            ran = [c.get("cell_id") for c in tuned.get("candidates") or []]
            seeds = sorted({int(s) for s in (_cell_coordinate(c, "seed") for c in ran) if s and s.isdigit()})
            seeds = seeds or sorted({r["seed"] for r in recs if r.get("reused_from")})
            at = _cell_coordinate(tuned.get("chosen_cell_id"), "layer")
            tuned_at = int(at) if at and at.isdigit() and int(at) != layer else None
            arms.append(Arm(name, layer, json.loads(setting), recs, dict(tuned["chosen"]), means, seeds, True, tuned_at))
            continue
        candidates: dict[str, list[dict]] = defaultdict(list)
        for r in recs:
            candidates[_candidate_key(r)].append(r)
        shared = sorted(set.intersection(*({r["seed"] for r in rs} for rs in candidates.values())))
        means = {}
        for key, rs in candidates.items():
            pool = [r for r in rs if r["seed"] in shared] or rs
            means[key] = _mean([validation_score(r) for r in pool])
        chosen_key = sorted(means, key=lambda k: (-(means[k] if not math.isnan(means[k]) else -math.inf), k))[0]
        arms.append(
            Arm(
                name,
                layer,
                json.loads(setting),
                candidates[chosen_key],
                json.loads(chosen_key),
                means if len(candidates) > 1 else {},
                shared,
            )
        )
    order = {name: i for i, name in enumerate(dict.fromkeys(r["method_name"] for r in records))}
    arms.sort(key=lambda a: (order[a.name], -1 if a.layer is None else a.layer, _setting_order(a.setting)))
    return arms


def best_by_validation(arms: list[Arm]) -> Arm | None:
    """The arm with the highest mean validation score (None if none has one); ties: the first."""
    scored = [a for a in arms if not math.isnan(a.validation_mean)]
    return max(scored, key=lambda a: a.validation_mean) if scored else None


# ---------------------------------------------------------------------------------------------
# one task of one model: arms, their choices and the paired bootstrap


@dataclass
class Comparison:
    left: str
    right: str
    difference: float
    interval: tuple[float, float] | None
    seeds: str
    note: str = ""
    arms: tuple = field(default=(), repr=False)  # (left, right): to compare again on other seeds

    @property
    def verdict(self) -> str:
        if self.interval is None:
            return self.note or NO_CI
        low, high = (round(bound, 1) for bound in self.interval)  # as shown: a bound shown as +0.0 excludes nothing
        if low > 0:
            return f"{self.left} better"
        if high < 0:
            return f"{self.right} better"
        return NOT_SEPARABLE

    @property
    def borderline(self) -> bool:
        """Exactly one end of the CI lies within BORDERLINE_POINTS of zero (both there: no difference at all)."""
        if self.interval is None:
            return False
        near = [abs(bound) <= BORDERLINE_POINTS for bound in self.interval]
        return near[0] != near[1]

    @property
    def shown_verdict(self) -> str:
        return f"{self.verdict} ({BORDERLINE})" if self.borderline else self.verdict

    def cells(self) -> list[str]:
        return [self.left, self.right, _signed(self.difference, self.interval), self.shown_verdict, self.seeds]


def _signed(value: float, interval: tuple[float, float] | None) -> str:
    if interval is None:
        return f"{value:+.1f}"
    return f"{value:+.1f} [{interval[0]:+.1f}, {interval[1]:+.1f}]"


class TaskStudy:
    """The arms of one model on one task, the choices made on validation, and the bootstrap over its test examples."""

    def __init__(self, records: list[dict], resamples: int | None = None):
        self.records = records
        # the row in full fine-tuning's role: full fine-tuning, or the method named by --reference (LoRA on all layers, say)
        named = next((r["method_name"] for r in records if r.get("reference_arm")), None)
        self.reference_label, self.reference_title = (named, f"the reference ({named})") if named else ("full", "full fine-tuning")
        self.arms = build_arms(records)
        self.metric = records[0].get("selection_metric", "accuracy")
        self.bootstrap, self.ci_note = self._bootstrap(resamples)
        self._estimates: dict[tuple, Estimate | None] = {}

    def _bootstrap(self, resamples: int | None) -> tuple[PairedBootstrap | None, str]:
        with_predictions = [r for r in self.records if r.get("test_predictions")]
        if not with_predictions:
            return None, NO_CI
        if self.metric not in RESAMPLED_METRICS:
            return None, f"no CI: {self.metric} is not resampled (allowed: {', '.join(RESAMPLED_METRICS)})"
        reference = with_predictions[0]["test_predictions"]
        self.reference_ids = reference["ids"]
        labels = reference["labels"]
        is_regression = any(isinstance(v, float) for v in labels) or self.records[0]["task"] == "stsb"
        kwargs = {"resamples": resamples} if resamples else {}
        return PairedBootstrap(labels, self.metric, is_regression, **kwargs), "95% paired bootstrap CI over test examples and seeds"

    def has_predictions(self, arm: Arm, seeds: list[int] | None = None) -> bool:
        if self.bootstrap is None:
            return False
        chosen = arm.by_seed(seeds)
        return bool(chosen) and all((r.get("test_predictions") or {}).get("ids") == self.reference_ids for r in chosen)

    def estimate(self, arm: Arm, seeds: list[int] | None = None):
        """The arm's test score (percent) on the shared draws, over `seeds` (default: all its seeds); None without predictions."""
        key = (id(arm), tuple(arm.seeds if seeds is None else seeds))
        if key not in self._estimates:  # tables and figures ask for the same arms again and again
            if not self.has_predictions(arm, seeds):
                self._estimates[key] = None
            else:
                est = self.bootstrap.estimate([r["test_predictions"]["values"] for r in arm.by_seed(seeds)])
                self._estimates[key] = Estimate(100 * est.point, 100 * est.draws)
        return self._estimates[key]

    def interval(self, arm: Arm) -> tuple[tuple[float, float] | None, str]:
        """The arm's 95% band and its kind: bootstrap (examples + seeds) or a t-interval over seeds."""
        est = self.estimate(arm)
        if est is not None:
            return est.interval(), "bootstrap"
        band = t_interval(arm.test_scores())
        return band, "t over seeds" if band else "none"

    @staticmethod
    def shared_seeds(*arms: Arm) -> list[int] | None:
        common = sorted(set.intersection(*(set(a.seeds) for a in arms)))
        return common or None

    def compare(self, left: Arm, right: Arm, left_label: str | None = None, right_label: str | None = None,
                seeds_wanted: list[int] | None = None) -> Comparison:  # fmt: skip
        """left minus right over the seeds both ran (or those of `seeds_wanted` both ran), paired by seed and test example."""
        seeds = self.shared_seeds(left, right)
        if seeds is not None and seeds_wanted is not None:
            seeds = [s for s in seeds if s in seeds_wanted] or None
        shown = f"{','.join(map(str, seeds))}" if seeds else "unpaired seeds"
        a, b = self.estimate(left, seeds), self.estimate(right, seeds)
        names = (left_label or left.label, right_label or right.label)
        if a is None or b is None:
            diff = _mean([score(r) for r in left.by_seed(seeds)]) - _mean([score(r) for r in right.by_seed(seeds)])
            note = self.ci_note if self.bootstrap is None else "no CI: test examples differ"
            return Comparison(*names, diff, None, shown, note, (left, right))
        d = a - b
        return Comparison(*names, d.point, d.interval(), shown, arms=(left, right))

    def constant_comparison(self, arm: Arm, label: str | None = None) -> Comparison | None:
        """The arm minus the constant predictor (the training majority class, which scores the recorded
        baseline on the test set), paired over the same resampled test examples; None where no class
        predicts that score (regression, or no baseline)."""
        constant = baseline_score(arm.records[0])
        est = self.estimate(arm)
        if constant is None or est is None or self.bootstrap.is_regression:
            return None
        labels = self.bootstrap.labels
        classes = [c for c in range(self.bootstrap.num_classes) if abs(100 * float(np.mean(labels == c)) - constant) < 1e-6]
        if not classes:
            return None
        const = self.bootstrap.estimate([np.full(len(labels), classes[0])])
        const = Estimate(100 * const.point, 100 * const.draws)
        d = est - const
        return Comparison(label or arm.label, "constant predictor", d.point, d.interval(), ",".join(map(str, arm.seeds)))

    # ---- the choices made on validation
    def layered(self) -> list[Arm]:
        return [a for a in self.arms if a.layer is not None and not a.setting]

    def unlayered(self) -> list[Arm]:
        return [a for a in self.arms if a.layer is None and not a.setting]

    def method_names(self, probes: bool | None = None) -> list[str]:
        names = dict.fromkeys(a.name for a in self.layered() if probes is None or a.probe == probes)
        return list(names)

    def best_layer(self, name: str) -> Arm | None:
        return best_by_validation([a for a in self.layered() if a.name == name])

    def probe_at(self, layer: int) -> Arm | None:
        return best_by_validation([a for a in self.layered() if a.layer == layer and a.probe])

    def full_arm(self) -> Arm | None:
        return best_by_validation([a for a in self.arms if a.full and not a.setting])

    def best_probe(self) -> Arm | None:
        return best_by_validation([a for a in self.arms if a.probe and not a.setting])

    def petl_rows(self) -> list[Arm]:
        """One arm per PETL method: its validation-best layer (methods without a layer: as they ran)."""
        rows = [self.best_layer(n) for n in self.method_names(probes=False) if not any(a.full for a in self.layered() if a.name == n)]
        rows += [a for a in self.unlayered() if not a.probe and not a.full]
        rows += [a for a in self.arms if a.setting]
        return [a for a in rows if a is not None]

    def probe_rows(self) -> list[Arm]:
        rows = [self.best_layer(n) for n in self.method_names(probes=True)]
        rows += [a for a in self.unlayered() if a.probe]
        return [a for a in rows if a is not None]

    def best_petl(self) -> Arm | None:
        return best_by_validation([a for a in self.petl_rows() if not a.setting] or self.petl_rows())

    def constant(self) -> float | None:
        return _constant_score(self.records)


def _constant_score(records: list[dict]) -> float | None:
    """Mean constant-predictor score over the records that have one (None if none has)."""
    values = [b for b in map(baseline_score, records) if b is not None]
    return statistics.fmean(values) if values else None


def _replicates(arm: Arm) -> str:
    """n seeds, and "identical" when every seed predicted the same (a deterministic fit, the linear probe's)."""
    values = [json.dumps((r.get("test_predictions") or {}).get("values")) for r in arm.records]
    same = len(values) > 1 and values[0] != "null" and len(set(values)) == 1
    return f"{len(values)}, identical" if same else str(len(values))


def _format(arm: Arm, study: TaskStudy, mark: str = "") -> str:
    band, kind = study.interval(arm)
    n = _replicates(arm)
    if band is None:
        return f"{arm.test_mean:.1f}{mark} (n={n})"
    return f"{arm.test_mean:.1f}{mark} [{band[0]:.1f}, {band[1]:.1f}] (n={n})"


def _choices_note() -> str:
    return (
        "Choices on the validation split only (layer, probe kind, learning rate and other optimiser settings, the best row); "
        "scores are on the test split, which chose nothing."
    )


# ---------------------------------------------------------------------------------------------
# tables


def layer_table(records: list[dict], study: TaskStudy | None = None) -> list[str] | None:
    """Markdown: test score by target layer per method (mean [95% CI], † = the layer chosen on validation),
    then the methods without a layer and the constant predictor; and the validation means that chose."""
    study = study or TaskStudy(records)
    layered = study.layered()
    if not layered:
        return None
    layers = sorted({a.layer for a in layered})
    band = _band_caption(study).removeprefix("bands: ")
    lines = [f"{_describe(records)}. Test mean [{band}], by target layer (0 = lowest); † layer chosen on validation.",
             _choices_note(), ""]  # fmt: skip
    lines += ["| method | " + " | ".join(map(str, layers)) + " |", "|---" * (len(layers) + 1) + "|"]
    for name in study.method_names():
        chosen = study.best_layer(name)
        cells = []
        for layer in layers:
            arm = next((a for a in layered if a.name == name and a.layer == layer), None)
            cells.append("" if arm is None else _format(arm, study, "†" if arm is chosen else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for arm in study.unlayered():
        lines.append(f"| {arm.name} (no layer) | {_format(arm, study)} |" + " |" * (len(layers) - 1))
    constant = study.constant()
    if constant is not None:
        lines.append(f"| constant predictor | {constant:.1f} |" + " |" * (len(layers) - 1))
    lines += ["", "Validation mean (what chose the layers and hyperparameters):", ""]
    lines += ["| method | " + " | ".join(map(str, layers)) + " |", "|---" * (len(layers) + 1) + "|"]
    for name in study.method_names():
        cells = []
        for layer in layers:
            arm = next((a for a in layered if a.name == name and a.layer == layer), None)
            cells.append("" if arm is None or math.isnan(arm.validation_mean) else f"{arm.validation_mean:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def comparison_table(study: TaskStudy) -> list[str]:
    """Markdown: every paired comparison (difference in points, 95% CI, verdict) and the hyperparameter choices."""
    header = ["| A | B | A - B (points) [95% CI] | verdict | seeds |", "|---|---|---|---|---|"]
    compared: list[Comparison] = []

    def section(title: str, comparisons: list[Comparison]) -> list[str]:
        if not comparisons:
            return []
        compared.extend(comparisons)
        return [f"### {title}", "", *header, *("| " + " | ".join(c.cells()) + " |" for c in comparisons), ""]

    lines = [f"{_describe(study.records)}; {compute_summary(study.records)}.", _choices_note(),
             f"Decision rule: a difference is claimed only when its 95% CI excludes zero; otherwise \"{NOT_SEPARABLE}\". "
             f"\"{BORDERLINE}\": one CI end within {BORDERLINE_POINTS} points of zero, so the verdict may flip with the "
             f"bootstrap's random draws. CIs: {study.ci_note}.", ""]  # fmt: skip
    vs_probe = []
    for name in study.method_names(probes=False):
        for arm in (a for a in study.layered() if a.name == name):
            probe = study.probe_at(arm.layer)
            if probe is not None:
                vs_probe.append(study.compare(arm, probe))
    title = ("Each method vs the probe at the same layer (probe kind chosen on validation; the probe reads layer L, the method "
             "at L keeps the frozen layers above L: the fair probe is the validation-chosen one over all layers)")  # fmt: skip
    lines += section(title, vs_probe)
    best_probe = study.best_probe()
    if best_probe is not None:
        probe_label = f"{best_probe.label} (chosen)"
        vs_best = [study.compare(arm, best_probe, f"{arm.label} (chosen)" if arm.layer is not None else None, probe_label)
                   for arm in study.petl_rows()]  # fmt: skip
        lines += section("Each method at its validation-chosen layer vs the validation-chosen probe over all layers", vs_best)
    chosen_rows = [(arm, f"{arm.label} (layer chosen on validation)" if arm.layer is not None else None)
                   for arm in [*study.petl_rows(), *study.probe_rows()]]  # fmt: skip
    full_arm = study.full_arm()
    vs_constant = [study.constant_comparison(arm, label) for arm, label in [*chosen_rows, *([(full_arm, None)] if full_arm else [])]]
    lines += section("Each method at its validation-chosen layer vs the constant predictor (the dynamic range)",
                     [c for c in vs_constant if c is not None])  # fmt: skip
    full = study.full_arm()
    if full is not None:
        rows = [study.compare(arm, full, f"{arm.label} (layer chosen on validation)" if arm.layer is not None else None)
                for arm in [*study.petl_rows(), *study.probe_rows()]]  # fmt: skip
        lines += section(f"Each method at its validation-chosen layer vs {study.reference_title}", rows)
    petl = study.method_names(probes=False)
    pairs = []
    for layer in sorted({a.layer for a in study.layered()}):
        at = {a.name: a for a in study.layered() if a.layer == layer}
        pairs += [study.compare(left, right) for left, right in itertools.combinations([at[n] for n in petl if n in at], 2)]
    lines += section("Method vs method at the same layer", pairs)
    chosen = [a for a in study.petl_rows() if a.layer is not None and not a.setting]
    between = [
        study.compare(left, right, f"{left.label} (chosen)", f"{right.label} (chosen)") for left, right in itertools.combinations(chosen, 2)
    ]
    lines += section("Method vs method, each at its own validation-chosen layer", between)
    # a scale-up: every pair of PETL arms at a layer where some arm varies a setting (adapter width, ...),
    # so each width meets the others and the arms that spend parameters another way (two layers, +LoRA)
    settings = []
    for layer in sorted({a.layer for a in study.arms if a.setting and a.layer is not None}):
        at = [a for a in study.arms if a.layer == layer and not a.probe and not a.full]
        settings += [study.compare(left, right) for left, right in itertools.combinations(at, 2)]
    lines += section("Settings: every pair of PETL arms at a layer where a setting varies", settings)
    profile = []
    for name in study.method_names():
        chosen = study.best_layer(name)
        if chosen is None:
            continue
        for arm in (a for a in study.layered() if a.name == name and a is not chosen):
            profile.append(study.compare(chosen, arm, f"{chosen.label} (chosen on validation)"))
    lines += section("Layer profile: each method's validation-chosen layer vs its other layers", profile)
    lines += tuning_seed_lines(study, compared)
    lines += _last_epoch_lines(study)
    tuned = [a for a in study.arms if a.candidates or a.trusted]
    if tuned:
        lines += ["### Hyperparameters chosen on validation", ""]
        lines += ["| arm | chosen | validation mean per candidate (seeds all candidates ran) | chosen by |", "|---|---|---|---|"]
        edges = 0
        for a in tuned:
            shown = ", ".join(f"{_short(k)}: {v:.1f}" for k, v in a.candidates.items())
            edge = grid_edge(a.chosen, list(a.candidates))
            edges += edge is not None
            chosen = _short(json.dumps(a.chosen)) + (f" ({edge})" if edge else "")
            by = "this report" if not a.trusted else "tuned sweep (tune.chosen)"
            if a.tuned_at is not None:
                by = f"tuned sweep at layer {a.tuned_at} (tune.chosen), reused at layer {a.layer}"
            lines.append(f"| {a.label} | {chosen} | {shown} (seeds {','.join(map(str, a.choice_seeds))}) | {by} |")
        lines.append("")
        if edges:
            lines += [f"{edges} of {len(tuned)} choices lie at an edge of their candidate grid: the best value may lie outside "
                      "the grid, and those arms may be under-tuned.", ""]  # fmt: skip
    return lines


def tuning_seed_lines(study: TaskStudy, comparisons: list[Comparison]) -> list[str]:
    """The seed(s) a tuned sweep chose on are also reported, and the value chosen suits them best (a winner's
    curse; at the tuning layer the tuning run itself is the final): how far above the other seeds they score on
    test, and which verdicts change when only the other seeds are compared."""
    tuning = sorted({s for a in study.arms if a.trusted for s in a.choice_seeds})
    gaps = []
    for arm in (a for a in study.arms if a.trusted):
        inside = [score(r) for r in arm.records if r["seed"] in tuning]
        outside = [score(r) for r in arm.records if r["seed"] not in tuning]
        if None not in inside + outside and inside and outside:
            gaps.append(_mean(inside) - _mean(outside))
    if not gaps:
        return []
    names = ",".join(map(str, tuning))
    changed, seen = [], set()
    for c in comparisons:
        if not c.arms or tuple(map(id, c.arms)) in seen:  # the same pair can sit in two sections
            continue
        seen.add(tuple(map(id, c.arms)))
        shared = study.shared_seeds(*c.arms)
        others = [s for s in shared or [] if s not in tuning]
        if others and len(others) < len(shared):
            alternative = study.compare(*c.arms, c.left, c.right, seeds_wanted=others)
            if alternative.verdict != c.verdict:
                changed.append((c, alternative))
    lines = ["### Without the tuning seed", "",
             f"Seed {names} chose every tuned hyperparameter (on validation) and is also reported. On test it scored "
             f"{statistics.fmean(gaps):+.1f} points against the other seeds' mean, averaged over {len(gaps)} tuned arms "
             f"(from {min(gaps):+.1f} to {max(gaps):+.1f}; above them in {sum(g > 0 for g in gaps)} of {len(gaps)}).", ""]  # fmt: skip
    if not changed:
        return lines + ["No verdict above changes when only the other seeds are compared.", ""]
    lines += [f"Verdicts above that change when only the other seeds are compared ({len(changed)}):", "",
              "| A | B | all seeds | verdict | other seeds | verdict |", "|---|---|---|---|---|---|"]  # fmt: skip
    for c, alt in changed:
        lines.append(f"| {c.left} | {c.right} | {_signed(c.difference, c.interval)} | {c.shown_verdict} | "
                     f"{_signed(alt.difference, alt.interval)} (seeds {alt.seeds}) | {alt.shown_verdict} |")  # fmt: skip
    return lines + [""]


def grid_edge(chosen: dict | None, candidates: list[str]) -> str | None:
    """'highest X' / 'lowest X' when the chosen value of a numeric axis X is the largest or smallest of
    at least three candidate values (candidates: JSON objects of the tuned arguments); else None."""
    if not chosen:
        return None
    values = [json.loads(c) for c in candidates]
    for key, value in chosen.items():
        axis = sorted({v[key] for v in values if isinstance(v.get(key), (int, float)) and not isinstance(v.get(key), bool)})
        if len(axis) >= 3 and isinstance(value, (int, float)):
            if value == axis[-1]:
                return f"edge: highest {key}"
            if value == axis[0]:
                return f"edge: lowest {key}"
    return None


def ended_at_best(rec: dict) -> bool | None:
    """Whether the run's best validation epoch was its last evaluation (still improving when it stopped);
    None when the record has no evaluation history (the linear probe, old records)."""
    epochs = [h.get("epoch") for h in rec.get("evaluation_history") or [] if h.get("epoch") is not None]
    if not epochs or rec.get("best_epoch") is None:
        return None
    return rec["best_epoch"] >= max(epochs)


def _last_epoch_lines(study: TaskStudy) -> list[str]:
    """The arms some of whose seeds chose their last epoch: their budget may have cut them short."""
    rows = []
    for arm in study.arms:
        flags = [ended_at_best(r) for r in arm.records]
        if any(flags):
            rows.append(f"| {arm.label} | {sum(bool(f) for f in flags)} of {len(flags)} |")
    if not rows:
        return ["Every run's best validation epoch came before its last (or it has no epochs).", ""]
    return ["### Runs whose best validation epoch was their last (still improving when training stopped)", "",
            "| arm | seeds |", "|---|---|", *rows, ""]  # fmt: skip


def _short(candidate: str) -> str:
    return ", ".join(f"{k}={v}" for k, v in json.loads(candidate).items()) or "(default)"


def glue_table(records: list[dict], resamples: int | None = None) -> tuple[list[str], list[list[str]], list[dict]]:
    """Header, Markdown-ready rows, and CSV rows (numbers) for the per-task table: one row per method at
    its validation-chosen layer and hyperparameters (the layer shown in the cell), bold = the PETL row
    chosen on validation; then the constant predictor and the derived rows with their 95% CIs."""
    tasks = sorted({r["task"] for r in records})
    studies = {t: TaskStudy([r for r in records if r["task"] == t], resamples) for t in tasks}
    rows: dict[str, dict[str, Arm]] = defaultdict(dict)  # row label -> task -> arm
    kinds: dict[str, int] = {}
    for t, study in studies.items():
        for arm in study.petl_rows() + study.probe_rows() + ([study.full_arm()] if study.full_arm() else []):
            label = arm.name + "".join(f" {k}={v}" for k, v in sorted(arm.setting.items()))
            rows[label][t] = arm
            kinds.setdefault(label, 2 if arm.full else 1 if arm.probe else 0)
    labels = sorted(rows, key=lambda lab: (kinds[lab], list(rows).index(lab)))
    header = ["method", *tasks, "trainable params (no head)"]
    md_rows, csv_rows = [], []
    for lab in labels:
        cells, row = [], {"method": lab}
        for t in tasks:
            arm = rows[lab].get(t)
            if arm is None:
                cells.append("")
                continue
            band, kind = studies[t].interval(arm)
            n = len(arm.test_scores())
            if kind == "bootstrap":
                text = f"{arm.test_mean:.1f} [{band[0]:.1f}, {band[1]:.1f}]"
            elif n > 1:  # no per-example predictions: the spread over seeds (a t-interval over 2-3 seeds says little more)
                text = f"{arm.test_mean:.1f} ± {statistics.stdev(arm.test_scores()):.1f}"
            else:
                text = f"{arm.test_mean:.1f} (1 seed)"
            if arm.layer is not None:
                text += f" @{arm.layer}"
            if arm is studies[t].best_petl():
                text = f"**{text}**"
            cells.append(text)
            row[f"{t}_mean"], row[f"{t}_n"], row[f"{t}_layer"] = round(arm.test_mean, 3), n, arm.layer
            row[f"{t}_low"], row[f"{t}_high"], row[f"{t}_band"] = (round(band[0], 3), round(band[1], 3), kind) if band else ("", "", "")
            row[f"{t}_validation_mean"] = round(arm.validation_mean, 3)
            row[f"{t}_chosen"] = json.dumps(arm.chosen) if arm.chosen else ""
        params = next(iter(rows[lab].values())).params
        row["trainable_parameters_without_head"] = params
        md_rows.append([lab, *cells, f"{params:,}" if isinstance(params, int) else ""])
        csv_rows.append(row)
    derived = {name: [name] for name in ("constant predictor", "best PETL - best probe", "best PETL - full", "relative improvement",
                                         "gap bridged")}  # fmt: skip
    for t in tasks:
        for name, text in derived_cells(studies[t]).items():
            derived[name].append(text)
    reference = studies[tasks[0]].reference_label
    derived["best PETL - full"][0] = f"best PETL - {reference}"
    md_rows += [derived["constant predictor"] + ["0"]] + [derived[k] + [""] for k in list(derived)[1:]]
    csv_rows += [{"method": row[0], **dict(zip(tasks, row[1:], strict=True))} for row in derived.values()]
    return header, md_rows, csv_rows


def derived_cells(study: TaskStudy) -> dict[str, str]:
    """The constant predictor and the rows derived from the validation-chosen best PETL row, best probe
    and full fine-tuning: differences with their CIs and verdicts, ratios with CIs or n/a."""
    out = {}
    floor = study.constant()
    if floor is not None and math.isnan(floor):
        floor = None  # a constant prediction has no correlation (STS-B's Pearson/Spearman)
        out["constant predictor"] = "undefined"
    else:
        out["constant predictor"] = f"{floor:.1f}" if floor is not None else ""
    best, probe, full = study.best_petl(), study.best_probe(), study.full_arm()
    out["best PETL - best probe"] = _difference(study, best, probe)
    out["best PETL - full"] = _difference(study, best, full)
    if best is None or probe is None:
        out["relative improvement"] = out["gap bridged"] = ""
        return out
    arms = [a for a in (best, probe, full) if a is not None]
    seeds = study.shared_seeds(*arms)
    estimates = [study.estimate(a, seeds) for a in arms]
    if all(e is not None for e in estimates):
        p, r = estimates[0], estimates[1]
        out["relative improvement"] = _ratio(p - r, r, "best probe")
        out["gap bridged"] = _ratio(p - r, estimates[2] - r, f"{study.reference_label} - best probe") if full is not None else ""
        return out
    # no per-example predictions: point ratios, with the old checks on their denominators
    b, raw = best.test_mean, probe.test_mean
    if full is not None and floor is not None and full.test_mean <= floor:
        out["relative improvement"] = out["gap bridged"] = "n/a: full ≤ constant"
        return out
    out["relative improvement"] = f"{100 * (b - raw) / raw:+.1f}% (no CI)" if raw > 0 else "n/a: raw ≤ 0"
    if full is None:
        out["gap bridged"] = ""
    else:
        out["gap bridged"] = f"{100 * (b - raw) / (full.test_mean - raw):.1f}% (no CI)" if full.test_mean > raw else "n/a: full ≤ raw"
    return out


def _difference(study: TaskStudy, left: Arm | None, right: Arm | None) -> str:
    if left is None or right is None:
        return ""
    comparison = study.compare(left, right)
    return f"{_signed(comparison.difference, comparison.interval)}: {comparison.shown_verdict}"


def _ratio(numerator, denominator, name: str) -> str:
    if not denominator.excludes_zero():
        low, high = denominator.interval()
        return f"n/a: the CI of {name} includes 0 [{low:+.1f}, {high:+.1f}]"
    ratio = numerator.ratio(denominator)
    low, high = ratio.interval()
    return f"{100 * ratio.point:+.1f}% [{100 * low:+.1f}%, {100 * high:+.1f}%]"


def scale_table(records: list[dict], study: TaskStudy | None = None) -> list[str]:
    """Markdown: one row per (method, setting axis) at its validation-chosen layer, one column per setting value."""
    study = study or TaskStudy(records)
    lines = [f"{_describe(records)}. Test mean [95% CI, {study.ci_note}], by setting value.", _choices_note(), ""]
    for (name, axis), arms in scaled_series(study).items():
        xs = [a.setting[axis] for a in arms]
        layer = arms[0].layer
        where = f" at layer {layer} (chosen on validation)" if layer is not None else ""
        lines += [f"| {name}: {axis}{where} | " + " | ".join(map(str, xs)) + " |", "|---" * (len(xs) + 1) + "|"]
        lines.append("| score | " + " | ".join(_format(a, study) for a in arms) + " |")
        lines.append("| trainable parameters (without head) | " + " | ".join(str(a.params or "") for a in arms) + " |")
        lines.append("")
    return lines


def scaled_series(study: TaskStudy) -> dict[tuple[str, str], list[Arm]]:
    """(method, numeric axis) -> its arms by axis value, at the layer whose best validation score over the values is highest."""
    out = {}
    scaled = [a for a in study.arms if _numeric_axes(a.records[0])]
    for name in dict.fromkeys(a.name for a in scaled):
        mine = [a for a in scaled if a.name == name]
        for axis in dict.fromkeys(ax for a in mine for ax in _numeric_axes(a.records[0])):
            on_axis = [a for a in mine if axis in a.setting]
            layers = {a.layer for a in on_axis}

            def best_validation(layer, on_axis=on_axis) -> float:
                scores = [a.validation_mean for a in on_axis if a.layer == layer and not math.isnan(a.validation_mean)]
                return max(scores, default=-math.inf)

            best_layer = max(layers, key=best_validation) if len(layers) > 1 else next(iter(layers))
            out[(name, axis)] = sorted((a for a in on_axis if a.layer == best_layer), key=lambda a: a.setting[axis])
    return out


# ---------------------------------------------------------------------------------------------
# figures


def _band_caption(study: TaskStudy) -> str:
    kinds = {study.interval(a)[1] for a in study.arms} - {"none"}
    if kinds == {"bootstrap"}:
        return "bands: 95% paired-bootstrap CI over test examples and seeds"
    if kinds == {"t over seeds"}:
        return "bands: 95% t-interval over seeds (no per-example predictions recorded)"
    return "bands: 95% CI (bootstrap over examples and seeds where predictions were recorded, else t over seeds)"


def _reference_lines(study: TaskStudy, ax, probe: Arm | None = None) -> None:
    """Full fine-tuning (and a probe, if given) as horizontal lines with their CI bands; the constant predictor dotted."""
    for arm, style in ((study.full_arm(), "--"), (probe, "-.")):
        if arm is None:
            continue
        colour = method_colour(arm.name)
        band, _ = study.interval(arm)
        ax.axhline(arm.test_mean, linestyle=style, color=colour, label=f"{arm.label} ({arm.test_mean:.1f})")
        if band:
            ax.axhspan(band[0], band[1], color=colour, alpha=0.08)
    constant = study.constant()
    if constant is not None and not math.isnan(constant):
        ax.axhline(constant, linestyle=":", color="red", label=f"constant predictor ({constant:.1f})")


def _legend_outside(ax) -> None:
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _layer_series(study: TaskStudy, ax, name: str, star: bool = True, width: float = 1.6) -> None:
    """One method's test score by layer with its CI band (and a star at the validation-chosen layer)."""
    arms = sorted((a for a in study.layered() if a.name == name), key=lambda a: a.layer)
    colour = method_colour(name)
    style = "-." if arms[0].probe else "-"
    layers = [a.layer for a in arms]
    ax.plot(layers, [a.test_mean for a in arms], marker="o", markersize=3.5, color=colour, linestyle=style, linewidth=width, label=name)
    bands = [study.interval(a)[0] for a in arms]
    if all(bands):
        ax.fill_between(layers, [b[0] for b in bands], [b[1] for b in bands], color=colour, alpha=0.15 if not arms[0].probe else 0.08)
    chosen = study.best_layer(name)
    if star and chosen is not None:
        ax.plot([chosen.layer], [chosen.test_mean], marker="*", markersize=13, color=colour, markeredgecolor="black", linestyle="none")


def layer_panels(study: TaskStudy, fig, title: str) -> bool:
    """Small multiples: one panel per PETL method (test score by layer, 95% CI band, ★ = the layer chosen on
    validation), each with the probes by layer, full fine-tuning and the constant predictor, on one y scale;
    one legend outside the panels."""
    petl = study.method_names(probes=False)
    if not petl:
        return False
    columns = min(3, len(petl))
    rows = -(-len(petl) // columns)
    axes = fig.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    for ax, name in zip(axes.flat, petl, strict=False):
        for probe in study.method_names(probes=True):
            _layer_series(study, ax, probe, star=False, width=1.0)
        for arm in study.unlayered():
            if not arm.full:
                ax.axhline(arm.test_mean, linestyle="-.", linewidth=1.0, color=method_colour(arm.name), label=arm.name)
        _reference_lines(study, ax)
        _layer_series(study, ax, name)
        ax.set_title(name, fontsize=9, color=method_colour(name))
        ax.set_xticks(sorted({a.layer for a in study.layered()}))
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(petl) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("target layer (0 = lowest)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("test score (%)", fontsize=8)
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"{title}\n{_band_caption(study)}; ★ layer chosen on validation; learning rates, probe and layers chosen on validation",
                 fontsize=8)  # fmt: skip
    return True


def layer_figure(records: list[dict], ax, title: str | None = None, study: TaskStudy | None = None) -> bool:
    """Test score vs layer on `ax`, CI bands, the validation-chosen layer starred; False when nothing is layer-wise."""
    study = study or TaskStudy(records)
    layered = study.layered()
    if not layered:
        return False
    for name in study.method_names():
        arms = sorted((a for a in layered if a.name == name), key=lambda a: a.layer)
        colour = method_colour(name)
        style = "-." if arms[0].probe else "-"
        ax.plot([a.layer for a in arms], [a.test_mean for a in arms], marker="o", color=colour, linestyle=style, label=name)
        bands = [study.interval(a)[0] for a in arms]
        if all(bands):
            ax.fill_between([a.layer for a in arms], [b[0] for b in bands], [b[1] for b in bands], color=colour, alpha=0.12)
        chosen = study.best_layer(name)
        if chosen is not None:
            ax.plot([chosen.layer], [chosen.test_mean], marker="*", markersize=13, color=colour, markeredgecolor="black", linestyle="none")
    for arm in study.unlayered():
        if not arm.full:
            band, _ = study.interval(arm)
            ax.axhline(arm.test_mean, linestyle="-.", color=method_colour(arm.name), label=f"{arm.name} ({arm.test_mean:.1f})")
            if band:
                ax.axhspan(band[0], band[1], color=method_colour(arm.name), alpha=0.06)
    _reference_lines(study, ax)
    ax.set_xticks(sorted({a.layer for a in layered}))
    ax.set_xlabel("target layer (0 = lowest); ★ layer chosen on validation")
    ax.set_ylabel("test score (%)")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    ax.set_title((title + "\n" if title else "") + _band_caption(study) + "; choices on validation", fontsize=7)
    return True


def scale_figure(records: list[dict], ax, study: TaskStudy | None = None) -> bool:
    """Test score vs a numeric setting (log axis, ticks at the tested values) at the validation-chosen
    layer, with the probe at that layer and full fine-tuning as references."""
    study = study or TaskStudy(records)
    series = scaled_series(study)
    if not series:
        return False
    ticks, probe = set(), None
    for (name, axis), arms in series.items():
        xs = [a.setting[axis] for a in arms]
        ticks.update(xs)
        colour = method_colour(name)
        where = f" @{arms[0].layer}" if arms[0].layer is not None else ""
        ax.plot(xs, [a.test_mean for a in arms], marker="o", color=colour, label=f"{name}{where} ({axis})")
        bands = [study.interval(a)[0] for a in arms]
        if all(bands):
            ax.fill_between(xs, [b[0] for b in bands], [b[1] for b in bands], color=colour, alpha=0.12)
        if probe is None:
            probe = study.probe_at(arms[0].layer) if arms[0].layer is not None else study.best_probe()
    _reference_lines(study, ax, probe)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ticks))
    ax.set_xticklabels([str(x) for x in sorted(ticks)])
    ax.minorticks_off()
    axes = {axis for _, axis in series}
    ax.set_xlabel(f"{axes.pop() if len(axes) == 1 else 'setting value'} (log scale)")
    ax.set_ylabel("test score (%)")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    ax.set_title(_band_caption(study) + "; layer and probe chosen on validation", fontsize=7)
    return True


def _spans_layers(records: list[dict]) -> bool:
    """True when some method was run at two or more target layers."""
    layers = defaultdict(set)
    for r in records:
        if r.get("layer") is not None and not study_setting(r):
            layers[r["method_name"]].add(r["layer"])
    return any(len(v) > 1 for v in layers.values())


def row_label(rec: dict) -> str:
    label = rec["method_name"]
    if rec.get("layer") is not None:
        label += f"@{rec['layer']}"
    for k, v in sorted((rec.get("setting") or {}).items()):
        label += f" {k}={v}"
    return label


def _save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    # the temporary file's name has no .png ending, so the format is named; the legend outside is kept in
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=130, format=path.suffix[1:], bbox_inches="tight"))
    plt.close(fig)
    return path


def compute_summary(records: list[dict]) -> str:
    """Summed cell wall-clock time per kind of machine. Cells run side by side on one machine (sweep
    shards) each count their own wall-clock time, so on a shared GPU this exceeds the time it was held.
    A tuned group's first-seed final that reuses its chosen candidate's run (`reused_from`) ran nothing."""
    hours: dict[str, float] = defaultdict(float)
    for r in records:
        if r.get("reused_from"):
            continue
        hw = r.get("hardware") or {}
        where = hw.get("gpu") or (f"CPU ({hw['cpu_count']} cores)" if hw.get("cpu_count") else "CPU")
        hours[where] += (r.get("cell_seconds") or r.get("wall_time_seconds") or 0) / 3600
    return "cell time recorded: " + ", ".join(f"{h:.2f} h on {where}" for where, h in sorted(hours.items()))


def write_report(
    results: str, out_dir: str, metric: str | None = None, resamples: int | None = None, reference: str | None = None
) -> list[Path]:
    """`metric` replaces each record's selection metric as the score (e.g. accuracy on MRPC, whose
    F1 a constant "paraphrase" predictor already reaches); file names then end in _<metric>, except for
    tasks whose own selection metric it is (their files would repeat the unsuffixed ones). `reference`:
    the method (grid name) whose rows take full fine-tuning's place, where that was out of reach."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = load_records(results)
    if reference is not None:
        names = sorted({r["method_name"] for r in records})
        if reference not in names:
            raise PetlError(f"--reference {reference!r} names no method of {results}; allowed: {', '.join(names)}")
        records = [{**r, "reference_arm": r["method_name"] == reference} for r in records]
    suffix = ""
    own_metric_tasks: set[str] = set()
    if metric:
        missing = [r.get("cell_id", "?") for r in records if score({**r, "selection_metric": metric}) is None]
        if len(missing) == len(records):
            raise PetlError(f"--metric {metric!r}: no record of {results} has it on the reported split")
        by_task = defaultdict(set)
        for r in records:
            by_task[r["task"]].add(r.get("selection_metric"))
        own_metric_tasks = {t for t, ms in by_task.items() if ms == {metric}}
        records = [{**r, "selection_metric": metric} for r in records if r.get("cell_id", "?") not in missing]
        suffix = f"_{metric}"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    by_model = defaultdict(list)
    for r in records:
        by_model[model_tag(r)].append(r)
    for model, recs in by_model.items():
        for task in sorted({r["task"] for r in recs}):
            if task in own_metric_tasks:
                print(f"{task}: {metric} is its selection metric; its files without the suffix already show it")
                continue
            task_recs = [r for r in recs if r["task"] == task]
            study = TaskStudy(task_recs, resamples)
            scale_up = any(_numeric_axes(r) for r in task_recs)
            if scale_up:
                # a scale-up study: its per-layer panel and table belong to the scale_up_ files, so a
                # layer study of the same task and model keeps its layers_ files
                fig, (left, right) = plt.subplots(1, 2, figsize=(16, 5), layout="constrained")
                scale_figure(task_recs, left, study)
                layer_figure(task_recs, right, study=study)
                fig.suptitle(_describe(task_recs), fontsize=9)
                written.append(_save_figure(fig, out / f"scale_up_{task}_{model}{suffix}.png"))
                path = out / f"scale_up_{task}_{model}{suffix}.md"
                write_text_atomic(path, "\n".join(scale_table(task_recs, study) + [""] + (layer_table(task_recs, study) or [])) + "\n")
                written.append(path)
            elif _spans_layers(task_recs):
                fig = plt.figure(figsize=(12, 6.5), layout="constrained")
                if not layer_panels(study, fig, _describe(task_recs)):  # probes only: one panel
                    layer_figure(task_recs, fig.subplots(), _describe(task_recs), study)
                written.append(_save_figure(fig, out / f"layers_{task}_{model}{suffix}.png"))
                path = out / f"layers_{task}_{model}{suffix}.md"
                write_text_atomic(path, "\n".join(layer_table(task_recs, study)) + "\n")
                written.append(path)
            # a scale-up's comparisons beside its scale_up_ files: a layer study of the same task and model keeps its own
            path = out / f"comparisons_{'scale_up_' if scale_up else ''}{task}_{model}{suffix}.md"
            write_text_atomic(path, "\n".join(comparison_table(study)) + "\n")
            written.append(path)
        kept = [r for r in recs if r["task"] not in own_metric_tasks]
        if not kept:
            continue
        header, md_rows, csv_rows = glue_table(kept, resamples)
        stem = Path(results).stem
        md = [f"{_describe(kept)}; {compute_summary(kept)}. Test mean [95% CI] (or ± std over seeds where no per-example "
              "predictions were recorded) "
              "@ the layer chosen on validation; bold: the PETL row chosen on validation per task.", _choices_note(),
              f"Decision rule: a difference is claimed only when its 95% CI excludes zero, else \"{NOT_SEPARABLE}\" "
              f"(\"{BORDERLINE}\": one CI end within {BORDERLINE_POINTS} points of zero); "
              "ratio rows are n/a when their denominator's CI includes zero.", ""]  # fmt: skip
        md.append("| " + " | ".join(header) + " |")
        md.append("|" + "---|" * len(header))
        md += ["| " + " | ".join(row) + " |" for row in md_rows]
        path = out / f"table_{stem}_{model}{suffix}.md"
        write_text_atomic(path, "\n".join(md) + "\n")
        written.append(path)
        path = out / f"table_{stem}_{model}{suffix}.csv"
        keys = list(dict.fromkeys(k for row in csv_rows for k in row))
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=keys)
        writer.writeheader()
        writer.writerows(csv_rows)
        write_text_atomic(path, text.getvalue())
        written.append(path)
    print(f"{len(records)} cells; {compute_summary(records)}; wrote " + ", ".join(str(p) for p in written))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=invoked_as("petl-report", "python -m petl.report"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="+", help="JSONL results file(s) from petl.sweep")
    parser.add_argument("--out", default="figures", help="folder for figures and tables")
    parser.add_argument("--metric", help="score by this metric instead of each run's selection metric (e.g. accuracy)")
    parser.add_argument("--resamples", type=int, help="bootstrap resamples (default 4000; fixed RNG seed)")
    parser.add_argument(
        "--reference",
        help="the method (its name in the grid) whose rows stand in for full fine-tuning where that was out of reach, "
        "e.g. lora-all; then only it is compared as the reference",
    )
    args = parser.parse_args(argv)

    def report() -> None:
        if args.resamples is not None and args.resamples < 100:
            raise PetlError(f"--resamples {args.resamples} is too few; allowed: 100 or more")
        for results in args.results:
            write_report(results, args.out, args.metric, args.resamples, args.reference)

    return exit_status(report)


if __name__ == "__main__":
    sys.exit(main())

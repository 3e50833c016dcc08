"""Tables and figures from sweep results (JSONL written by petl.sweep), and nothing else.

    python -m petl.report results/layers_minilm.jsonl --out figures/

Writes, per model:
- layers_<task>_<model>.png: reported score vs target layer, one line per layer-wise method (mean
  over seeds, band = min..max), methods without a layer (full fine-tuning) as dashed lines, the
  constant predictor as a dotted red line; layers_<task>_<model>.md: the same numbers as a table;
- table_<results>_<model>.md / .csv: one row per method (mean ± std over seeds; best PETL score per
  column in bold) plus the rows "constant predictor" (training majority class, or mean label: what
  any run must beat), "relative improvement" = (best PETL - best raw) / best raw and
  "gap bridged" = (best PETL - best raw) / (full - best raw); raw rows are methods named raw*; the
  derived rows say n/a where a denominator carries no signal (best raw ≤ 0, full ≤ best raw, or
  full fine-tuning not above the constant predictor);
- scale_up_<task>_<model>.png / .md, instead of the layers_ files, when a method has a numeric
  setting axis (e.g. adapter_dim): score vs that setting on a log axis, next to score vs layer for
  the layer-wise methods. Layer files are written only where some method spans several layers.
Every figure and table names the model, task(s), split mode, seeds and metric. Scores are the
selection metric on the reported split (test in --split_mode heldout), in percent.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import math
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from petl.errors import PetlError, exit_status, invoked_as
from petl.results import read_jsonl, write_atomic, write_text_atomic

METRIC_LABELS = {"f1": "F1", "accuracy": "accuracy", "matthews_correlation": "MCC", "combined_score": "Pearson/Spearman mean"}


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
    return current


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


def _stats(values: list[float]) -> tuple[float, float, float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std, min(values), max(values)


def _group(records: list[dict], key) -> dict:
    out = defaultdict(list)
    for r in records:
        s = score(r)
        if s is not None:
            out[key(r)].append(s)
    return out


def _numeric_axes(rec: dict) -> list[str]:
    return [k for k, v in (rec.get("setting") or {}).items() if isinstance(v, (int, float))]


def layer_figure(records: list[dict], ax, title: str | None = None) -> bool:
    """Score vs layer on `ax`; returns False when there is nothing layer-wise to draw."""
    layered = _layered(records)
    if not layered:
        return False
    by = _group(layered, lambda r: (r["method_name"], r["layer"]))
    methods = list(dict.fromkeys(r["method_name"] for r in layered))
    for name in methods:
        layers = sorted(layer for (m, layer) in by if m == name)
        stats = [_stats(by[(name, layer)]) for layer in layers]
        line = ax.plot(layers, [s[0] for s in stats], marker="o", label=name)[0]
        ax.fill_between(layers, [s[2] for s in stats], [s[3] for s in stats], color=line.get_color(), alpha=0.15)
    flat = _group(_unlayered(records), lambda r: r["method_name"])
    for name, values in flat.items():
        mean = _stats(values)[0]
        ax.axhline(mean, linestyle="--", color="black" if name.startswith("full") else "grey", label=f"{name} ({mean:.1f})")
    _baseline_line(records, ax)
    all_layers = sorted({r["layer"] for r in layered})
    ax.set_xticks(all_layers)
    ax.set_xlabel("target layer (0 = lowest)")
    ax.set_ylabel("score (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    if title:
        ax.set_title(title, fontsize=8)
    return True


def _layered(records: list[dict]) -> list[dict]:
    """Cells placed at one target layer, without a setting axis: the score-vs-layer lines."""
    return [r for r in records if r.get("layer") is not None and not r.get("setting")]


def _unlayered(records: list[dict]) -> list[dict]:
    """Cells with neither a layer nor a setting (full fine-tuning, whole-backbone heads): flat lines."""
    return [r for r in records if r.get("layer") is None and not r.get("setting")]


def _constant_score(records: list[dict]) -> float | None:
    """Mean constant-predictor score over the records that have one (None if none has)."""
    values = [b for b in map(baseline_score, records) if b is not None]
    return statistics.fmean(values) if values else None


def _baseline_line(records: list[dict], ax) -> None:
    mean = _constant_score(records)
    if mean is not None:
        ax.axhline(mean, linestyle=":", color="red", label=f"constant predictor ({mean:.1f})")


def layer_table(records: list[dict]) -> list[str] | None:
    """Markdown: one row per layer-wise method, one column per target layer (mean ± std over seeds),
    then the methods without a layer and the constant predictor."""
    layered = _layered(records)
    if not layered:
        return None
    by = _group(layered, lambda r: (r["method_name"], r["layer"]))
    layers = sorted({r["layer"] for r in layered})
    lines = [f"{_describe(records)}. Mean ± std over seeds (n = seeds), by target layer (0 = lowest).", ""]
    lines += ["| method | " + " | ".join(map(str, layers)) + " |", "|---" * (len(layers) + 1) + "|"]

    def cell(values: list[float] | None) -> str:
        if not values:
            return ""
        mean, std, _, _ = _stats(values)
        return f"{mean:.1f} ± {std:.1f} (n={len(values)})" if len(values) > 1 else f"{mean:.1f} (n=1)"

    for name in dict.fromkeys(r["method_name"] for r in layered):
        lines.append(f"| {name} | " + " | ".join(cell(by.get((name, layer))) for layer in layers) + " |")
    flat = _group(_unlayered(records), lambda r: r["method_name"])
    for name, values in flat.items():
        lines.append(f"| {name} (no layer) | {cell(values)} |" + " |" * (len(layers) - 1))
    constant = _constant_score(records)
    if constant is not None:
        lines.append(f"| constant predictor | {constant:.1f} |" + " |" * (len(layers) - 1))
    return lines


def scale_figure(records: list[dict], ax) -> bool:
    scaled = [r for r in records if _numeric_axes(r)]
    if not scaled:
        return False
    for (name, axis), recs in _bucket(scaled).items():
        by = _group(recs, lambda r, axis=axis: r["setting"][axis])
        xs = sorted(by)
        stats = [_stats(by[x]) for x in xs]
        line = ax.plot(xs, [s[0] for s in stats], marker="o", label=f"{name} ({axis})")[0]
        ax.fill_between(xs, [s[2] for s in stats], [s[3] for s in stats], color=line.get_color(), alpha=0.15)
    flat = _group(_unlayered(records), lambda r: r["method_name"])
    for name, values in flat.items():
        ax.axhline(_stats(values)[0], linestyle="--", color="black" if name.startswith("full") else "grey", label=name)
    _baseline_line(records, ax)
    ax.set_xscale("log", base=2)
    axes = {axis for _, axis in _bucket(scaled)}
    ax.set_xlabel(f"{axes.pop() if len(axes) == 1 else 'setting value'} (log scale)")
    ax.set_ylabel("score (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return True


def _spans_layers(records: list[dict]) -> bool:
    """True when some method was run at two or more target layers."""
    layers = defaultdict(set)
    for r in _layered(records):
        layers[r["method_name"]].add(r["layer"])
    return any(len(v) > 1 for v in layers.values())


def scale_table(records: list[dict]) -> list[str]:
    """Markdown: one row per (method, setting axis), one column per setting value."""
    lines = [f"{_describe(records)}. Mean ± std over seeds, by setting value.", ""]
    for (name, axis), recs in _bucket([r for r in records if _numeric_axes(r)]).items():
        by = _group(recs, lambda r, axis=axis: r["setting"][axis])
        xs = sorted(by)
        lines += [f"| {name}: {axis} | " + " | ".join(map(str, xs)) + " |", "|---" * (len(xs) + 1) + "|"]
        cells = []
        for x in xs:
            mean, std, _, _ = _stats(by[x])
            cells.append(f"{mean:.1f} ± {std:.1f} (n={len(by[x])})")
        params = {r["setting"][axis]: r.get("trainable_parameters_without_head") for r in recs}
        lines.append("| score | " + " | ".join(cells) + " |")
        lines.append("| trainable parameters (without head) | " + " | ".join(str(params.get(x, "")) for x in xs) + " |")
        lines.append("")
    return lines


def _bucket(records: list[dict]) -> dict:
    out = defaultdict(list)
    for r in records:
        for axis in _numeric_axes(r):
            label = r["method_name"] + (f"@{r['layer']}" if r.get("layer") is not None else "")
            out[(label, axis)].append(r)
    return out


def row_label(rec: dict) -> str:
    label = rec["method_name"]
    if rec.get("layer") is not None:
        label += f"@{rec['layer']}"
    for k, v in sorted((rec.get("setting") or {}).items()):
        label += f" {k}={v}"
    return label


def glue_table(records: list[dict]) -> tuple[list[str], list[list[str]], list[dict]]:
    """Header, Markdown-ready rows, and CSV rows (numbers) for the per-task table."""
    tasks = sorted({r["task"] for r in records})
    by = _group(records, lambda r: (row_label(r), r["task"]))
    # rows in a fixed order whatever order the (possibly sharded) sweep finished its cells in: PETL
    # methods by name, then layer, then setting; then the raw probes; full fine-tuning last
    order = {}
    for r in records:
        name = r["method_name"]
        kind = 2 if name.split(" ")[0] == "full" else 1 if name.startswith("raw") else 0
        settings = tuple(sorted((k, str(v).zfill(8)) for k, v in (r.get("setting") or {}).items()))
        order.setdefault(row_label(r), (kind, name, -1 if r.get("layer") is None else r["layer"], settings))
    labels = sorted(order, key=order.get)
    means = {key: _stats(v) for key, v in by.items()}
    header = ["method", *tasks, "trainable params (no head)"]
    params = {}
    for r in records:
        params.setdefault(row_label(r), r.get("trainable_parameters_without_head"))

    def is_raw(label: str) -> bool:
        return label.startswith("raw")

    def is_full(label: str) -> bool:
        return label.split("@")[0].split(" ")[0] == "full"

    best_petl = {}
    for t in tasks:
        candidates = [(means[(lab, t)][0], lab) for lab in labels if (lab, t) in means and not is_raw(lab) and not is_full(lab)]
        best_petl[t] = max(candidates) if candidates else None
    md_rows, csv_rows = [], []
    for lab in labels:
        cells = []
        row = {"method": lab}
        for t in tasks:
            if (lab, t) not in means:
                cells.append("")
                continue
            mean, std, _, _ = means[(lab, t)]
            text = f"{mean:.1f} ± {std:.1f}" if len(by[(lab, t)]) > 1 else f"{mean:.1f} (1 seed)"
            if best_petl[t] and best_petl[t][1] == lab:
                text = f"**{text}**"
            cells.append(text)
            row[f"{t}_mean"], row[f"{t}_std"], row[f"{t}_n"] = round(mean, 3), round(std, 3), len(by[(lab, t)])
        row["trainable_parameters_without_head"] = params.get(lab)
        md_rows.append([lab, *cells, f"{params.get(lab):,}" if isinstance(params.get(lab), int) else ""])
        csv_rows.append(row)
    constant, rel, gap = ["constant predictor"], ["relative improvement"], ["gap bridged"]
    for t in tasks:
        floor = _constant_score([r for r in records if r["task"] == t])
        if floor is not None and math.isnan(floor):
            floor = None  # a constant prediction has no correlation (STS-B's Pearson/Spearman)
            constant.append("undefined")
        else:
            constant.append(f"{floor:.1f}" if floor is not None else "")
        raws = [means[(lab, t)][0] for lab in labels if is_raw(lab) and (lab, t) in means]
        fulls = [means[(lab, t)][0] for lab in labels if is_full(lab) and (lab, t) in means]
        best = best_petl[t][0] if best_petl[t] else None
        if not raws or best is None:
            rel.append("")
            gap.append("")
            continue
        raw = max(raws)
        # the derived rows are ratios; where their denominators carry no signal they are noise, so say so
        if fulls and floor is not None and fulls[0] <= floor:
            rel.append("n/a: full ≤ constant")
            gap.append("n/a: full ≤ constant")
            continue
        rel.append(f"{100 * (best - raw) / raw:+.1f}%" if raw > 0 else "n/a: raw ≤ 0")
        if fulls:
            gap.append(f"{100 * (best - raw) / (fulls[0] - raw):.1f}%" if fulls[0] > raw else "n/a: full ≤ raw")
        else:
            gap.append("")
    md_rows += [constant + ["0"], rel + [""], gap + [""]]
    csv_rows += [{"method": row[0], **dict(zip(tasks, row[1:], strict=True))} for row in (constant, rel, gap)]
    return header, md_rows, csv_rows


def _save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    # the temporary file's name has no .png ending, so the format is named
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=130, format=path.suffix[1:]))
    plt.close(fig)
    return path


def compute_summary(records: list[dict]) -> str:
    """Summed cell wall-clock time per kind of machine. Cells run side by side on one machine (sweep
    shards) each count their own wall-clock time, so on a shared GPU this exceeds the time it was held."""
    hours: dict[str, float] = defaultdict(float)
    for r in records:
        hw = r.get("hardware") or {}
        where = hw.get("gpu") or (f"CPU ({hw['cpu_count']} cores)" if hw.get("cpu_count") else "CPU")
        hours[where] += (r.get("cell_seconds") or r.get("wall_time_seconds") or 0) / 3600
    return "cell time recorded: " + ", ".join(f"{h:.2f} h on {where}" for where, h in sorted(hours.items()))


def write_report(results: str, out_dir: str, metric: str | None = None) -> list[Path]:
    """`metric` replaces each record's selection metric as the score (e.g. accuracy on MRPC, whose
    F1 a constant "paraphrase" predictor already reaches); file names then end in _<metric>."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = load_records(results)
    suffix = ""
    if metric:
        missing = [r.get("cell_id", "?") for r in records if score({**r, "selection_metric": metric}) is None]
        if len(missing) == len(records):
            raise PetlError(f"--metric {metric!r}: no record of {results} has it on the reported split")
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
            task_recs = [r for r in recs if r["task"] == task]
            if any(_numeric_axes(r) for r in task_recs):
                # a scale-up study: its per-layer panel and table belong to the scale_up_ files, so a
                # layer study of the same task and model keeps its layers_ files
                fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
                scale_figure(task_recs, left)
                layer_figure(task_recs, right)
                fig.suptitle(_describe(task_recs), fontsize=9)
                written.append(_save_figure(fig, out / f"scale_up_{task}_{model}{suffix}.png"))
                path = out / f"scale_up_{task}_{model}{suffix}.md"
                write_text_atomic(path, "\n".join(scale_table(task_recs) + [""] + (layer_table(task_recs) or [])) + "\n")
                written.append(path)
                continue
            if not _spans_layers(task_recs):
                continue  # every method at one layer (a GLUE-table grid): no score-vs-layer figure
            fig, ax = plt.subplots(figsize=(7, 4.5))
            layer_figure(task_recs, ax, _describe(task_recs))
            written.append(_save_figure(fig, out / f"layers_{task}_{model}{suffix}.png"))
            path = out / f"layers_{task}_{model}{suffix}.md"
            write_text_atomic(path, "\n".join(layer_table(task_recs)) + "\n")
            written.append(path)
        header, md_rows, csv_rows = glue_table(recs)
        stem = Path(results).stem
        md = [f"{_describe(recs)}. Mean ± std over seeds; bold: best PETL row per task.", ""]
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
    args = parser.parse_args(argv)
    return exit_status(lambda: [write_report(results, args.out, args.metric) for results in args.results] and None)


if __name__ == "__main__":
    sys.exit(main())

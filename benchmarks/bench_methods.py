#!/usr/bin/env python
"""Training cost of every method, with and without the frozen-layer cache, side by side with PEFT.

    python benchmarks/bench_methods.py                      # MiniLM-L6 and MPNet-base
    python benchmarks/bench_methods.py --models minilm-l6 --examples 128   # quick look

Each configuration runs in a fresh subprocess (so peak memory is its own) on the same MRPC training
examples in the same batch order: two warm-up steps, then one epoch over `--examples` examples. A
step is collate + forward + backward + AdamW step. Reported: median step time, epoch time, samples/s,
peak resident memory (peak CUDA memory on a GPU), trainable parameters, and for cached runs the
one-off cache pass and the cache's size. Writes benchmarks/results/<date>-<machine>.json and .md.
Ratios between rows are the point: absolute CPU times are noisy.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PEFT_TARGETS = {"bert": ["query", "value"], "roberta": ["query", "value"], "mpnet": ["q", "v"]}
MODEL_LAYERS = {"minilm-l6": 6, "mpnet-base": 12}


def configurations(model: str) -> list[dict]:
    """The grid: every method at a low and a high layer, cached and not, plus PEFT's versions."""
    n = MODEL_LAYERS[model]
    low, high = 1, n - 2
    per_layer = {
        "ffn": lambda layer: {"method": "ffn", "layers": str(layer)},
        "bitfit": lambda layer: {"method": "bitfit", "layers": str(layer)},
        "lora": lambda layer: {"method": "lora", "targets": "q,v", "rank": 8, "alpha": 16, "layers": str(layer)},
        "adapter": lambda layer: {"method": "adapter", "style": "serial", "dim": 64, "layers": str(layer)},
        "parallel": lambda layer: {"method": "adapter", "style": "parallel", "dim": 64, "layers": str(layer)},
        "prefix": lambda layer: {"method": "prefix", "length": 10, "layers": str(layer)},
    }
    out = [
        {"name": "full", "impl": "ours", "methods": [{"method": "full"}], "cache": False},
        {"name": "head", "impl": "ours", "methods": [{"method": "head"}], "cache": False},
        {"name": "head", "impl": "ours", "methods": [{"method": "head"}], "cache": True},
    ]
    for name, make in per_layer.items():
        for layer in (low, high):
            for cache in (False, True):
                out.append({"name": f"{name}@{layer}", "impl": "ours", "methods": [make(layer)], "cache": cache})
    out += [
        {"name": "prefix@all", "impl": "ours", "methods": [{"method": "prefix", "length": 10, "shift_positions": True}], "cache": False},
        {"name": "prompt", "impl": "ours", "methods": [{"method": "prompt", "length": 10, "position": "start"}], "cache": False},
        {"name": "full", "impl": "peft", "peft": "full", "cache": False},
        {"name": f"lora@{low}", "impl": "peft", "peft": "lora", "layers": [low], "cache": False},
        {"name": f"lora@{high}", "impl": "peft", "peft": "lora", "layers": [high], "cache": False},
        {"name": "prefix@all", "impl": "peft", "peft": "prefix", "cache": False},
        {"name": "prompt", "impl": "peft", "peft": "prompt", "cache": False},
    ]
    return out


# ------------------------------------------------------------------------------------------------
# child: one configuration


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS, so the peak
    after this covers only what follows (the cache pass and training), not model loading."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_child(spec: dict) -> dict:
    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding

    from petl.cache import CACHE_INPUT, CachedCollator, build_cache, cache_start_layer, run_from_layer, tag_dataset
    from petl.core import apply_petl
    from petl.data import load_glue_dir, tokenize_split
    from petl.models import load_model, load_tokenizer, resolve_model_path
    from petl.tasks import get_task

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    path = resolve_model_path(spec["model"])
    tokenizer = load_tokenizer(path)
    raw = load_glue_dir(spec["glue_dir"], get_task("mrpc"), False)["train"]
    dataset = tokenize_split(raw, tokenizer, 128, False, False)
    order = np.random.default_rng(0).permutation(len(dataset))[: spec["examples"] + 2 * spec["batch_size"]]
    dataset = dataset.select(order.tolist())
    model = load_model(path, 2, "model", seed=0)
    if spec["impl"] == "peft":
        model = _peft_model(model, spec)
    else:
        apply_petl(model, spec["methods"])
    model.to(device).train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    collator = DataCollatorWithPadding(tokenizer)
    result = {"trainable_parameters": trainable}
    start = None
    gc.collect()
    rss_setup = _rss_mb()
    _reset_peak_rss()
    if spec["cache"]:
        start = cache_start_layer(model)
        began = time.perf_counter()
        cache = build_cache(model, start, dataset, collator, batch_size=spec["batch_size"])  # a step's batch: no extra peak
        result.update(cache_seconds=time.perf_counter() - began, cache_bytes=cache.nbytes, cache_start_layer=start)
        dataset = tag_dataset(dataset, 0)
        collator = CachedCollator(collator, {0: cache})
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    rows = [dataset[i] for i in range(len(dataset))]
    bs = spec["batch_size"]
    batches = [rows[i : i + bs] for i in range(0, len(rows), bs)]
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i, features in enumerate(batches):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        batch = collator([dict(f) for f in features])
        hidden = batch.pop(CACHE_INPUT, None)
        batch = {k: v.to(device) for k, v in batch.items()}
        if hidden is not None:
            with run_from_layer(model, start, hidden):
                loss = model(**batch).loss
        else:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - t0)
    epoch = sum(times)
    n = sum(len(b) for b in batches[2:])
    result.update(
        median_step_seconds=statistics.median(times),
        epoch_seconds=epoch,
        epoch_examples=n,
        samples_per_second=n / epoch,
        peak_rss_mb=_peak_rss_mb(),
        rss_after_setup_mb=rss_setup,
        training_peak_above_setup_mb=_peak_rss_mb() - rss_setup,
    )
    if device.type == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _peft_model(model, spec: dict):
    import peft

    kind = spec["peft"]
    if kind == "full":
        model.requires_grad_(True)
        return model
    # train the same head as ours: PEFT's SEQ_CLS trains the classifier; BERT's pooler feeds only it
    extra = {"modules_to_save": ["pooler"]} if getattr(model.base_model, "pooler", None) is not None else {}
    if kind == "lora":
        targets = PEFT_TARGETS[model.config.model_type]
        cfg = peft.LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=targets, layers_to_transform=spec["layers"], **extra)
    elif kind == "prefix":
        cfg = peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=10, **extra)
    elif kind == "prompt":
        cfg = peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=10, **extra)
    else:
        raise ValueError(kind)
    return peft.get_peft_model(model, cfg)


# ------------------------------------------------------------------------------------------------
# parent: the grid, the targets, the files


def _find(rows, model, name, impl="ours", cache=False):
    for r in rows:
        if r["model"] == model and r["name"] == name and r["impl"] == impl and r["cache"] == cache and "error" not in r:
            return r
    return None


def evaluate_targets(rows: list[dict], epochs: int = 5) -> list[dict]:
    """The issue's targets, as ratios of rows measured in this run."""
    out = []

    def add(name, value, limit, relation, detail):
        if value is None:
            out.append({"target": name, "measured": None, "limit": limit, "met": None, "detail": detail + " (not measured)"})
            return
        met = value <= limit if relation == "<=" else value >= limit
        out.append({"target": name, "measured": round(value, 3), "limit": limit, "relation": relation, "met": met, "detail": detail})

    model = "mpnet-base" if any(r["model"] == "mpnet-base" for r in rows) else "minilm-l6"
    high = MODEL_LAYERS[model] - 2
    plain, cached = _find(rows, model, f"lora@{high}"), _find(rows, model, f"lora@{high}", cache=True)
    if plain and cached:
        add("1a cached/uncached epoch, LoRA q,v r8", cached["epoch_seconds"] / plain["epoch_seconds"], 0.4, "<=", f"{model} layer {high}")
        whole = (cached["cache_seconds"] + epochs * cached["epoch_seconds"]) / (epochs * plain["epoch_seconds"])
        add(f"1b cached/uncached {epochs}-epoch run incl. cache pass", whole, 0.6, "<=", f"{model} layer {high}")
    else:
        add("1 cached LoRA", None, 0.4, "<=", model)
    for m in sorted({r["model"] for r in rows}):
        h = MODEL_LAYERS[m] - 2
        for ours_name, peft_name in ((f"lora@{h}", f"lora@{h}"), ("lora@1", "lora@1"), ("prefix@all", "prefix@all"), ("prompt", "prompt")):
            ours, theirs = _find(rows, m, ours_name), _find(rows, m, peft_name, impl="peft")
            value = ours["median_step_seconds"] / theirs["median_step_seconds"] if ours and theirs else None
            add(f"2 ours/PEFT step time, {ours_name}", value, 1.05, "<=", m)
        plain, cached = _find(rows, m, "head"), _find(rows, m, "head", cache=True)
        value = plain["epoch_seconds"] / cached["epoch_seconds"] if plain and cached else None
        add("3 head uncached/cached epoch (speed-up)", value, 10.0, ">=", m)
        for r in rows:
            if r["model"] == m and r["cache"] and "error" not in r:
                base = _find(rows, m, r["name"])
                if base:
                    limit_mb = base["peak_rss_mb"] + r["cache_bytes"] / 2**20
                    add(f"4 peak memory cached <= uncached + cache, {r['name']}", r["peak_rss_mb"] / limit_mb, 1.0, "<=", m)
    return out


def markdown(rows: list[dict], targets: list[dict], meta: dict) -> str:
    lines = [
        f"Benchmark {meta['date']} on {meta['machine']} ({meta['device']}, {meta['threads']} threads, torch {meta['torch']}): "
        f"MRPC, batch {meta['batch_size']}, one epoch of {meta['examples']} examples after 2 warm-up steps.",
        "",
        "| model | method | impl | cache | trainable | median step (ms) | epoch (s) | samples/s "
        "| cache pass (s) | cache (MB) | peak RSS (MB) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            cache = "yes" if r["cache"] else "no"
            lines.append(f"| {r['model']} | {r['name']} | {r['impl']} | {cache} | | failed: {r['error'][:60]} | | | | | |")
            continue
        cache_s = f"{r['cache_seconds']:.1f}" if r["cache"] else ""
        cache_mb = f"{r['cache_bytes'] / 2**20:.1f}" if r["cache"] else ""
        lines.append(
            f"| {r['model']} | {r['name']} | {r['impl']} | {'yes' if r['cache'] else 'no'} | {r['trainable_parameters']:,} | "
            f"{1000 * r['median_step_seconds']:.0f} | {r['epoch_seconds']:.1f} | {r['samples_per_second']:.1f} | {cache_s} | {cache_mb} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    lines += ["", "| target | measured | limit | met |", "|---|---:|---:|---|"]
    for t in targets:
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
        measured = "" if t["measured"] is None else t["measured"]
        lines.append(f"| {t['target']} ({t['detail']}) | {measured} | {t.get('relation', '')} {t['limit']} | {met} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm-l6,mpnet-base")
    parser.add_argument("--examples", type=int, default=256, help="examples per measured epoch")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR", str(REPO.parent / "shared" / "data" / "glue")))
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated config names to run (lora@10,head); MODEL:NAME limits only that model, "
        "and a model no entry names runs the whole grid",
    )
    parser.add_argument("--out_dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of today's results file that this run does not re-measure (each row says which run measured it)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_child(json.loads(args.child))), flush=True)
        return 0
    import torch

    for model in args.models.split(","):
        if model not in MODEL_LAYERS:
            print(f"error: --models: unknown model {model!r}; allowed: {', '.join(MODEL_LAYERS)}", file=sys.stderr)
            return 2
    if not (Path(args.glue_dir) / "MRPC" / "train.tsv").is_file():
        print(f"error: --glue_dir {args.glue_dir!r} has no MRPC/train.tsv", file=sys.stderr)
        return 2
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": platform.node() or "unknown",
        "device": "cuda" if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "examples": args.examples,
        "python": platform.python_version(),
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{meta['date']}-{meta['machine']}"

    def write(rows: list[dict]) -> list[dict]:
        """Rewritten (atomically) after every configuration, so an interrupted run keeps what it measured."""
        from petl.results import write_text_atomic

        targets = evaluate_targets(rows)
        write_text_atomic(out_dir / f"{stem}.json", json.dumps({"meta": meta, "rows": rows, "targets": targets}, indent=2) + "\n")
        write_text_atomic(out_dir / f"{stem}.md", markdown(rows, targets, meta))
        return targets

    only = [s for s in args.only.split(",") if s]
    run_id = datetime.datetime.now().isoformat(timespec="seconds")
    earlier = []
    if args.merge and (out_dir / f"{stem}.json").is_file():
        earlier = json.loads((out_dir / f"{stem}.json").read_text())["rows"]
    rows = []

    def with_earlier(rows: list[dict]) -> list[dict]:
        """Today's earlier rows that this run has not re-measured, then this run's rows."""
        remeasured = {(r["model"], r["name"], r["impl"], r["cache"]) for r in rows}
        return [r for r in earlier if (r["model"], r["name"], r["impl"], r["cache"]) not in remeasured] + rows

    for model in args.models.split(","):
        wanted = {s.split(":", 1)[-1] for s in only if ":" not in s or s.startswith(model + ":")}
        for cfg in configurations(model):
            if wanted and cfg["name"] not in wanted:
                continue
            spec = {**cfg, "model": model, "glue_dir": args.glue_dir, "examples": args.examples, "batch_size": args.batch_size}
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
            row = {"model": model, **{k: cfg[k] for k in ("name", "impl", "cache")}, "config": cfg, "run": run_id}
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode == 0 and lines:
                row.update(json.loads(lines[-1][len("RESULT ") :]))
            else:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                row["error"] = tail
            rows.append(row)
            shown = (
                "failed: " + row["error"]
                if "error" in row
                else f"{1000 * row['median_step_seconds']:.0f} ms/step, epoch {row['epoch_seconds']:.1f} s"
            )
            print(f"{model:<11} {cfg['name']:<12} {cfg['impl']:<5} cache={'yes' if cfg['cache'] else 'no ':<3} {shown}", flush=True)
            write(with_earlier(rows))
    rows = with_earlier(rows)
    targets = write(rows)
    print(markdown(rows, targets, meta))
    print(f"wrote {out_dir / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Issue 20's GPU grids in one resumable script: SmolLM2-135M (MRPC + SST-2, 5 layers, every method, both
# references) and MPNet-base (MRPC + SST-2, all 12 layers), then their reports. Re-running resumes: finished
# cells are skipped (petl.sweep). The scale-up ran in full on CPU (sweeps/study_scale_up_minilm.yaml).
#
#   bash scripts/study_gpu.sh                # one GPU node: 8 cells packed per GPU
#   CELLS="--cpus_per_cell 2 --gpus_per_cell 0.25" bash scripts/study_gpu.sh
#   bash scripts/study_gpu.sh --tiny         # smoke test on any machine: 1 task, 1 layer, 1 seed,
#                                            # 32 examples, 1 epoch, results under $TMPDIR (minutes on CPU)
#   bash scripts/study_gpu.sh --dry_run      # list the cells (other petl.sweep flags pass through too)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
CELLS=${CELLS:---cpus_per_cell 2 --gpus_per_cell 0.125}
GRIDS=(sweeps/study_smollm2.yaml sweeps/study_mpnet.yaml)
REPORTS=figures

if [[ "${1:-}" == "--tiny" ]]; then
    shift
    out=$(mktemp -d "${TMPDIR:-/tmp}/study_gpu_tiny.XXXXXX")
    tiny=()
    for grid in "${GRIDS[@]}"; do
        name=$(basename "$grid" .yaml)
        "$PYTHON" - "$grid" "$out/$name.yaml" "$out" <<'EOF'
import sys

import yaml

source, target, out = sys.argv[1:]
grid = yaml.safe_load(open(source))
grid["name"] += "_tiny"
grid["results"] = f"{out}/{grid['name']}.jsonl"
grid["tasks"], grid["seeds"], grid["layers"] = grid["tasks"][:1], [1], grid["layers"][:1] if isinstance(grid["layers"], list) else [1]
grid["arguments"].update(max_train_samples=32, max_eval_samples=32, num_train_epochs=1)
for method in grid["methods"].values():
    method.pop("num_train_epochs", None)
    method.pop("tune_layer", None)
    tune = method.get("tune", {})
    for key, values in tune.items():
        if isinstance(values, list):
            tune[key] = values[:1]
    if "extend" in tune:
        tune["extend"] = 0
yaml.safe_dump(grid, open(target, "w"), sort_keys=False)
EOF
        tiny+=("$out/$name.yaml")
    done
    GRIDS=("${tiny[@]}")
    REPORTS=$out
    CELLS="--cpus_per_cell 2"
fi

for grid in "${GRIDS[@]}"; do
    "$PYTHON" -m petl.sweep "$grid" $CELLS "$@"
done
[[ " $* " == *" --dry_run "* ]] && exit 0
for grid in "${GRIDS[@]}"; do
    results=$("$PYTHON" -c 'import sys; from petl.grid import load_grid; print(load_grid(sys.argv[1])["results"])' "$grid")
    "$PYTHON" -m petl.report "$results" --out "$REPORTS"
done

#!/usr/bin/env bash
# A grid sweep (petl/sweep.py) and its figures and tables (petl/report.py). Resumes where it stopped.
#   bash scripts/layer_sweep.sh                              # sweeps/layers_minilm.yaml
#   GRID=sweeps/glue_minilm.yaml bash scripts/layer_sweep.sh
#   GRID=sweeps/layers_minilm.yaml bash scripts/layer_sweep.sh --dry_run
#   WORKERS=2 bash scripts/layer_sweep.sh                    # 2 shards in parallel, cores split (measure first: slower on 2 cores)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
export GLUE_DIR="${GLUE_DIR:-$ROOT/../shared/data/glue}"
export TOKENIZERS_PARALLELISM=false
GRID="${GRID:-$ROOT/sweeps/layers_minilm.yaml}"
FIGURES="${FIGURES:-$ROOT/figures}"
WORKERS="${WORKERS:-1}"
cd "$ROOT"
status=0
if [[ "$WORKERS" == 1 || " $* " == *" --dry_run "* ]]; then
    "$PYTHON" -m petl.sweep "$GRID" "$@" || status=$?
else
    threads=$(( $(nproc) / WORKERS )); (( threads >= 1 )) || threads=1
    pids=()
    for ((k = 0; k < WORKERS; k++)); do
        OMP_NUM_THREADS=$threads "$PYTHON" -m petl.sweep "$GRID" --shard "$k/$WORKERS" "$@" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || { rc=$?; (( rc > status )) && status=$rc; }; done
fi
[[ $status -eq 2 ]] && exit 2                                 # bad grid: nothing ran
if [[ " $* " != *" --dry_run "* ]]; then
    results="$("$PYTHON" -c 'import sys; from petl.sweep import load_grid; print(load_grid(sys.argv[1])["results"])' "$GRID")"
    "$PYTHON" -m petl.report "$results" --out "$FIGURES"
fi
exit $status

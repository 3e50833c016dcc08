#!/usr/bin/env bash
# A grid sweep (petl/sweep.py) and its figures and tables (petl/report.py). Resumes where it stopped.
#   bash scripts/layer_sweep.sh                              # sweeps/layers_minilm.yaml
#   GRID=sweeps/glue_minilm.yaml bash scripts/layer_sweep.sh
#   GRID=sweeps/layers_minilm.yaml bash scripts/layer_sweep.sh --dry_run
#   bash scripts/layer_sweep.sh --cpus_per_cell 2 --gpus_per_cell 0.125   # Ray packs cells: 8 to a GPU
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
export GLUE_DIR="${GLUE_DIR:-$ROOT/../shared/data/glue}"
export TOKENIZERS_PARALLELISM=false
GRID="${GRID:-$ROOT/sweeps/layers_minilm.yaml}"
FIGURES="${FIGURES:-$ROOT/figures}"
cd "$ROOT"
status=0
"$PYTHON" -m petl.sweep "$GRID" "$@" || status=$?         # each cell a Ray task (petl/sweep_engine.py)
[[ $status -eq 2 ]] && exit 2                                 # bad grid: nothing ran
if [[ " $* " != *" --dry_run "* ]]; then
    results="$("$PYTHON" -c 'import sys; from petl.grid import load_grid; print(load_grid(sys.argv[1])["results"])' "$GRID")"
    "$PYTHON" -m petl.report "$results" --out "$FIGURES"
fi
exit $status

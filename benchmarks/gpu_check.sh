#!/usr/bin/env bash
# fp16/bf16 (every method, loss within 5% of fp32), DDP and DeepSpeed ZeRO-2/3 on this machine's GPU(s),
# with the step time of each method: the checks a CPU-only machine cannot make (benchmarks/gpu_check.py).
#   bash benchmarks/gpu_check.sh                          # writes benchmarks/results/gpu_check-<date>.json
#   bash benchmarks/gpu_check.sh --methods lora,prefix --steps 10
#   bash benchmarks/gpu_check.sh --cpu_smoke --output /tmp/smoke.json   # no GPU: the script's logic, fp32 on CPU
# Exit status: 0 passed, 1 a check failed (the table and the JSON say which), 2 no CUDA GPU or bad arguments.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
export GLUE_DIR="${GLUE_DIR:-$ROOT/../shared/data/glue}"
export TOKENIZERS_PARALLELISM=false
cd "$ROOT"
exec "$PYTHON" "$ROOT/benchmarks/gpu_check.py" "$@"

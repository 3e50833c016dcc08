# Shared defaults for scripts/<method>_hyper.sh. Every setting is an environment variable, and any
# extra arguments go to run_glue.py last, so they override the defaults (argparse keeps the last).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
export GLUE_DIR="${GLUE_DIR:-$ROOT/../shared/data/glue}"
MODEL="${MODEL:-minilm-l6}"
TASK="${TASK:-mrpc}"
SEED="${SEED:-42}"
EPOCHS="${EPOCHS:-3}"
BATCH="${BATCH:-16}"
SPLIT_MODE="${SPLIT_MODE:-heldout}"
HEAD_LR="${HEAD_LR:-1e-3}"
RESULTS_FILE="${RESULTS_FILE:-$ROOT/outputs/results.jsonl}"

run_method() {
    local method="$1" lr="$2"
    shift 2
    local tag="${method//,/+}"
    "$PYTHON" "$ROOT/run_glue.py" \
        --task_name "$TASK" --model_name_or_path "$MODEL" --method "$method" --seed "$SEED" \
        --split_mode "$SPLIT_MODE" --num_train_epochs "$EPOCHS" --per_device_train_batch_size "$BATCH" \
        --learning_rate "${LR:-$lr}" --head_lr "$HEAD_LR" --petl_lr "${PETL_LR:-${LR:-$lr}}" \
        --output_dir "${OUTPUT_DIR:-$ROOT/outputs/$TASK-$MODEL-$tag-s$SEED}" --overwrite_output_dir \
        --results_file "$RESULTS_FILE" "$@"
}

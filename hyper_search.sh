#!/usr/bin/env bash
# Ray Tune search around run_glue.py. Defaults: MiniLM-L6, RTE, Pfeiffer adapter, PBT with 4 trials.
# Every setting is an environment variable; extra arguments go to run_glue_hyper_search.py last and win.
#   bash hyper_search.sh
#   METHOD=lora TASK=mrpc TRIALS=8 SCHEDULER=asha bash hyper_search.sh --lora_layers 4-5
#   RAY_ADDRESS=auto GPUS_PER_TRIAL=1 bash hyper_search.sh        # on an existing Ray cluster
#   bash hyper_search.sh --resume                                 # continue a killed search in the same OUTPUT_DIR
# --resume loads Ray's pickles (tuner.pkl, trial state, checkpoints) from OUTPUT_DIR, and a crafted pickle runs
# code: it accepts only a folder your own search created (signed .petl_search.json), writable by no one else.
# Bad arguments or search spaces stop with one `error:` line and exit status 2 before Ray starts.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
export GLUE_DIR="${GLUE_DIR:-$ROOT/../shared/data/glue}"
export TOKENIZERS_PARALLELISM=false
TASK="${TASK:-rte}"
METHOD="${METHOD:-pfeiffer}"
MODEL="${MODEL:-minilm-l6}"
args=(
    --task_name "$TASK" --model_name_or_path "$MODEL" --method "$METHOD"
    --search_scheduler "${SCHEDULER:-pbt}" --search_trials "${TRIALS:-4}"
    --cpus_per_trial "${CPUS_PER_TRIAL:-1}" --gpus_per_trial "${GPUS_PER_TRIAL:-0}"
    --num_train_epochs "${EPOCHS:-4}" --per_device_train_batch_size "${BATCH:-16}" --seed "${SEED:-42}"
    --output_dir "${OUTPUT_DIR:-$ROOT/outputs/search-$TASK-$MODEL-${METHOD//,/+}}"
)
[[ -n "${RAY_ADDRESS:-}" ]] && args+=(--ray_address "$RAY_ADDRESS")
[[ -n "${SPACE:-}" ]] && args+=(--search_space "$SPACE")
exec "$PYTHON" "$ROOT/run_glue_hyper_search.py" "${args[@]}" "$@"

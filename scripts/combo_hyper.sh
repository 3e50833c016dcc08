#!/usr/bin/env bash
# A combination, as in the origin paper: adapter at ADAPTER_LAYERS + LoRA at LORA_LAYERS.
# Defaults: MiniLM on MRPC (scripts/common.sh); override with env vars or extra run_glue.py arguments.
source "$(dirname "$0")/common.sh"
run_method adapter,lora 1e-3 --adapter_layers "${ADAPTER_LAYERS:-2}" --adapter_dim "${DIM:-64}" --lora_layers "${LORA_LAYERS:-5}" --lora_rank "${RANK:-8}" "$@"

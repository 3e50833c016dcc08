#!/usr/bin/env bash
# LoRA on TARGETS at LAYERS.
# Defaults: MiniLM on MRPC (scripts/common.sh); override with env vars or extra run_glue.py arguments.
source "$(dirname "$0")/common.sh"
run_method lora 5e-4 --lora_targets "${TARGETS:-q,v}" --lora_rank "${RANK:-8}" --lora_alpha "${ALPHA:-16}" --lora_layers "${LAYERS:-all}" "$@"

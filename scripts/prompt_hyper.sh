#!/usr/bin/env bash
# Prompt tuning: LENGTH soft tokens.
# Defaults: MiniLM on MRPC (scripts/common.sh); override with env vars or extra run_glue.py arguments.
source "$(dirname "$0")/common.sh"
run_method prompt 1e-2 --prompt_length "${LENGTH:-10}" --prompt_init "${INIT:-vocab}" "$@"

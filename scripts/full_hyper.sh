#!/usr/bin/env bash
# Full fine-tuning.
# Defaults: MiniLM on MRPC (scripts/common.sh); override with env vars or extra run_glue.py arguments.
source "$(dirname "$0")/common.sh"
run_method full 5e-5 "$@"

#!/usr/bin/env bash
# Sparse FFN tuning of LAYERS (default: 4).
# Defaults: MiniLM on MRPC (scripts/common.sh); override with env vars or extra run_glue.py arguments.
source "$(dirname "$0")/common.sh"
run_method ffn 1e-4 --ffn_layers "${LAYERS:-4}" "$@"

#!/usr/bin/env bash
# Prefix tuning: LENGTH vectors at LAYERS.
# Defaults: MiniLM on MRPC (scripts/common.sh); override with env vars or extra run_glue.py arguments.
source "$(dirname "$0")/common.sh"
run_method prefix 5e-3 --prefix_length "${LENGTH:-10}" --prefix_layers "${LAYERS:-all}" --prefix_mlp_dim "${MLP_DIM:-0}" "$@"

#!/usr/bin/env bash
# (IA)^3 scaling vectors on TARGETS (subset of k,v,ffn) at LAYERS.
# Defaults: MiniLM on MRPC (scripts/common.sh); override with env vars or extra run_glue.py arguments.
source "$(dirname "$0")/common.sh"
run_method ia3 1e-2 --ia3_targets "${TARGETS:-k,v,ffn}" --ia3_layers "${LAYERS:-all}" "$@"

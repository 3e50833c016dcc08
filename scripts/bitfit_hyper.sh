#!/usr/bin/env bash
# BitFit bias deltas at LAYERS.
# Defaults: MiniLM on MRPC (scripts/common.sh); override with env vars or extra run_glue.py arguments.
source "$(dirname "$0")/common.sh"
run_method bitfit 1e-3 --bitfit_layers "${LAYERS:-all}" --bitfit_targets "${TARGETS:-q,k,v,o,ffn_in,ffn_out,attn_ln,ffn_ln}" "$@"

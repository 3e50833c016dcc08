#!/usr/bin/env bash
# Bottleneck adapter: STYLE serial|parallel, PLACEMENT ffn|attn|ffn,attn, DIM, LAYERS.
# Defaults: MiniLM on MRPC (scripts/common.sh); override with env vars or extra run_glue.py arguments.
source "$(dirname "$0")/common.sh"
run_method adapter 1e-3 --adapter_style "${STYLE:-serial}" --adapter_placement "${PLACEMENT:-ffn}" --adapter_dim "${DIM:-64}" --adapter_layers "${LAYERS:-all}" "$@"

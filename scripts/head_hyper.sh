#!/usr/bin/env bash
# Frozen backbone, head only (the raw baseline). POOLER=cls|avg.
# Defaults: MiniLM on MRPC (scripts/common.sh); override with env vars or extra run_glue.py arguments.
source "$(dirname "$0")/common.sh"
run_method head 1e-3 --pooler_type "${POOLER:-model}" "$@"

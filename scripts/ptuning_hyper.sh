#!/usr/bin/env bash
# P-tuning: LENGTH prompts from a BiLSTM + MLP prompt encoder.
# Defaults: MiniLM on MRPC (scripts/common.sh); override with env vars or extra run_glue.py arguments.
source "$(dirname "$0")/common.sh"
run_method ptuning 1e-2 --ptuning_length "${LENGTH:-10}" "$@"

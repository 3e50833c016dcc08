#!/usr/bin/env bash
# IDPG: a sentence encoder (ENCODER, frozen unless VARIANT=trained) and a bottleneck MLP (HIDDEN)
# generate LENGTH prompts per input. e.g. MODEL=smollm2-135m VARIANT=original bash scripts/idpg_hyper.sh
# Defaults: MiniLM on MRPC (scripts/common.sh); override with env vars or extra run_glue.py arguments.
source "$(dirname "$0")/common.sh"
run_method idpg 3e-3 --idpg_encoder "${ENCODER:-minilm-l6}" --idpg_variant "${VARIANT:-original}" \
    --idpg_hidden "${HIDDEN:-256}" --idpg_prompt_length "${LENGTH:-5}" --idpg_pooling "${POOLING:-avg}" "$@"

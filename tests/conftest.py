"""Shared fixtures: real GLUE data from ../shared (or $GLUE_DIR), tiny random models, MiniLM."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, MPNetConfig, RobertaConfig

REPO = Path(__file__).resolve().parent.parent
GLUE_DIR = Path(os.environ.get("GLUE_DIR", REPO.parent / "shared" / "data" / "glue"))

TINY = dict(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    num_labels=2,
)
CONFIGS = {"bert": BertConfig, "roberta": RobertaConfig, "mpnet": MPNetConfig}


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    assert (GLUE_DIR / "MRPC" / "train.tsv").is_file(), f"GLUE data not found at {GLUE_DIR}"
    return GLUE_DIR


def tiny_model(kind: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = CONFIGS[kind](**{**TINY, **overrides})
    model = AutoModelForSequenceClassification.from_config(cfg)
    model.eval()
    return model


def tiny_batch(seed: int = 1, batch: int = 3, length: int = 9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, TINY["vocab_size"], (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, length - 3 :] = 0  # one padded row
    ids[1, length - 3 :] = 0
    return ids, mask


def clone(model):
    return copy.deepcopy(model)


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from petl.models import resolve_model_path

    return resolve_model_path("minilm-l6")

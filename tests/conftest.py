"""Shared fixtures and helpers: real GLUE data from ../shared (or $GLUE_DIR), tiny random encoders and
decoders, MiniLM, fast run_glue.py runs. Test modules import helpers from here, never from each other."""

from __future__ import annotations

import copy
import os
from pathlib import Path

# Local Ray nodes in tests use the loopback address (127.0.0.1), never the machine's network address:
# read by Ray when it is imported (ray_constants.ENABLE_RAY_CLUSTER), and inherited by its workers.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

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


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory, minilm_path) -> str:
    """A tiny random BERT with the real MiniLM tokenizer (vocabulary 30522): IDPG's sentence encoder."""
    from transformers import AutoModel, AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny_encoder")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    AutoModel.from_config(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    return str(folder)


# ---------------------------------------------------------------------------------------------
# Helpers shared by several test modules: defined here once; test modules never import each other.


def perturb(model: torch.nn.Module, seed: int = 3, scale: float = 0.1) -> None:
    """Add random values to every trainable tensor, so that no comparison can pass on zeros (identity at init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


# run_glue.py, fast: the packaged MiniLM cut to two layers
FAST = ["--model_name_or_path", "minilm-l6", "--num_hidden_layers", "2", "--disable_tqdm", "true", "--seed", "1"]


def run_glue_main(args: list[str], tmp_path: Path, name: str = "run", glue_dir: Path | None = None) -> tuple[int, Path]:
    """`run_glue.py FAST --output_dir tmp_path/name ARGS [--glue_dir]` in this process: (exit status, output folder)."""
    import run_glue

    out = tmp_path / name
    argv = [*FAST, "--output_dir", str(out), *args]
    if glue_dir is not None:
        argv += ["--glue_dir", str(glue_dir)]
    return run_glue.main(argv), out


# tiny random decoders (GPT-2, Llama with grouped-query attention), the encoders' sizes
DECODER_VOCAB = TINY["vocab_size"]


def decoder_config(kind: str, vocab: int = DECODER_VOCAB):
    from transformers import GPT2Config, LlamaConfig

    hidden, layers = TINY["hidden_size"], TINY["num_hidden_layers"]
    if kind == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=1)
    else:
        cfg = LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,  # grouped-query attention: 2 query heads per key/value head
            intermediate_size=64,
            max_position_embeddings=64,
            bos_token_id=1,
            eos_token_id=1,
        )
    cfg.pad_token_id, cfg.num_labels, cfg.use_cache = 1, 2, False  # pad == eos, as is common
    return cfg


def tiny_decoder(kind: str, pooler: str = "last", seed: int = 0, vocab: int = DECODER_VOCAB) -> torch.nn.Module:
    from transformers import AutoModel

    from petl.models import PooledClassifier

    torch.manual_seed(seed)
    cfg = decoder_config(kind, vocab)
    if pooler == "model":
        model = AutoModelForSequenceClassification.from_config(cfg)
    else:
        model = PooledClassifier(AutoModel.from_config(cfg), 2, pooler, dropout=0.0)
    return model.eval()


def decoder_batch(seed: int = 1, b: int = 3, t: int = 9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, DECODER_VOCAB, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, t - 3 :] = 0  # right padding
    ids[1, t - 3 :] = 1  # with pad == eos
    ids[0, 4] = 1  # and an eos inside a real text: pooling must not stop there
    return ids, mask


# token data sets and a collator for the frozen-layer cache
def token_dataset(seed: int = 5, n: int = 7):
    """Examples of different lengths, as tokenize_split produces them (no padding)."""
    import datasets

    g = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for i in range(n):
        length = 4 + (i * 3) % 9
        rows["input_ids"].append(torch.randint(5, TINY["vocab_size"], (length,), generator=g).tolist())
        rows["attention_mask"].append([1] * length)
        rows["labels"].append(i % 2)
    return datasets.Dataset.from_dict(rows)


def collate(features: list[dict], padding_side: str = "right") -> dict:
    length = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros(len(features), length, dtype=torch.long)
    mask = torch.zeros(len(features), length, dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        cols = slice(0, n) if padding_side == "right" else slice(length - n, length)
        ids[row, cols] = torch.tensor(f["input_ids"])
        mask[row, cols] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if "labels" in features[0]:
        batch["labels"] = torch.tensor([f["labels"] for f in features])
    return batch


def perturbed_petl_model(arch: str, method: str, options: dict) -> torch.nn.Module:
    """A tiny encoder with one method applied and trained-looking (perturbed) parameters, in eval mode."""
    from petl.core import apply_petl
    from petl.registry import make_config

    model = apply_petl(tiny_model(arch), [make_config(method, **options)])
    perturb(model)  # trained-looking parameters: a comparison cannot pass on an identity method
    model.eval()
    return model


def write_grid(folder: Path, glue_dir: Path, name: str, arguments: dict, methods: dict, **extra) -> str:
    """A MiniLM sweep grid on MRPC (seed 1, layers 0-1) written to folder/grid.json; its results go to
    folder/<name>.jsonl and its cells under folder/out. `extra` replaces any top-level key."""
    import json

    grid = {
        "name": name,
        "results": str(folder / f"{name}.jsonl"),
        "output_dir": str(folder / "out"),
        "model_name_or_path": "minilm-l6",
        "tasks": ["mrpc"],
        "seeds": [1],
        "layers": [0, 1],
        "arguments": {"glue_dir": str(glue_dir), **arguments},
        "methods": methods,
        **extra,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "grid.json"
    path.write_text(json.dumps(grid))
    return str(path)

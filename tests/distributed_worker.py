"""Launched by tests/test_distributed.py under torchrun or deepspeed (2 processes on CPU), or alone.

Trains every method given with `--methods` for a few steps through `run_glue.run`, one run after
the other in this one launch (launchers are slow to start; methods are cheap), each into
`<out>/<method tag>/`. The test then reloads each saved delta in a single process and compares.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# method tag -> run_glue.py method flags; small, fast, and each touching its own kind of parameter
METHODS: dict[str, dict] = {
    "full": {"method": "full"},
    "head": {"method": "head"},
    "ffn": {"method": "ffn", "ffn_layers": "1"},
    "bitfit": {"method": "bitfit"},
    "lora": {"method": "lora", "lora_layers": "0,1"},
    "adapter": {"method": "adapter", "adapter_dim": 8},
    "houlsby": {"method": "houlsby", "adapter_dim": 8},
    "pfeiffer": {"method": "pfeiffer", "adapter_dim": 8},
    "parallel": {"method": "parallel", "adapter_dim": 8},
    "prefix": {"method": "prefix", "prefix_length": 4},
    "prompt": {"method": "prompt", "prompt_length": 4},
    "adapter+lora": {"method": "adapter,lora", "adapter_dim": 8, "adapter_layers": "1", "lora_layers": "0"},
}


def common_arguments(glue_dir: str, out: Path, tag: str, deepspeed: str | None, extra: dict) -> dict:
    return {
        "task_name": "mrpc",
        "glue_dir": glue_dir,
        "model_name_or_path": "minilm-l6",
        "num_hidden_layers": 2,
        "pooler_type": "avg",
        "config_overrides": "hidden_dropout_prob=0,attention_probs_dropout_prob=0",
        "classifier_dropout": 0.0,
        "split_mode": "heldout",
        "max_train_samples": 32,
        "max_eval_samples": 24,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 5,  # 24 = 2 ranks x 2 batches x 5 + 4: the last batch is uneven
        "max_steps": 2,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "constant",
        "eval_strategy": "no",
        "seed": 7,
        "output_dir": str(out / tag),
        "overwrite_output_dir": True,
        "disable_tqdm": True,
        "report_to": [],
        "use_cpu": True,
        "deepspeed": deepspeed,
        **extra,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--glue_dir", required=True)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--deepspeed_config", default=None)
    parser.add_argument("--extra", default="{}", help="JSON of further run_glue arguments")
    parser.add_argument("--local_rank", type=int, default=-1)  # the deepspeed launcher passes it
    args = parser.parse_args()

    import run_glue
    from argument_classes import arguments_from_dict

    out = Path(args.out)
    extra = json.loads(args.extra)
    methods = extra.pop("_methods", args.methods)
    status = {}
    for tag in methods.split(","):
        values = {**common_arguments(args.glue_dir, out, tag, args.deepspeed_config, extra), **METHODS[tag]}
        try:
            record = run_glue.run(*arguments_from_dict(values))
            status[tag] = {
                "ok": True,
                "validation_loss": record["validation_metrics"]["loss"],
                "validation_accuracy": record["validation_metrics"]["accuracy"],
                "train_loss": record["train_loss"],
                "split_fingerprints": record["split"]["fingerprints"],
                "results_files": sorted(p.name for p in (out / tag).glob("results.json")),
            }
        except Exception as err:  # noqa: BLE001 - reported per method; the test names the failing cell
            status[tag] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:500]}
            import traceback

            traceback.print_exc()
    if int(os.environ.get("RANK", "0")) == 0:
        from petl.results import write_text_atomic

        write_text_atomic(out / "status.json", json.dumps(status, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

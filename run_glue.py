#!/usr/bin/env python
"""Fine-tune a pretrained model on a GLUE task (or custom sentence(-pair) data) with a PETL method.

    python run_glue.py --task_name mrpc --model_name_or_path minilm-l6 --method lora --lora_layers 4-5
    python run_glue.py args.json

The same program as the `petl-glue` console command: a thin script over petl/cli.py (arguments:
argument_classes/; the pipeline: petl/experiment.py). Bad input is one `error: ...` line on stderr
and exit status 2.
"""

from __future__ import annotations

import sys

from petl.cli import main, parse_args
from petl.experiment import run

__all__ = ["main", "parse_args", "run"]


if __name__ == "__main__":
    sys.exit(main())

"""The `petl-glue` command (also `python run_glue.py`): fine-tune a pretrained model on a GLUE task (or
custom sentence(-pair) data) with a PETL method.

    petl-glue --task_name mrpc --model_name_or_path minilm-l6 --method lora --lora_layers 4-5
    petl-glue args.json

Arguments: argument_classes/. The pipeline: petl/experiment.py. Methods: petl/methods/ (registry in
petl/registry.py). Bad input is one `error: ...` line on stderr and exit status 2.
"""

from __future__ import annotations

import logging
import sys

from petl.errors import exit_status
from petl.experiment import run

__all__ = ["main", "parse_args", "run"]


def parse_args(argv: list[str] | None = None) -> tuple:
    """The four argument objects (model, data, petl, training) from the command line, or from one JSON
    args file (its keys and value types checked: a wrong one is one line naming key, file, line, value
    and expected type)."""
    # argument_classes imports petl: a petl module reaches it only at call time
    from argument_classes import ARGUMENT_CLASSES, ArgumentParser, arguments_from_dict, is_args_file, read_args_file

    argv = sys.argv[1:] if argv is None else argv
    if is_args_file(argv):
        values, text = read_args_file(argv[0])
        return arguments_from_dict(values, f"argument file {argv[0]!r}", source_text=text)
    return ArgumentParser(ARGUMENT_CLASSES).parse_args_into_dataclasses(args=argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, datefmt="%H:%M:%S")
    import transformers

    transformers.logging.set_verbosity_warning()
    argv = sys.argv[1:] if argv is None else argv

    def parse_and_run() -> None:
        from argument_classes import given_argument_names

        model_args, data_args, petl_args, training_args = parse_args(argv)
        run(model_args, data_args, petl_args, training_args, given=given_argument_names(argv))

    return exit_status(parse_and_run)


if __name__ == "__main__":
    sys.exit(main())

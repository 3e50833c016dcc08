#!/usr/bin/env python
"""Hyperparameter search with Ray Tune around run_glue.py's own training code.

    python run_glue_hyper_search.py --task_name rte --method adapter --search_trials 4 --num_train_epochs 5
    python run_glue_hyper_search.py --search_scheduler asha --search_space sweeps/space.yaml ...

The same program as the `petl-search` console command: a thin script over petl/hyper_search.py
(which documents the search; search spaces: petl/search.py). Bad arguments or search spaces stop
with one `error:` line and exit status 2 before any folder is made or Ray starts.
"""

from __future__ import annotations

import sys

from petl.hyper_search import (
    Objective,
    SearchArguments,
    apply_config,
    best_trial,
    check_search,
    check_search_arguments,
    collect_trials,
    final_retrain,
    format_trials,
    main,
    make_scheduler,
    make_trainable,
    parse_args,
    prepare_search_folder,
    run_search,
    run_trials,
    search_argument_classes,
    search_objective,
    start_ray,
    trial_folder_name,
    tune_report_callback,
    with_absolute_paths,
)

__all__ = [
    "ARG_CLASSES",
    "Objective",
    "SearchArguments",
    "apply_config",
    "best_trial",
    "check_search",
    "check_search_arguments",
    "collect_trials",
    "final_retrain",
    "format_trials",
    "main",
    "make_scheduler",
    "make_trainable",
    "parse_args",
    "prepare_search_folder",
    "run_search",
    "run_trials",
    "search_argument_classes",
    "search_objective",
    "start_ray",
    "trial_folder_name",
    "tune_report_callback",
    "with_absolute_paths",
]

ARG_CLASSES = search_argument_classes()  # run_glue's four argument classes and the search's own


if __name__ == "__main__":
    sys.exit(main())

"""What each trial of a petl Tune run reported and how it ended, written down by the driver as it happens.

A Tune run's own results leave two things unsure. A trial's history (result.json) is written to a staging
folder and copied to the storage folder by an asynchronous sync; after `fit()` that copy has been found
empty, and a trial's best score came back None. And on Ctrl+C (SIGINT, or SIGUSR1) `fit()` returns early,
without an error, its stopped trials marked TERMINATED like finished ones: a search would choose among
half-trained trials. `TrialLog`, a Tune callback every petl Tuner gets (petl/hyper_search.py,
petl/tune_cells.py), appends each score and each trial's end to <experiment folder>/trial_log.jsonl. A resumed run
(Tuner.restore unpickles the callback) appends to the same file, wherever the folder now is.
"""

from __future__ import annotations

import json
from pathlib import Path

from ray import tune

from petl.ray_runtime import OBJECTIVE, result_trial_id

LOG_FILE = "trial_log.jsonl"


class TrialLog(tune.Callback):
    def on_trial_result(self, iteration, trials, trial, result, **info):
        if OBJECTIVE in result:
            self._write(trial, {"iteration": result.get("training_iteration"), OBJECTIVE: float(result[OBJECTIVE])})

    def on_trial_complete(self, iteration, trials, trial, **info):  # it returned, or the scheduler stopped it
        self._write(trial, {"ended": "complete"})

    def on_trial_error(self, iteration, trials, trial, **info):  # failed for good (retries spent)
        self._write(trial, {"ended": "error"})

    @staticmethod
    def _write(trial, entry: dict) -> None:
        experiment = Path(trial.path).parent
        experiment.mkdir(parents=True, exist_ok=True)
        with (experiment / LOG_FILE).open("a") as log:
            log.write(json.dumps({"trial_id": trial.trial_id, **entry}) + "\n")


def read_trial_log(experiment: Path) -> tuple[dict[str, list[float]], set[str]]:
    """(trial id -> the scores it reported, in order; the ids of trials that ended). A line cut short
    by a crash is skipped."""
    scores: dict[str, list[float]] = {}
    ended: set[str] = set()
    path = Path(experiment) / LOG_FILE
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in lines:
        try:
            entry = json.loads(line)
            if "ended" in entry:
                ended.add(str(entry["trial_id"]))
            else:
                scores.setdefault(str(entry["trial_id"]), []).append(float(entry[OBJECTIVE]))
        except (ValueError, KeyError, TypeError):
            continue
    return scores, ended


def unfinished_trials(grid) -> list[str]:
    """The ids of a Tune run's trials that neither ended nor failed: fit() was cut short (Ctrl+C)."""
    _, ended = read_trial_log(Path(grid.experiment_path))
    return [result_trial_id(r) for r in grid if result_trial_id(r) not in ended and r.error is None]

"""What each trial of a petl Tune run reported and how it ended, written down by the driver as it happens.

A Tune run's own results leave two things unsure. A trial's history (`Result.metrics_dataframe`) is read
back from result.json in the storage folder, a copy Ray syncs from its staging folder; in CI one such
history came back empty after `fit()` (the cause is not pinned down), a trial's best score was None, and
the search chose among the others. And on Ctrl+C (SIGINT, or SIGUSR1) `fit()` returns early, without an
error, and its clean-up marks the stopped trials TERMINATED like finished ones: a search would choose
among half-trained trials. `TrialLog`, a Tune callback every petl Tuner gets (petl.ray_runtime.tune_configs),
appends each start, score and end of a trial to <experiment folder>/trial_log.jsonl, keyed by the
trial's folder name. A resumed run (Tuner.restore unpickles the callback) appends to the
same file, wherever the folder now is; a trial is unfinished unless its latest start was followed by
an end (a trial that failed and was started again by --resume must end again).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ray import tune

LOG_FILE = "trial_log.jsonl"


class TrialLog(tune.Callback):
    def __init__(self, metric: str):  # the reported metric that is the trial's score
        self.metric = metric

    def on_trial_start(self, iteration, trials, trial, **info):  # also after a pause (PBT), a retry or --resume
        self._write(trial, {"event": "start"})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.metric in result:
            self._write(trial, {"iteration": result.get("training_iteration"), "score": float(result[self.metric])})

    def on_trial_complete(self, iteration, trials, trial, **info):  # it returned, or the scheduler stopped it
        self._write(trial, {"event": "end"})

    def on_trial_error(self, iteration, trials, trial, **info):  # failed for good (retries spent)
        self._write(trial, {"event": "end", "error": True})

    @staticmethod
    def _write(trial, entry: dict) -> None:
        path = Path(trial.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps({"trial": path.name, "trial_id": trial.trial_id, **entry}) + "\n").encode()
        with (path.parent / LOG_FILE).open("a+b") as log:
            if log.seek(0, 2) and (log.seek(-1, 2), log.read(1))[1] != b"\n":
                line = b"\n" + line  # a line cut short by a crash stays alone (and is skipped)
            log.write(line)


def read_trial_log(experiment: Path) -> tuple[dict[str, list[float]], dict[str, str]]:
    """(trial folder -> the scores it reported, in order, NaN left out; trial folder -> its latest event,
    "start" or "end"). A line cut short by a crash is skipped."""
    scores: dict[str, list[float]] = {}
    latest: dict[str, str] = {}
    path = Path(experiment) / LOG_FILE
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            entry = json.loads(line)
            folder = str(entry["trial"])
            if "event" in entry:
                latest[folder] = str(entry["event"])
            elif not math.isnan(score := float(entry["score"])):
                scores.setdefault(folder, []).append(score)
        except (ValueError, KeyError, TypeError):
            continue
    return scores, latest


def unfinished_trials(grid, latest: dict[str, str]) -> list[str]:
    """The folders of a Tune run's trials that did not end (never started, or started and not ended; `latest`:
    read_trial_log's events): fit() was cut short (Ctrl+C)."""
    return [Path(r.path).name for r in grid if latest.get(Path(r.path).name) != "end"]

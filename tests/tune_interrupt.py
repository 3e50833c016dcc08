"""Ctrl+C during a Ray Tune run, for tests: Ray Tune then ends fit() early and without an error."""

from __future__ import annotations

import os
import signal

from ray import tune

import petl.ray_runtime

INTERRUPT_TUNE = "PETL_TEST_INTERRUPT_TUNE"


def interrupting_tune_configs(monkeypatch) -> None:
    """Every Tune run of petl (searches, tuned sweep groups) gets Ctrl+C's effect at its first reported
    result while $PETL_TEST_INTERRUPT_TUNE is set: Ray Tune ends fit() early and without an error."""
    original = petl.ray_runtime.tune_configs

    def with_interrupt(**kwargs):
        configs = original(**kwargs)
        configs["run_config"].callbacks = [*(configs["run_config"].callbacks or []), InterruptTuneOnFirstResult()]
        return configs

    monkeypatch.setenv(INTERRUPT_TUNE, "1")
    monkeypatch.setattr(petl.ray_runtime, "tune_configs", with_interrupt)


class InterruptTuneOnFirstResult(tune.Callback):
    """SIGUSR1 (Ray Tune's stop signal, as Ctrl+C) to this process at the first result; a restored Tuner
    unpickles it too, so it fires only while $PETL_TEST_INTERRUPT_TUNE is set."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if os.environ.get(INTERRUPT_TUNE):
            os.environ.pop(INTERRUPT_TUNE)
            os.kill(os.getpid(), signal.SIGUSR1)

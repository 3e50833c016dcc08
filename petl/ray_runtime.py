"""Ray for sweeps (petl/sweep.py, petl/tune_cells.py) and searches (petl/hyper_search.py): one way to
start or join a cluster, to give workers the package and the data, to check a cluster's size, to
report validation scores to Tune and to clean up after Tune.

    started = start_ray(address)      # None: an embedded local Ray; "auto" or HOST:PORT: a cluster
    try: ... finally: stop_ray(started)

Workers get PYTHONPATH (the folder holding petl; on a cluster petl must be installed, or the
checkout present at the same path, on every node), GLUE_DIR and the Hugging Face offline variables of
the driver. A 0-GPU task sees no GPU (RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO), so cells never land on a
GPU that Ray did not give them.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from petl.errors import PetlError

ADDRESS_TIMEOUT_S = 5.0
# the folder holding the petl package (the checkout, or site-packages when installed): Ray workers import it from there
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
PASSED_TO_WORKERS = ("GLUE_DIR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_DATASETS_OFFLINE")
OBJECTIVE = "objective"  # the name under which trainings report the validation score to Tune


def worker_environment() -> dict[str, str]:
    """What every Ray worker's environment gets from the driver."""
    env = {"PYTHONPATH": str(PACKAGE_ROOT), "TOKENIZERS_PARALLELISM": "false", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}
    env.update({name: os.environ[name] for name in PASSED_TO_WORKERS if os.environ.get(name)})
    return env


def check_address(address: str, flag: str = "--ray_address") -> None:
    """HOST:PORT must answer within seconds (ray.init would wait far longer); `auto` is checked by ray.init."""
    if address == "auto":
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise PetlError(f"{flag} {address!r}: expected auto or HOST:PORT of a Ray head node (its GCS port, 6379 by default)")
    try:
        with socket.create_connection((host, int(port)), timeout=ADDRESS_TIMEOUT_S):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, socket.timeout) else (err.strerror or str(err))
        raise PetlError(
            f"{flag} {address!r}: no Ray cluster answers there ({reason}); start one with `ray start --head`, "
            "or drop the flag for a local Ray"
        ) from None
    if not _gcs_answers(address, ADDRESS_TIMEOUT_S):
        raise PetlError(
            f"{flag} {address!r}: something listens there, but no Ray GCS answers within {ADDRESS_TIMEOUT_S:g} s "
            "(the dashboard port 8265 or the client port 10001 given instead of the head's GCS port, 6379 by default?)"
        )


def _gcs_answers(address: str, timeout: float) -> bool:
    """Whether a Ray GCS at `address` answers a key-value read within `timeout` seconds. Ray's client
    itself waits about 40 s for one, so the probe runs in a daemon thread that is abandoned if late."""
    import threading

    answered = threading.Event()

    def probe() -> None:
        try:
            from ray._raylet import GcsClient

            GcsClient(address=address).internal_kv_get(b"session_name", namespace=b"session", timeout=timeout)
            answered.set()
        except Exception:  # noqa: BLE001 - any failure means no GCS answered
            pass

    threading.Thread(target=probe, daemon=True, name="petl-gcs-probe").start()
    return answered.wait(timeout)


def start_ray(address: str | None, flag: str = "--ray_address") -> bool:
    """Connect to the cluster at `address`, or start an embedded local Ray; True if this call started
    the connection (pass it to stop_ray). An already initialised Ray is used as it is."""
    import ray

    if address:
        check_address(address, flag)
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": worker_environment()},
                 logging_level="ERROR", configure_logging=True)  # fmt: skip
    except ConnectionError as err:
        raise PetlError(f"{flag} {address!r}: {str(err).splitlines()[0]}; start one with `ray start --head`") from None
    return True


def stop_ray(started: bool) -> None:
    """Shut down the Ray that start_ray started (a Ray the caller initialised stays up)."""
    if started:
        import ray

        ray.shutdown()


def largest_node() -> dict[str, float]:
    """The CPUs and GPUs of the cluster's largest alive node: a task runs on one node."""
    import ray

    best = {"CPU": 0.0, "GPU": 0.0}
    for node in ray.nodes():
        if node.get("Alive"):
            res = node.get("Resources", {})
            for key in best:
                best[key] = max(best[key], float(res.get(key, 0.0)))
    return best


def check_resources(cpus: float, gpus: float, where: dict[str, str], names: tuple[str, str] = ("cpus_per_cell", "gpus_per_cell")) -> None:
    """Refuse a task that no node of the cluster can hold, before anything is submitted or written."""
    import ray

    node = largest_node()
    total = ray.cluster_resources()
    for key, asked, name in (("CPU", cpus, names[0]), ("GPU", gpus, names[1])):
        if asked > node[key] + 1e-9:
            raise PetlError(
                f"{name} {asked:g} ({where[name]}): no node of the Ray cluster has that many {key}s (largest node: {node[key]:g}, "
                f"cluster: {float(total.get(key, 0.0)):g}); allowed: at most {node[key]:g}"
            )


# ---- Ray Tune ---------------------------------------------------------------------------------------


def asha_scheduler():
    """ASHA on the reported evaluations: a trial survives its first one, half are stopped at each rung."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", grace_period=1, reduction_factor=2)


def trial_folder_name(trial) -> str:
    """Ray's own trial id, never the sampled values (which come from a user's space or grid file)."""
    return f"trial_{trial.trial_id}"


def validation_reporter(metric_key: str, with_checkpoint: bool = False):
    """A Trainer callback that reports each evaluation to Tune: every numeric metric, `step`, `epoch`
    and `objective` (= metrics[metric_key], e.g. eval_accuracy). With `with_checkpoint` the report
    waits for the checkpoint saved after the evaluation and carries it (PBT exploits and retried
    trials restore it); otherwise it goes at once (ASHA stops poor trials on it)."""
    from transformers import TrainerCallback

    class ValidationReport(TrainerCallback):
        def __init__(self):
            self.last: dict | None = None

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.last = dict(metrics or {})
            if not with_checkpoint:
                self._report(state)

        def on_save(self, args, state, control, **kwargs):
            if with_checkpoint:
                self._report(state, Path(args.output_dir) / f"checkpoint-{state.global_step}")

        def _report(self, state, folder: Path | None = None) -> None:
            from ray import tune

            if self.last is None or metric_key not in self.last:
                return
            report = {k: float(v) for k, v in self.last.items() if isinstance(v, (int, float))}
            report.update(step=state.global_step, epoch=float(state.epoch or 0), **{OBJECTIVE: float(self.last[metric_key])})
            self.last = None
            if folder is None:
                tune.report(report)
            else:
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(str(folder)))

    return ValidationReport()


def tune_configs(*, name: str, storage: Path, mode: str, scheduler, num_samples: int, max_failures: int, search_alg=None,
                 checkpoint_config=None, verbose: int = 0) -> dict:  # fmt: skip
    """The TuneConfig and RunConfig of every petl Tuner: maximise or minimise `objective`, one process
    per trial (reuse_actors off: a trial's environment is its own), trial folders named by Ray's id
    under `storage`/`name` (never the system temp folder), and petl.trial_log's record of each trial's
    scores and end, written by the driver."""
    from ray import tune

    from petl.trial_log import TrialLog

    return {
        "tune_config": tune.TuneConfig(
            metric=OBJECTIVE,
            mode=mode,
            scheduler=scheduler,
            search_alg=search_alg,
            num_samples=num_samples,
            reuse_actors=False,
            trial_dirname_creator=trial_folder_name,
        ),
        "run_config": tune.RunConfig(
            name=name,
            storage_path=str(storage),
            verbose=verbose,
            checkpoint_config=checkpoint_config,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            callbacks=[TrialLog(OBJECTIVE)],
        ),
    }


def remove_tune_staging(experiment_name: str) -> None:
    """Ray Tune stages each experiment (trial working folders, driver artifacts) under the Ray session's
    temp folder, /tmp/ray/session_*/artifacts/<time>/<name>, besides the storage_path it syncs to: remove
    that copy once the experiment is done, so nothing of a sweep or search stays in the system temp folder."""
    import shutil

    from ray._private import worker

    node = worker._global_node
    if node is None:
        return
    for folder in (Path(node.get_session_dir_path()) / "artifacts").glob(f"*/{experiment_name}"):
        shutil.rmtree(folder, ignore_errors=True)

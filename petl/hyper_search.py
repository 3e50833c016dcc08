"""Hyperparameter search with Ray Tune around run_glue.py's own training code.

    petl-search --task_name rte --method adapter --search_trials 4 --num_train_epochs 5
    python run_glue_hyper_search.py --search_scheduler asha --search_space sweeps/space.yaml ...

`petl-search` (the console command) and run_glue_hyper_search.py (a thin script over this module)
are the same program.

Every trial calls `petl.experiment.run`, the pipeline of run_glue.py (same arguments, methods, data
splits and selection metric), with a callback that reports each validation result to Tune together with a checkpoint holding only what
is trained (method delta, head, optimizer, scheduler). PBT exploits restore the donor's checkpoint
and then apply the mutated learning rates and weight decay (petl/training.py,
`_load_optimizer_and_scheduler`). Finally the best trial's final configuration is retrained with a
fresh seed and evaluated on the held-out test split, as an ordinary results.json record.
Search spaces: petl/search.py.

Every argument, the search space and the output folder are checked before the folder is made or Ray
starts. `--resume` loads Ray's pickles from the output folder, so it accepts only a folder that a
search of this user created and signed (petl/search.py, MARKER_FILE), writable by no one else.
Each trial's scores and end come from petl/trial_log.py, written by the driver: an interrupted search
(Ctrl+C) chooses and writes nothing and says how to `--resume`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from petl.errors import Interrupted, PetlError, exit_status
from petl.ray_runtime import OBJECTIVE, check_address, trial_folder_name  # noqa: F401 - run_glue_hyper_search re-exports it

logger = logging.getLogger("run_glue_hyper_search")  # the name users know from the log lines


@dataclass
class SearchArguments:
    search_scheduler: str = field(default="pbt", metadata={"help": "pbt (population-based training) or asha."})
    search_trials: int = field(default=4, metadata={"help": "Population size (pbt) or number of trials (asha)."})
    search_metric: str | None = field(default=None, metadata={"help": "Validation metric; default: the task's selection metric."})
    search_space: str | None = field(default=None, metadata={"help": "YAML/JSON search space; default: per method (petl/search.py)."})
    perturbation_interval: int = field(default=1, metadata={"help": "PBT: evaluations between exploit/explore steps."})
    cpus_per_trial: float = field(default=1.0, metadata={"help": "CPUs per trial."})
    gpus_per_trial: float = field(default=0.0, metadata={"help": "GPUs per trial."})
    ray_address: str | None = field(default=None, metadata={"help": "Existing Ray cluster (e.g. auto); default: a local one."})
    max_failures: int = field(default=1, metadata={"help": "Retries of a failed trial."})
    resume: bool = field(
        default=False,
        metadata={
            "help": "Resume an interrupted search in the same output_dir. This LOADS PICKLES from the output folder (Ray's "
            "tuner.pkl, trial state, checkpoints), and a crafted pickle runs code: only a folder that a search of yours "
            "created (its signed .petl_search.json marker), owned by you and writable by no one else, is accepted."
        },
    )
    final_retrain: bool = field(default=True, metadata={"help": "Retrain the best configuration with a fresh seed and report test."})
    search_seed: int = field(default=0, metadata={"help": "Seed of the search (sampling, PBT decisions)."})
    keep_trials: bool = field(
        default=False,
        metadata={"help": "Keep the trials' folders (<output_dir>/trials, Ray's <output_dir>/ray) after a finished search; "
                  "default: removed once search_results.json is written."},
    )  # fmt: skip


def search_argument_classes() -> tuple[type, ...]:
    """run_glue's four argument classes and the search's own (argument_classes is imported at call
    time: it imports petl, and importing a petl module never runs it)."""
    from argument_classes import ARGUMENT_CLASSES

    return (*ARGUMENT_CLASSES, SearchArguments)


def parse_args(argv: list[str] | None = None) -> tuple:
    """The five argument objects from the command line or one JSON args file (keys and value types
    checked as run_glue.py checks its own: one line naming key, file, line, value and expected type)."""
    from argument_classes import ArgumentParser, arguments_from_dict, is_args_file, read_args_file

    argv = sys.argv[1:] if argv is None else argv
    if is_args_file(argv):
        values, text = read_args_file(argv[0])
        where = f"argument file {argv[0]!r}"
        return arguments_from_dict(values, where, source_text=text, classes=search_argument_classes(), program="run_glue_hyper_search.py")
    return ArgumentParser(search_argument_classes()).parse_args_into_dataclasses(args=argv)


def check_search_arguments(search_args: SearchArguments) -> None:
    """The search's own flags, before any folder is made or Ray is started."""
    if search_args.search_scheduler not in ("pbt", "asha"):
        raise PetlError(f"--search_scheduler {search_args.search_scheduler!r} is not one of pbt, asha")
    if search_args.search_trials < 1:
        raise PetlError(f"--search_trials {search_args.search_trials} is invalid; allowed: >= 1")
    if search_args.perturbation_interval < 1:
        raise PetlError(f"--perturbation_interval {search_args.perturbation_interval} is invalid; allowed: >= 1 (evaluations)")
    if not (math.isfinite(search_args.cpus_per_trial) and search_args.cpus_per_trial > 0):
        raise PetlError(f"--cpus_per_trial {search_args.cpus_per_trial} is invalid; allowed: a finite number > 0")
    if not (math.isfinite(search_args.gpus_per_trial) and search_args.gpus_per_trial >= 0):
        raise PetlError(f"--gpus_per_trial {search_args.gpus_per_trial} is invalid; allowed: a finite number >= 0")
    if search_args.max_failures < -1:
        raise PetlError(f"--max_failures {search_args.max_failures} is invalid; allowed: >= 0, or -1 for unlimited retries")


@dataclass(frozen=True)
class Objective:
    """What the search optimises: one validation metric, which each trial reports as `eval_<metric>`."""

    metric: str
    mode: str  # "max" or "min"

    @property
    def key(self) -> str:
        return f"eval_{self.metric}"


def search_objective(data_args, training_args, search_args: SearchArguments) -> Objective:
    """--search_metric, else --metric_for_best_model, else the task's selection metric: the choice a
    run makes for its best state (petl.metrics.selection_metric); it must be one the task reports."""
    from petl.metrics import checked_selection_metric, selection_direction
    from petl.tasks import get_task

    task = get_task(data_args.task_name) if data_args.task_name else None
    task_name = task.name if task else None
    chosen = search_args.search_metric or training_args.metric_for_best_model
    if task is None and not chosen:  # custom data: its label kind (and so its metric) is known only once the files are read
        raise PetlError(
            "custom data files need --search_metric (e.g. combined_score for regression labels, accuracy for classes): "
            "the search's objective must be known before the trials start"
        )
    metric = checked_selection_metric(
        task_name,
        bool(task and task.is_regression),
        ("--search_metric", search_args.search_metric),
        ("--metric_for_best_model", training_args.metric_for_best_model),
    )
    greater = selection_direction(metric, getattr(training_args, "greater_is_better", None))
    return Objective(metric, "max" if greater else "min")


def check_search(argv: list[str], arguments: tuple, search_args: SearchArguments) -> tuple[dict, Objective]:
    """Every argument, the search space and the objective, checked before any folder is made or Ray
    starts; returns (space, objective)."""
    from argument_classes import given_argument_names
    from argument_classes.checks import check_numbers
    from petl.search import load_space

    model_args, data_args, petl_args, training_args = arguments
    check_search_arguments(search_args)
    check_numbers(model_args, data_args, petl_args, training_args)
    methods = petl_args.method_names()
    petl_args.method_configs(given_argument_names(argv, search_argument_classes()))  # flag validation before any trial starts
    if petl_args.dry_run:
        raise PetlError("--dry_run: a search needs trials that train; check the arguments with run_glue.py --dry_run instead")
    space = load_space(search_args.search_space, methods, search_args.search_scheduler)
    objective = search_objective(data_args, training_args, search_args)
    if training_args.eval_strategy == "no":
        raise PetlError("--eval_strategy no leaves the search nothing to compare; use epoch or steps")
    return space, objective


def prepare_search_folder(out_dir: Path, search_args: SearchArguments, overwrite: bool) -> bool:
    """Check the output folder (on --resume: that it may be trusted with unpickling), then create or
    take it over and sign it with the marker. Returns whether there is Ray state to resume."""
    from petl.search import MARKER_FILE, check_resumable, write_marker

    results_file = out_dir / "search_results.json"
    state_dir = out_dir / "ray" / "search"
    if out_dir.exists() and not out_dir.is_dir():
        raise PetlError(f"--output_dir {str(out_dir)!r} is a file; allowed: a folder (new or one a search created)")
    if search_args.resume:
        if overwrite:
            raise PetlError("--resume continues the search in --output_dir and --overwrite_output_dir starts it afresh; give one")
        if out_dir.exists():
            check_resumable(out_dir)  # before Ray unpickles anything from it
            if results_file.exists() and not state_dir.exists():
                raise PetlError(
                    f"--resume: the search in {str(out_dir)!r} finished (search_results.json) and its trial folders were removed; "
                    "nothing to resume. Pass --overwrite_output_dir to search afresh"
                )
            return state_dir.exists()
        logger.info("--resume: %s does not exist, nothing to resume; starting a new search", out_dir)
    elif (results_file.exists() or state_dir.exists()) and not overwrite:
        raise PetlError(f"--output_dir {str(out_dir)!r} already holds a search; pass --resume or --overwrite_output_dir")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if state_dir.exists():  # --overwrite_output_dir: a new search never leaves old pickles to a later --resume
            shutil.rmtree(state_dir)
        write_marker(out_dir)
    except OSError as err:
        raise PetlError(f"--output_dir {str(out_dir)!r} cannot be written ({err.strerror or err}); allowed: a writable folder") from None
    if os.stat(out_dir).st_mode & 0o022:
        logger.warning("%s is writable by group or others: --resume will refuse it (chmod go-w %s to allow)", out_dir, out_dir)
    logger.info("search folder %s signed with %s", out_dir, MARKER_FILE)
    return False


def apply_config(base: tuple, config: dict) -> tuple:
    """The four run_glue argument objects with the trial's values set: new objects, checked as the
    command line's are; `base` is unchanged."""
    changes: list[dict] = [{} for _ in base]
    for name, value in config.items():
        for obj, changed in zip(base, changes, strict=True):
            declared = {f.name: str(f.type) for f in dataclasses.fields(obj)}
            if name in declared:
                changed[name] = _as_declared(value, declared[name])
                break
        else:
            raise PetlError(f"search space names {name!r}, which no argument class has")
    return tuple(dataclasses.replace(obj, **changed) if changed else obj for obj, changed in zip(base, changes, strict=True))


def with_absolute_paths(base: tuple) -> tuple:
    """Trials run in other folders: the argument objects with every existing local path made absolute."""
    paths = ({"model_name_or_path"}, {"glue_dir", "train_file", "validation_file", "test_file"}, set(), {"cache_dir"})
    resolved = []
    for obj, names in zip(base, paths, strict=True):
        given = {name: getattr(obj, name) for name in names if getattr(obj, name)}
        changed = {name: str(Path(value).resolve()) for name, value in given.items() if Path(value).exists()}
        resolved.append(dataclasses.replace(obj, **changed) if changed else obj)
    return tuple(resolved)


def _as_declared(value, declared: str):
    """Convert by the field's declared type (not the default's: warmup_steps defaults to int 0 but
    takes ratios such as 0.06)."""
    if value is None or isinstance(value, str):
        return value
    if "float" in declared:
        return float(value)
    if "bool" in declared:
        return bool(value)
    if "int" in declared:
        return int(value)
    return value


def tune_report_callback(metric_key: str):
    """A Trainer callback that, after each checkpoint save (which follows an evaluation), reports
    the evaluation to Tune with the checkpoint folder: delta, optimizer, scheduler, trainer state."""
    from petl.ray_runtime import validation_reporter

    return validation_reporter(metric_key, with_checkpoint=True)


def trial_settings(training_args, trial_dir: Path) -> dict:
    """What a trial changes in the search's training arguments: a checkpoint in its own folder after each
    evaluation (Tune reports and restores them), no progress bar (a worker's output goes to a file).
    The search's --report_to is kept: trackers reach the trials (default: none)."""
    return {
        "output_dir": str(trial_dir),
        "save_strategy": training_args.eval_strategy,
        "save_steps": training_args.eval_steps or training_args.save_steps,
        "save_total_limit": 1,
        "disable_tqdm": True,
    }


def trial_environment(training_args, logs_dir: Path | None, trial_name: str) -> dict[str, str]:
    """TensorBoard's folder for a trial that reports to it: `logs_dir/trial_name` (the search's
    output_dir/runs/trial_<id>). transformers 5 takes it from TENSORBOARD_LOGGING_DIR alone, and its
    default lies in the trial's output folder, a temporary one."""
    report_to = training_args.report_to or []
    report_to = [report_to] if isinstance(report_to, str) else list(report_to)
    if logs_dir is None or not {"tensorboard", "all"} & set(report_to):
        return {}
    return {"TENSORBOARD_LOGGING_DIR": str(logs_dir / trial_name)}


def make_trainable(base_args: tuple, metric_key: str, logs_dir: Path | None = None, trials_dir: Path | None = None):
    """The Tune function trainable; with `logs_dir`, trials reporting to TensorBoard write there. Each
    trial trains in a fresh folder under `trials_dir` (the search's <output_dir>/trials; never the
    system temp directory), named by Ray's trial id."""

    def trainable(config: dict) -> None:
        from ray import tune

        from petl import experiment

        model_args, data_args, petl_args, training_args = apply_config(base_args, config)
        trial_id = tune.get_context().get_trial_id()
        if trials_dir is not None:
            trials_dir.mkdir(parents=True, exist_ok=True)
        trial_dir = Path(tempfile.mkdtemp(prefix=f"trial_{trial_id}-", dir=trials_dir))  # a restored trial: a new folder
        settings = trial_settings(training_args, trial_dir)
        # each trial runs in its own process (reuse_actors=False): its environment is its own
        os.environ.update(trial_environment(training_args, logs_dir, f"trial_{trial_id}"))
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:  # PBT exploit or a retried trial: continue from that state
            restored = trial_dir / "restored"
            with checkpoint.as_directory() as folder:
                shutil.copytree(folder, restored)
            settings["resume_from_checkpoint"] = str(restored)
        training_args = dataclasses.replace(training_args, **settings)
        experiment.run(model_args, data_args, petl_args, training_args, callbacks=[tune_report_callback(metric_key)], trial=True)

    return trainable


def make_scheduler(search_args: SearchArguments, space: dict):
    from ray.tune.schedulers import PopulationBasedTraining

    from petl.ray_runtime import asha_scheduler
    from petl.search import mutations

    if search_args.search_scheduler == "pbt":
        return PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=search_args.perturbation_interval,
            hyperparam_mutations=mutations(space) or None,
            quantile_fraction=0.5,
        )
    return asha_scheduler()


def start_ray(search_args: SearchArguments) -> bool:
    """A local Ray (or the cluster at --ray_address; petl/ray_runtime.py), seeded: PBT's exploit/explore
    decisions draw from Python's random, trial sampling from the search algorithm (seeded in run_trials).
    True if this call started Ray."""
    import random

    import numpy as np

    from petl.ray_runtime import start_ray as start

    random.seed(search_args.search_seed)
    np.random.seed(search_args.search_seed)
    return start(search_args.ray_address)


def run_trials(base: tuple, space: dict, objective: Objective, search_args: SearchArguments, storage: Path, resumable: bool):
    """Ray Tune's trials (or, when `resumable`, the interrupted search in `storage` continued); their ResultGrid."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from petl.ray_runtime import remove_tune_staging, stop_ray, tune_configs
    from petl.search import to_tune

    scheduler = make_scheduler(search_args, space)
    started = start_ray(search_args)
    try:
        trainable = tune.with_resources(
            # storage is <output_dir>/ray
            make_trainable(base, objective.key, logs_dir=storage.parent / "runs", trials_dir=storage.parent / "trials"),
            {"cpu": search_args.cpus_per_trial, "gpu": search_args.gpus_per_trial},
        )
        if resumable:  # prepare_search_folder checked that this folder's pickles are the user's own
            tuner = tune.Tuner.restore(str(storage / "search"), trainable=trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=to_tune(space),
                **tune_configs(
                    name="search",
                    storage=storage,
                    mode=objective.mode,
                    scheduler=scheduler,
                    search_alg=BasicVariantGenerator(random_state=search_args.search_seed),
                    num_samples=search_args.search_trials,
                    max_failures=search_args.max_failures,
                    # PBT exploits may restore any trial's latest checkpoint at any time: keep them all
                    # (delta-only, so small); ASHA never restores across trials
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=None if search_args.search_scheduler == "pbt" else 2),
                    verbose=1,
                ),
            )
        return tuner.fit()
    finally:
        remove_tune_staging("search")
        stop_ray(started)


def collect_trials(grid, mode: str, history: dict[str, list[float]] | None = None) -> list[dict]:
    """One summary per trial: its configuration, its last and best objective, its first error line.
    The best comes from every score the trial reported: `history` (trial folder -> scores; petl.trial_log,
    written by the driver as results came in), joined with Ray's own record where that reached the
    storage folder. NaN scores (a diverged loss, a constant prediction's correlation) are left out."""
    trials = []
    for result in grid:
        folder = Path(result.path).name
        scores = list((history or {}).get(folder, []))
        frame = result.metrics_dataframe
        if frame is not None and OBJECTIVE in frame:
            scores += [float(v) for v in frame[OBJECTIVE].dropna()]
        trials.append(
            {
                "trial_id": (result.metrics or {}).get("trial_id") or folder.removeprefix("trial_"),
                "config": result.config,
                "final_objective": (result.metrics or {}).get(OBJECTIVE),
                "best_objective": (max if mode == "max" else min)(scores) if scores else None,
                "error": None if result.error is None else str(result.error).splitlines()[0],
            }
        )
    return trials


def best_trial(trials: list[dict], mode: str) -> dict:
    ok = [t for t in trials if t["best_objective"] is not None]
    if not ok:
        errors = [t["error"] for t in trials if t["error"]]
        raise PetlError(f"every trial failed; first error: {errors[0]}" if errors else "no trial reported a validation score")
    return (max if mode == "max" else min)(ok, key=lambda t: t["best_objective"])


def final_retrain(base: tuple, config: dict, folder: Path) -> dict:
    """The chosen configuration retrained with a fresh seed (the score is not the search's luck) and
    evaluated on the held-out test split: an ordinary run with its results.json in `folder`."""
    from petl import experiment

    model_args, data_args, petl_args, training_args = apply_config(base, config)
    training_args = dataclasses.replace(training_args, seed=training_args.seed + 1000, output_dir=str(folder), overwrite_output_dir=True)
    record = experiment.run(model_args, data_args, petl_args, training_args)
    return {
        "seed": training_args.seed,
        "output_dir": training_args.output_dir,
        "validation_metrics": record.get("validation_metrics"),
        "test_metrics": record.get("test_metrics"),
    }


def run_search(argv: list[str] | None = None) -> dict:
    """The search as the command line gives it; returns the summary written to search_results.json."""
    from petl.results import write_json_atomic
    from petl.trial_log import LOG_FILE, read_trial_log, unfinished_trials

    # ---- arguments, space, objective and output folder: all checked before the folder is made or Ray starts
    argv = sys.argv[1:] if argv is None else argv
    *arguments, search_args = parse_args(argv)
    space, objective = check_search(argv, tuple(arguments), search_args)
    model_args, data_args, petl_args, training_args = arguments
    out_dir = Path(training_args.output_dir or f"outputs/search-{data_args.task_name or 'custom'}-{petl_args.method.replace(',', '+')}")
    out_dir = out_dir.resolve()
    # what the search and its local Ray workers write is writable by no one else, so --resume can trust it
    os.umask(os.umask(0o022) | 0o022)
    if search_args.ray_address:  # one line within seconds, before the folder is made
        check_address(search_args.ray_address)
    resumable = prepare_search_folder(out_dir, search_args, training_args.overwrite_output_dir)
    base = with_absolute_paths(tuple(arguments))

    # ---- trials
    grid = run_trials(base, space, objective, search_args, out_dir / "ray", resumable)
    experiment = Path(grid.experiment_path)
    history, latest = read_trial_log(experiment)
    # a search begun before petl kept a trial log (its restored run config lacks TrialLog) cannot tell: taken as finished
    unfinished = unfinished_trials(grid, latest) if (experiment / LOG_FILE).is_file() or not resumable else []
    if unfinished:  # Ctrl+C: Ray Tune returned early; nothing is chosen, retrained, written or removed
        raise Interrupted(f"the search stopped before {len(unfinished)} of its {len(grid)} trials finished; nothing was chosen or written; "
                          f"its state is in {out_dir / 'ray'}: continue it with --resume true")  # fmt: skip
    trials = collect_trials(grid, objective.mode, history)
    best = best_trial(trials, objective.mode)
    summary = {
        "scheduler": search_args.search_scheduler,
        "metric": objective.metric,
        "mode": objective.mode,
        "space": space,
        "best_config": best["config"],
        "best_validation_score": best["best_objective"],
        "trials": trials,
        "failed_trials": sum(1 for t in trials if t["error"]),
    }
    print(format_trials(trials, objective.metric))
    print(f"best {objective.metric} on validation: {best['best_objective']:.4f} with {json.dumps(best['config'])}")

    # ---- final retrain, and the summary
    if search_args.final_retrain:
        summary["final_retrain"] = final_retrain(base, best["config"], out_dir / "best")
    write_json_atomic(out_dir / "search_results.json", summary)
    if not search_args.keep_trials:
        remove_trial_folders(out_dir)
    return summary


def remove_trial_folders(out_dir: Path) -> None:
    """A finished search's trial folders (<output_dir>/trials) and Ray's (<output_dir>/ray: trial
    checkpoints and the state --resume reads) go; search_results.json, best/ and runs/ (TensorBoard) stay."""
    for name in ("trials", "ray"):
        shutil.rmtree(out_dir / name, ignore_errors=True)


def format_trials(trials: list[dict], metric: str) -> str:
    keys = sorted({k for t in trials for k in t["config"]})
    lines = ["| trial | " + " | ".join(keys) + f" | best {metric} | final | error |", "|" + "---|" * (len(keys) + 4)]
    for t in trials:
        vals = [f"{t['config'].get(k):.3g}" if isinstance(t["config"].get(k), float) else str(t["config"].get(k)) for k in keys]
        best = "" if t["best_objective"] is None else f"{t['best_objective']:.4f}"
        final = "" if t["final_objective"] is None else f"{t['final_objective']:.4f}"
        lines.append(f"| {t['trial_id']} | " + " | ".join(vals) + f" | {best} | {final} | {t['error'] or ''} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, datefmt="%H:%M:%S")
    return exit_status(lambda: run_search(argv) and None)


if __name__ == "__main__":
    sys.exit(main())

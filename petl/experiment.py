"""One experiment: a pretrained model fine-tuned on a GLUE task (or custom sentence(-pair) data) with
PETL methods, from its four argument objects (argument_classes/) to a results record.

`run()` is the pipeline behind `run_glue.py`, the grid sweeps (petl/sweep.py) and the
hyperparameter search (run_glue_hyper_search.py). It never changes the argument objects it is given:
it works on its own copies and records what actually ran (the output folder chosen, `auto` resolved,
the method of a loaded delta, ...).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import time
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from petl.errors import PetlError
from petl.progress import enable_progress_bars

if TYPE_CHECKING:  # argument_classes imports petl, so petl reaches it only at call time
    from argument_classes import DataArguments, ModelArguments, PetlArguments, PetlTrainingArguments

DECODER_PAIR_TEMPLATE = "{s1}\n{s2}"
METRIC_NAMES = ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr", "mse", "combined_score")

logger = logging.getLogger("run_glue")  # the name users know from the log lines


def run(
    model_args: ModelArguments,
    data_args: DataArguments,
    petl_args: PetlArguments,
    training_args: PetlTrainingArguments,
    callbacks: list | None = None,
    trial: bool = False,
    cache_when_valid: bool = False,
    given: Collection[str] = (),
) -> dict:
    """One training run. `callbacks` join the Trainer's; `trial=True` (hyperparameter search) stops
    after training: no test evaluation, no files, only the validation history is returned.
    `cache_when_valid` (sweeps): with --cache_frozen_layers, run uncached instead of refusing when
    the methods leave nothing to cache (full, prompt, layer 0). `given`: the argument names set
    explicitly (given_argument_names): a flag of an unselected method is refused even at its default."""
    import torch
    from transformers import DataCollatorWithPadding, set_seed

    from argument_classes.checks import check_numbers
    from petl.arch import is_decoder
    from petl.core import apply_petl, format_summary, load_petl, petl_state_dict, read_petl_config, save_petl, trainable_summary
    from petl.data import ExtraInputsCollator, plan_splits, tokenize_split
    from petl.metrics import checked_selection_metric, glue_metrics, selection_direction, selection_metric
    from petl.models import load_model, load_tokenizer, resolve_model_path
    from petl.results import check_appendable, reset_peak_memory
    from petl.state import get_state
    from petl.training import BestStateCallback, PetlTrainer, resolve_resume_checkpoint

    started = time.time()
    reset_peak_memory()  # this run's peak, not an earlier run's in the same process (a sweep worker)

    # ---- arguments: the run's own copies, every cheap check before any heavy work
    model_args, data_args, petl_args, training_args = copy.deepcopy((model_args, data_args, petl_args, training_args))
    quiet_replica_logging(training_args)
    check_numbers(model_args, data_args, petl_args, training_args)
    check_deepspeed_device(training_args)
    if training_args.greater_is_better is not None:  # a contradicting one is refused before any work (the default
        # selection metrics, the task's, accuracy and the combined correlation, are all higher-is-better)
        early_metric = selection_metric(data_args.task_name, False, training_args.metric_for_best_model)
        selection_direction(early_metric, training_args.greater_is_better)
    if petl_args.load_petl:
        saved = read_petl_config(petl_args.load_petl)
        check_saved_methods(saved, petl_args, given)
        petl_args = dataclasses.replace(petl_args, method=",".join(m["method"] for m in saved["methods"]))
        model_args = adopt_saved_model_settings(saved, model_args, given)
        if data_args.pair_template is None:  # the delta was trained on texts joined this way
            data_args = dataclasses.replace(data_args, pair_template=saved.get("pair_template"))
        method_configs = None
    elif petl_args.load_peft:  # PEFT's adapter becomes the method that computes the same (petl.peft_import)
        from petl.peft_import import check_peft_arguments, read_peft_adapter

        peft_adapter = read_peft_adapter(petl_args.load_peft)
        check_peft_arguments(petl_args, model_args, given)
        petl_args = dataclasses.replace(petl_args, method=peft_adapter.method)
        model_args = dataclasses.replace(model_args, pooler_type="model")  # PEFT's adapters sit on the stock HF classifier
        method_configs = None
    else:
        method_configs = petl_args.method_configs(given)
    method_names = petl_args.method_names()  # a loaded delta's too
    check_interop_arguments(petl_args, training_args, method_names)
    method_lrs = method_default_learning_rates(training_args, method_names, given)
    evaluate_only = bool(petl_args.load_petl or petl_args.load_peft)  # --do_train trains on from the loaded tensors
    settle_training_arguments(training_args, evaluate_only=evaluate_only, cuda=torch.cuda.is_available())
    enable_progress_bars(not training_args.disable_tqdm)  # the model unpack and cache pass bars follow the Trainer's
    if trial:
        out_dir = Path(training_args.output_dir)
    else:
        if not training_args.output_dir or training_args.output_dir == "trainer_output":
            training_args.output_dir = default_output_dir(model_args, data_args, petl_args, training_args)
        out_dir = prepare_output_dir(model_args, data_args, petl_args, training_args)
        if training_args.results_file:
            check_appendable(training_args.results_file, "--results_file")  # a folder or read-only file: refused before training
    if training_args.do_train:  # `true`: the latest complete checkpoint in output_dir; a bad path is refused here
        training_args.resume_from_checkpoint = resolve_resume_checkpoint(training_args.resume_from_checkpoint, out_dir)

    # ---- data: the raw splits and the plan of what trains, selects and reports
    model_path = resolve_model_path(model_args.model_name_or_path)  # an unknown name is refused before the data is read
    task, raw, labels, dev_names, test_names = load_data(data_args, training_args)
    task_name = task.name if task else None
    plan = plan_splits(
        raw,
        dev_names,
        test_names,
        data_args.split_mode,
        data_args.split_seed,
        data_args.max_train_samples,
        data_args.train_fraction,
        data_args.max_eval_samples,
        data_args.heldout_validation_size,
    )

    metric = checked_selection_metric(task_name, labels.is_regression, ("--metric_for_best_model", training_args.metric_for_best_model))
    greater = selection_direction(metric, training_args.greater_is_better)
    training_args.greater_is_better = greater  # HF's own best-checkpoint bookkeeping (checkpoint rotation) agrees

    # ---- model
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(model_path)
    with whole_weights_under_zero3(training_args):
        model = load_model(
            model_path,
            labels.num_labels,
            model_args.pooler_type,
            model_args.num_hidden_layers,
            seed=training_args.seed,
            id2label=None if labels.is_regression else dict(enumerate(labels.names)),
            classifier_dropout=model_args.classifier_dropout,
            config_overrides=model_args.config_overrides,
            pad_token_id=tokenizer.pad_token_id,
        )
    model_args.pooler_type = get_state(model).pooler_type  # `auto` resolved: recorded and saved as what ran

    # ---- methods
    if petl_args.load_petl:
        load_petl(model, petl_args.load_petl)
    elif petl_args.load_peft:
        from petl.peft_import import load_peft

        load_peft(model, petl_args.load_peft, model_args.model_name_or_path)
    else:
        apply_petl(model, method_configs)
    check_interop_model(model, petl_args)  # --export_peft / --merge_and_save settings: refused before training
    summary = trainable_summary(model)
    if petl_args.dry_run:
        print(format_summary(summary))
        return {"parameter_report": summary}
    logger.info("parameter report\n%s", format_summary(summary))

    # ---- tokenised data and the collator (both depend on the model: decoders, IDPG's extra inputs, the layer cache)
    pair_template = data_args.pair_template
    if pair_template is None and is_decoder(model):
        pair_template = DECODER_PAIR_TEMPLATE  # decoders have no pair format: never glue sentences without a boundary
    extra_tokenizers = get_state(model).extra_inputs or None  # IDPG's encoder reads its own tokens (petl.registry: extra inputs)

    def encode(split):
        return tokenize_split(
            split,
            tokenizer,
            data_args.max_seq_length,
            data_args.pad_to_max_length,
            labels.is_regression,
            pair_template=pair_template,
            extra_tokenizers=extra_tokenizers,
        )

    train_ds = encode(plan.train)
    eval_ds = {name: encode(split) for name, split in plan.eval_sets.items()}
    predict_ds = {name: encode(split) for name, split in plan.predict_sets.items()} if training_args.do_predict else {}
    collator = DataCollatorWithPadding(tokenizer)
    if extra_tokenizers:
        collator = ExtraInputsCollator(collator, extra_tokenizers)
        training_args.remove_unused_columns = False  # the model's pre-hook consumes the <prefix>_* columns
    cache_info = None
    if training_args.frozen_layers_eval_mode and not training_args.cache_frozen_layers:
        from petl.cache import cache_start_layer, keep_frozen_bottom_in_eval_mode

        keep_frozen_bottom_in_eval_mode(model, cache_start_layer(model))
    if training_args.cache_frozen_layers and cache_when_valid:
        from petl.cache import cache_start_layer

        try:
            cache_start_layer(model)
        except PetlError as err:
            logger.info("not caching: %s", err)
            training_args.cache_frozen_layers = False
    if training_args.cache_frozen_layers:
        from petl.cache import prepare_cached_datasets

        named = {"train": train_ds, **eval_ds, **{f"predict/{k}": v for k, v in predict_ds.items()}}
        tagged, collator, cache_info = prepare_cached_datasets(
            model,
            named,
            collator,
            training_args.cache_dtype,
            training_args.cache_dir,
            # an evaluation batch: the cache pass then never needs more memory than an uncached evaluation step
            training_args.per_device_eval_batch_size,
        )
        train_ds = tagged["train"]
        eval_ds = {name: tagged[name] for name in eval_ds}
        predict_ds = {name: tagged[f"predict/{name}"] for name in predict_ds}
        training_args.remove_unused_columns = False  # the collator needs the cache index columns

    # ---- trainer: the best validation state is kept in memory and restored after training
    best = BestStateCallback(model, metric, greater, training_args.early_stopping_patience)

    latest_predictions: dict[str, np.ndarray] = {}  # the last evaluation's logits: the reported split's go into the record

    def compute_metrics(pred):
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        latest_predictions["logits"] = logits
        return glue_metrics(task_name, logits, pred.label_ids, labels.is_regression)

    trainer = PetlTrainer(
        model=model,
        args=training_args,
        train_dataset=train_ds if training_args.do_train else None,
        eval_dataset=eval_ds["validation"],
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        callbacks=[best, *(callbacks or [])],
        method_lrs=method_lrs,
    )

    # ---- train
    train_metrics = {}
    probe_fit = None
    known_validation = None  # the restored state's validation metrics, as evaluated during training
    if training_args.do_train and "linear-probe" in method_names:  # fitted in closed form / L-BFGS, not trained by the Trainer
        from petl.methods.linear_probe import fit_linear_probe

        probe_fit = fit_linear_probe(
            model, trainer, train_ds, eval_ds["validation"], plan.train.labels, plan.eval_sets["validation"].labels,
            task_name, labels.is_regression, metric, greater,
        )  # fmt: skip
        best.best_value = probe_fit["validation_score"]
        best.history = [{"l2": float(k), f"eval_{metric}": v} for k, v in probe_fit["validation_scores"].items()]
        train_metrics = {"train_runtime": probe_fit["fit_seconds"]}
    elif training_args.do_train:
        train_out = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        train_metrics = dict(train_out.metrics)
        if best.restore_best():
            known_validation = best.best_metrics
            logger.info(
                "restored the best state: %s=%.4f at step %s (epoch %.2f)",
                best.metric_key,
                best.best_value,
                best.best_step,
                best.best_epoch or 0,
            )
        elif trainer.args.eval_strategy != "no":
            logger.warning("no evaluation produced %s; keeping the final state", best.metric_key)
    best.active = False  # the evaluations below are of the chosen state, not candidates for it
    if trial:
        return {"selection_metric": metric, "best_validation_score": best.best_value, "evaluation_history": best.history}

    # ---- evaluate every validation/test set, and predict the unlabeled test sets
    eval_metrics: dict[str, dict] = {}
    reported_predictions = None
    for name, ds in eval_ds.items():
        if name == "validation" and name != plan.report_prefix and known_validation:
            # the restored state was evaluated on exactly this set when it was chosen (same weights, eval mode):
            # reuse those scores instead of a second pass, which costs as much as a training epoch's evaluation
            eval_metrics[name] = {k.removeprefix("eval_"): v for k, v in known_validation.items()}
            continue
        latest_predictions.clear()
        m = trainer.evaluate(eval_dataset=ds, metric_key_prefix=name)
        eval_metrics[name] = {k.removeprefix(f"{name}_"): v for k, v in m.items()}
        if name == plan.report_prefix and "logits" in latest_predictions:
            reported_predictions = compact_predictions(name, plan.eval_sets[name], latest_predictions["logits"], labels.is_regression)
    predictions = {}
    if training_args.do_predict:
        for name in plan.predict_sets:
            predictions[name] = trainer.predict(predict_ds[name], metric_key_prefix=name).predictions

    # ---- save and record: this run's files are written to a staging folder in output_dir and moved into
    # place only once all of them are complete and the results line is appended, so a run that fails at
    # any point (a full disk included) leaves an earlier run's delta, predictions and results.json as they were
    state = petl_state_dict(model) if training_args.do_train else None  # every rank: gathers the slices under ZeRO-3
    record = None
    with staged_run_files(out_dir, trainer.is_world_process_zero()) as stage:
        prediction_files = {}
        if stage is not None:
            if state is not None:
                extra = {"model_name_or_path": model_args.model_name_or_path, "pooler_type": model_args.pooler_type}
                save_petl(model, stage, extra={**extra, "pair_template": pair_template}, state=state)
            for name, preds in predictions.items():
                written = write_predictions(stage, task, labels, name, preds, plan.predict_sets[name].ids)
                prediction_files[name] = str(out_dir / written.relative_to(stage))
        record = build_record(
            arguments=(model_args, data_args, petl_args, training_args),
            task_name=task_name,
            model=model,
            model_path=model_path,
            pair_template=pair_template,
            summary=summary,
            plan=plan,
            labels=labels,
            metric=metric,
            best=best,
            learning_rates=trainer.learning_rates,
            eval_metrics=eval_metrics,
            train_metrics=train_metrics,
            cache_info=cache_info,
            prediction_files=prediction_files,
            reported_predictions=reported_predictions,
            probe_fit=probe_fit,
            out_dir=out_dir,
            wall_time_seconds=time.time() - started,
        )
        if stage is not None:
            write_interop_files(model, tokenizer, petl_args, model_args, model_path, state, task_name, out_dir)
            publish_run_files(stage, out_dir, record, training_args.results_file)
    if trainer.is_world_process_zero():
        print_reported_metrics(record, task_name, labels.is_regression)
    return record


# ---------------------------------------------------------------------------------------------
# arguments


def check_deepspeed_device(training_args: PetlTrainingArguments) -> None:
    """DeepSpeed without a GPU needs --use_cpu (and DS_ACCELERATOR=cpu); without it DeepSpeed dies in
    its own batch-size assertion long after start-up."""
    import torch

    if training_args.deepspeed and not training_args.use_cpu and not torch.cuda.is_available():
        raise PetlError(
            f"--deepspeed {str(training_args.deepspeed)!r} on a machine without a GPU needs --use_cpu "
            "(run: DS_ACCELERATOR=cpu deepspeed --num_gpus N run_glue.py --deepspeed ... --use_cpu)"
        )


def quiet_replica_logging(training_args) -> None:
    """Under DDP or DeepSpeed, ranks other than the main one log at --log_level_replica (HF's default:
    warning), ours and transformers' alike, so each INFO line appears once; the main rank is left as is."""
    if training_args.should_log:
        return
    import transformers

    level = training_args.get_process_log_level()
    logging.getLogger().setLevel(level)
    transformers.logging.set_verbosity(level)


def method_default_learning_rates(training_args, method_names: list[str], given: Collection[str] = ()) -> dict[str, float] | None:
    """The rates of the methods' new parameters when the run gives none (neither --petl_lr nor
    --learning_rate): each method's documented default (MethodEntry.default_lr); None when a rate was
    given (an explicit 5e-5 included: only HF's untouched default counts as not given) or no method has one."""
    from argument_classes.training_args import UnsetLearningRate
    from petl.registry import get_method

    if training_args.petl_lr is not None or "learning_rate" in given or not isinstance(training_args.learning_rate, UnsetLearningRate):
        return None
    defaults = {name: get_method(name).default_lr for name in method_names}
    return {name: lr for name, lr in defaults.items() if lr is not None} or None


def adopt_saved_model_settings(saved: dict, model_args: ModelArguments, given: Collection[str] = ()) -> ModelArguments:
    """A saved delta fixes the base model, pooler and depth: the model arguments with those taken from
    `saved`, unless the user gave others (a conflicting one is refused: given explicitly, or set away
    from its default)."""
    defaults = {f.name: f.default for f in dataclasses.fields(model_args)}
    adopted = {}
    for name in ("model_name_or_path", "pooler_type", "num_hidden_layers"):
        if name not in saved:
            continue
        value = getattr(model_args, name)
        if value == saved[name]:
            continue
        if value != defaults[name] or name in given:
            raise PetlError(f"--{name} {value!r} differs from the saved delta's {saved[name]!r} (--load_petl)")
        adopted[name] = saved[name]
    return dataclasses.replace(model_args, **adopted)  # checked as the command line's values are


def check_saved_methods(saved: dict, petl_args: PetlArguments, given: Collection[str]) -> None:
    """With --load_petl the delta's methods run; a --method or method flag given as well is refused
    (it would be silently ignored)."""
    from petl.registry import given_method_flags

    saved_methods = ",".join(m["method"] for m in saved["methods"])
    if "method" in given and petl_args.method.replace(" ", "") != saved_methods:
        raise PetlError(f"--method {petl_args.method!r} differs from the saved delta's {saved_methods!r} (--load_petl); omit --method")
    flags = given_method_flags(petl_args, given)
    if flags:
        raise PetlError(f"--{flags[0]} was given with --load_petl, whose saved delta fixes every method option; omit it")


def check_interop_arguments(petl_args: PetlArguments, training_args: PetlTrainingArguments, method_names: list[str]) -> None:
    """--export_peft and --merge_and_save: methods they cannot write are refused before any work."""
    if petl_args.export_peft:
        from petl.peft_export import check_export_methods

        check_export_methods(method_names)
    if petl_args.merge_and_save:
        from transformers.integrations import is_deepspeed_zero3_enabled

        from petl.merge import check_foldable

        check_foldable(method_names)
        if training_args.deepspeed and is_deepspeed_zero3_enabled():
            raise PetlError(
                "--merge_and_save is not supported under DeepSpeed ZeRO-3 (each rank holds a slice of every weight); "
                "merge the saved delta afterwards (petl.load_petl, then petl.merge_and_unload)"
            )


def check_interop_model(model, petl_args: PetlArguments) -> None:
    """The settings --export_peft and --merge_and_save need, checked on the model before training."""
    if petl_args.export_peft:
        from petl.peft_export import check_exportable

        check_exportable(model)
    if petl_args.merge_and_save:
        from petl.merge import check_plain_hf_model

        check_plain_hf_model(model)


def write_interop_files(model, tokenizer, petl_args, model_args, model_path: str, state, task_name, out_dir: Path) -> None:
    """--export_peft, then --merge_and_save (which folds the methods into the weights: last), before the
    run's files are published: a failure here leaves output_dir as it was."""
    if not (petl_args.export_peft or petl_args.merge_and_save):
        return
    from petl.peft_export import base_provenance

    info = base_provenance(model_args.model_name_or_path, model_path, model)
    if petl_args.export_peft:
        from petl.peft_export import export_peft

        export_peft(model, petl_args.export_peft, model_args.model_name_or_path, state=state, info=info)
    if petl_args.merge_and_save:
        from petl.merge import save_merged

        info = {**info, "task": task_name or "custom", "run_output_dir": str(out_dir)}
        save_merged(model, petl_args.merge_and_save, tokenizer, info=info)


def settle_training_arguments(training_args: PetlTrainingArguments, evaluate_only: bool, cuda: bool) -> None:
    """What every run does, whatever HF's defaults: train (unless it evaluates a saved delta) and
    evaluate; keep the best state in memory and restore it (--load_best_model_at_end asks for that; HF's
    checkpoint reload stays off); pin memory only for a GPU; no search for unused parameters under DDP."""
    if not evaluate_only:
        training_args.do_train = True
    # the best state is always restored by BestStateCallback; HF's reload of a best checkpoint is off
    training_args.load_best_model_at_end = False
    training_args.do_eval = True
    if not cuda:
        training_args.dataloader_pin_memory = False
    if training_args.ddp_find_unused_parameters is None:
        # every trainable tensor of every method takes part in each forward; the blanket search for
        # unused ones (HF's default for non-PreTrainedModel wrappers) costs a graph walk per step
        training_args.ddp_find_unused_parameters = False


def _model_tag(name: str) -> str:
    return Path(name).name or name.replace("/", "_")


def default_output_dir(model_args: ModelArguments, data_args: DataArguments, petl_args: PetlArguments, training_args) -> str:
    """outputs/<task>-<model>-<methods>-s<seed>."""
    task = data_args.task_name or "custom"
    method_tag = petl_args.method.replace(",", "+")
    return str(Path("outputs") / f"{task}-{_model_tag(model_args.model_name_or_path)}-{method_tag}-s{training_args.seed}")


def prepare_output_dir(model_args: ModelArguments, data_args: DataArguments, petl_args: PetlArguments, training_args) -> Path:
    """Refuse to replace another run's results without the flag. Every folder the run will write is
    checked writable here, before any work."""
    from petl.results import RESULTS_FILE, check_writable_folder

    out = Path(training_args.output_dir)
    check_writable_folder(out, "--output_dir")
    if petl_args.export_peft:
        check_writable_folder(petl_args.export_peft, "--export_peft")
    if petl_args.merge_and_save:
        from petl.merge import check_merge_target

        check_merge_target(petl_args.merge_and_save)
    if training_args.cache_frozen_layers and training_args.cache_dir:
        check_writable_folder(training_args.cache_dir, "--cache_dir")
    if (out / RESULTS_FILE).exists() and not training_args.overwrite_output_dir and not petl_args.dry_run:
        raise PetlError(
            f"--output_dir {str(out)!r} already holds a run's {RESULTS_FILE}; choose another folder or pass --overwrite_output_dir"
        )
    return out


# ---------------------------------------------------------------------------------------------
# data and model


def load_data(data_args: DataArguments, training_args: PetlTrainingArguments):
    """Read the raw splits and the label space; returns (task or None, raw splits, labels, dev split
    names, test split names)."""
    from petl.data import LabelSpace, load_custom_files, load_glue_dir, load_glue_hub
    from petl.tasks import get_task

    task = get_task(data_args.task_name) if data_args.task_name else None
    custom = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
    need_test = bool(training_args.do_predict)
    if any(custom.values()):
        if not data_args.text_columns and not task:
            raise PetlError("custom data files need --text_columns (one or two column names)")
        cols = data_args.text_columns.split(",") if data_args.text_columns else list(task.hub_text_columns)
        labels = LabelSpace(None if task.labels is None else list(task.labels)) if task else None
        raw, labels = load_custom_files(custom, [c.strip() for c in cols], data_args.label_column, labels)
        return task, raw, labels, ("validation",), ("test",)
    if task is None:
        raise PetlError("give --task_name (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli) or --train_file/--validation_file")
    labels = LabelSpace(None if task.labels is None else list(task.labels))
    raw = load_glue_dir(data_args.glue_dir, task, need_test) if data_args.glue_dir else load_glue_hub(task, need_test)
    return task, raw, labels, task.dev_splits, task.test_splits


@contextlib.contextmanager
def whole_weights_under_zero3(training_args: PetlTrainingArguments):
    """Under ZeRO-3, transformers would load the weights already partitioned across ranks
    (zero.Init); methods are injected into whole modules instead, and DeepSpeed partitions the
    finished model when the Trainer builds its engine."""
    hf_config = getattr(training_args, "hf_deepspeed_config", None)
    if hf_config is None:
        yield
        return
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(hf_config)


# ---------------------------------------------------------------------------------------------
# files and the results record


@contextlib.contextmanager
def staged_run_files(out_dir: Path, writer: bool):
    """A staging folder inside `out_dir` for this run's files (None on ranks that write nothing); removed
    on the way out, with whatever was not published. A write that fails (full disk, read-only) is one
    error line, and output_dir keeps what it held."""
    if not writer:
        yield None
        return
    from safetensors import SafetensorError

    from petl.results import remove_stale_temps, temporary_path

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out_dir, stem="run-files")  # left by a run killed while publishing
        with temporary_path(out_dir / "run-files", folder=True) as stage:
            yield stage
    except (OSError, SafetensorError) as err:
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
        shown = repr(str(out_dir))
        raise PetlError(f"--output_dir {shown}: the run's files could not be written ({reason}); the folder is left as it was") from None


def publish_run_files(stage: Path, out_dir: Path, record: dict, results_file: str | None) -> None:
    """results.json into the staging folder, the results line appended, then the staged files moved into
    `out_dir` (results.json last). A failed append (full disk) is an error before anything in `out_dir`
    changes, so an earlier run's files stay and a re-run is not refused as "occupied"."""
    from petl.results import RESULTS_FILE, append_jsonl, publish_files, remove_appended, write_json_atomic

    write_json_atomic(stage / RESULTS_FILE, record)
    appended = append_jsonl(results_file, record, "--results_file") if results_file else None
    try:
        publish_files(stage, out_dir, last=RESULTS_FILE)
    except BaseException:
        if appended:
            remove_appended(results_file, appended)
        raise


def write_predictions(out_dir: Path, task, labels, name: str, preds: np.ndarray, ids: list) -> Path:
    """GLUE submission format: `index<TAB>prediction`, one file per test set, written atomically under `out_dir`."""
    from petl.results import write_text_atomic

    file_names = {"test_matched": "MNLI-m", "test_mismatched": "MNLI-mm"}
    stem = file_names.get(name) or (task.submission_name if task else name)
    lines = ["index\tprediction"]
    if labels.is_regression:
        scores = np.asarray(preds, dtype=np.float64).reshape(-1)
        if task is not None and task.name == "stsb":
            scores = np.clip(scores, 0.0, 5.0)
        lines += [f"{idx}\t{score:.3f}" for idx, score in zip(ids, scores, strict=True)]
    else:
        classes = np.asarray(preds).argmax(-1)  # GLUE's own label strings (0/1, entailment, ...)
        lines += [f"{idx}\t{labels.names[int(c)]}" for idx, c in zip(ids, classes, strict=True)]
    path = out_dir / "predictions" / f"{stem}.tsv"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def compact_predictions(split_name: str, split, logits: np.ndarray, is_regression: bool) -> dict:
    """One split's per-example predictions, compactly: the examples' ids (as the prediction files name
    them), the predicted class ids (or scores to 5 significant digits, unclipped as the metrics saw them)
    and the gold labels, so a report can recompute any metric on resampled examples."""
    if is_regression:
        scores = np.asarray(logits, dtype=np.float64).reshape(-1)
        values = [float(f"{v:.5g}") for v in scores]
        gold = [float(f"{float(v):.5g}") for v in split.labels]
    else:
        values = [int(c) for c in np.asarray(logits).argmax(-1)]
        gold = [int(v) for v in split.labels]
    if len(values) != len(split.ids):
        raise PetlError(f"internal: {len(values)} predictions for the {len(split.ids)} examples of {split_name!r}")
    return {"split": split_name, "ids": [str(i) for i in split.ids], "values": values, "labels": gold}


def build_record(
    *,
    arguments: tuple,
    task_name: str | None,
    model,
    model_path: str,
    pair_template: str | None,
    summary: dict,
    plan,
    labels,
    metric: str,
    best,
    learning_rates: dict[str, dict] | None,
    eval_metrics: dict[str, dict],
    train_metrics: dict,
    cache_info: dict | None,
    prediction_files: dict[str, str],
    out_dir: Path,
    wall_time_seconds: float,
    reported_predictions: dict | None = None,
    probe_fit: dict | None = None,
) -> dict[str, Any]:
    """The results record of one run (results.json, one line of --results_file): what ran (the
    arguments as the run settled them), what it scored, and where; every NaN/infinity as null."""
    from petl.metrics import constant_baselines
    from petl.models import packaged_origin, packaged_origin_note
    from petl.results import git_commit, hardware, library_versions, peak_memory
    from petl.state import get_state

    model_args, data_args, petl_args, training_args = arguments
    report_prefix = plan.report_prefix
    record = {
        "task": task_name or "custom",
        "model": {
            "name_or_path": model_args.model_name_or_path,
            "origin": packaged_origin(model_args.model_name_or_path),  # a packaged alias's hub id; else None
            "origin_note": packaged_origin_note(model_args.model_name_or_path),  # how its weights differ from the hub's (a quantised copy)
            "resolved_path": model_path,
            "model_type": model.config.model_type,
            "num_hidden_layers": model.config.num_hidden_layers,
            "pooler_type": model_args.pooler_type,
            "pair_template": pair_template,
        },
        "method": petl_args.method,
        "method_configs": summary["methods"],
        "seed": training_args.seed,
        "split": plan.description,
        "selection_metric": metric,
        "validation_metrics": eval_metrics.get("validation"),
        "test_metrics": eval_metrics.get("test") if report_prefix == "test" else None,
        "eval_metrics": eval_metrics,
        "reported_metrics": {k: v for k, v in eval_metrics.items() if k.startswith(report_prefix)},
        "baselines": constant_baselines(task_name, plan, labels.num_labels, labels.is_regression),
        "best_step": best.best_step,
        "best_epoch": best.best_epoch,
        "best_validation_score": best.best_value,
        "evaluation_history": best.history,
        "learning_rates": learning_rates,  # per parameter group: {"lr", "source"}; None when nothing trained
        "trainable_parameters": summary["trainable_parameters"],
        "trainable_parameters_without_head": summary["trainable_parameters_without_head"],
        "head_parameters": summary["head_parameters"],
        "backbone_parameters": summary["backbone_parameters"],
        "total_parameters": summary["total_parameters"],
        "parameter_report": summary["rows"],
        "new_parameters_initialised": get_state(model).new_parameters,
        "frozen_layer_cache": cache_info,
        "train_runtime": train_metrics.get("train_runtime"),
        "train_samples_per_second": train_metrics.get("train_samples_per_second"),
        "train_loss": train_metrics.get("train_loss"),
        "wall_time_seconds": wall_time_seconds,
        "memory": peak_memory(),
        "versions": library_versions(),
        "hardware": hardware(),
        "git": git_commit(),
        "prediction_files": prediction_files,
        # per-example predictions on the reported split (test under heldout): paired bootstrap CIs in petl.report
        "test_predictions": reported_predictions,
        "linear_probe": probe_fit,  # the L2 strength chosen on validation and each strength's score; None for other methods
        "arguments": {
            "model": dataclasses.asdict(model_args),
            "data": dataclasses.asdict(data_args),
            "petl": dataclasses.asdict(petl_args),
            "training": {k: v for k, v in training_args.to_dict().items() if not k.startswith("_")},
        },
        "output_dir": str(out_dir),
    }
    return finite_or_null(record)  # results files stay JSON: no bare NaN/Infinity


def finite_or_null(record: dict) -> dict:
    """The record with every NaN/infinity replaced by null, so results files stay JSON (bare NaN is
    not); each replaced value is named in one warning. The inputs are checked finite before
    training, so what remains is a run that diverged or a metric undefined on constant predictions."""
    replaced: list[str] = []

    def clean(value, where: str):
        if isinstance(value, dict):
            return {k: clean(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, (float, np.floating)) and not math.isfinite(value):
            replaced.append(f"{where}={value}")
            return None
        return value

    cleaned = clean(record, "")
    if replaced:
        shown = ", ".join(replaced[:6]) + (f" and {len(replaced) - 6} more" if len(replaced) > 6 else "")
        logger.warning("non-finite values recorded as null (the run diverged or a metric is undefined): %s", shown)
    return cleaned


def print_reported_metrics(record: dict, task_name: str | None, is_regression: bool) -> None:
    """One line per reported split, each followed by the constant predictor's scores there."""
    tag = task_name or "custom"

    def shown(metrics: dict) -> str:  # None: undefined (finite_or_null), e.g. Pearson of a constant
        return ", ".join(f"{k}={'n/a' if v is None else format(v, '.4f')}" for k, v in metrics.items() if k in METRIC_NAMES)

    for name, metrics in record["reported_metrics"].items():
        print(f"[{tag}] {name}: {shown(metrics)}")
        if name in record["baselines"]:
            kind = "mean label" if is_regression else "majority class"
            print(f"[{tag}] {name}, constant baseline ({kind}): {shown(record['baselines'][name]['constant'])}")

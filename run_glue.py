#!/usr/bin/env python
"""Fine-tune a pretrained model on a GLUE task (or custom sentence(-pair) data) with a PETL method.

    python run_glue.py --task_name mrpc --model_name_or_path minilm-l6 --method lora --lora_layers 4-5
    python run_glue.py args.json

Arguments: argument_classes/. Methods: petl/methods/ (registry in petl/registry.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys
import time
from collections.abc import Collection
from pathlib import Path

import numpy as np

from argument_classes import ARGUMENT_CLASSES, DataArguments, ModelArguments, PetlArguments, PetlTrainingArguments
from argument_classes.checks import check_numbers
from petl.errors import PetlError, exit_status

DECODER_PAIR_TEMPLATE = "{s1}\n{s2}"
METRIC_NAMES = ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr", "mse", "combined_score")

logger = logging.getLogger("run_glue")


def parse_args(argv: list[str] | None = None) -> tuple:
    """The four argument objects from the command line, or from one JSON args file (its keys and
    value types checked: a wrong one is one line naming key, file, line, value and expected type)."""
    from argument_classes import ArgumentParser, arguments_from_dict, is_args_file, read_args_file

    argv = sys.argv[1:] if argv is None else argv
    if is_args_file(argv):
        values, text = read_args_file(argv[0])
        return arguments_from_dict(values, f"argument file {argv[0]!r}", source_text=text)
    return ArgumentParser(ARGUMENT_CLASSES).parse_args_into_dataclasses(args=argv)


def _model_tag(name: str) -> str:
    return Path(name).name or name.replace("/", "_")


def check_deepspeed_device(training_args) -> None:
    """DeepSpeed without a GPU needs --use_cpu (and DS_ACCELERATOR=cpu); without it DeepSpeed dies in
    its own batch-size assertion long after start-up."""
    import torch

    if training_args.deepspeed and not training_args.use_cpu and not torch.cuda.is_available():
        raise PetlError(
            f"--deepspeed {str(training_args.deepspeed)!r} on a machine without a GPU needs --use_cpu "
            "(run: DS_ACCELERATOR=cpu deepspeed --num_gpus N run_glue.py --deepspeed ... --use_cpu)"
        )


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


def prepare_output_dir(model_args, data_args, petl_args, training_args) -> Path:
    """Default the folder name; refuse to replace another run's results without the flag. Every
    folder the run will write is checked writable here, before any work."""
    from petl.results import RESULTS_FILE, check_writable_folder

    if not training_args.output_dir or training_args.output_dir == "trainer_output":
        task = data_args.task_name or "custom"
        model_tag = _model_tag(model_args.model_name_or_path)
        method_tag = petl_args.method.replace(",", "+")
        training_args.output_dir = str(Path("outputs") / f"{task}-{model_tag}-{method_tag}-s{training_args.seed}")
    out = Path(training_args.output_dir)
    check_writable_folder(out, "--output_dir")
    if petl_args.export_peft:
        check_writable_folder(petl_args.export_peft, "--export_peft")
    if training_args.cache_frozen_layers and training_args.cache_dir:
        check_writable_folder(training_args.cache_dir, "--cache_dir")
    if (out / RESULTS_FILE).exists() and not training_args.overwrite_output_dir and not petl_args.dry_run:
        raise PetlError(
            f"--output_dir {str(out)!r} already holds a run's {RESULTS_FILE}; choose another folder or pass --overwrite_output_dir"
        )
    return out


def load_data(data_args, training_args):
    """Read the raw splits and the label space; returns (task or None, raw splits, labels)."""
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


def adopt_saved_model_settings(saved: dict, model_args: ModelArguments) -> None:
    """A saved delta fixes the base model, pooler and depth: take them unless the user gave others."""
    defaults = ModelArguments()
    for name in ("model_name_or_path", "pooler_type", "num_hidden_layers"):
        if name not in saved:
            continue
        given = getattr(model_args, name)
        if given == getattr(defaults, name):
            setattr(model_args, name, saved[name])
        elif given != saved[name]:
            raise PetlError(f"--{name} {given!r} differs from the saved delta's {saved[name]!r} (--load_petl)")


def write_predictions(out_dir: Path, task, labels, name: str, preds: np.ndarray, ids: list) -> Path:
    """GLUE submission format: `index<TAB>prediction`, one file per test set, written atomically."""
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


@contextlib.contextmanager
def whole_weights_under_zero3(training_args):
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
    import transformers
    from transformers import DataCollatorWithPadding, set_seed

    from petl.arch import is_decoder
    from petl.core import apply_petl, format_summary, load_petl, petl_state_dict, read_petl_config, save_petl, trainable_summary
    from petl.data import ExtraInputsCollator, check_pair_template, plan_splits, tokenize_split
    from petl.metrics import constant_baselines, default_selection_metric, glue_metrics
    from petl.models import load_model, load_tokenizer, resolve_model_path
    from petl.results import RESULTS_FILE, append_jsonl, git_commit, hardware, library_versions, peak_memory, write_json_atomic
    from petl.training import BestStateCallback, PetlTrainer, resolve_resume_checkpoint

    started = time.time()
    # ---- validate everything cheap before any heavy work
    check_numbers(model_args, data_args, petl_args, training_args)
    check_deepspeed_device(training_args)
    if petl_args.load_petl:
        saved = read_petl_config(petl_args.load_petl)
        petl_args.method = ",".join(m["method"] for m in saved["methods"])
        adopt_saved_model_settings(saved, model_args)
        if data_args.pair_template is None:
            data_args.pair_template = saved.get("pair_template")  # the delta was trained on texts joined this way
        method_configs = None
    else:
        method_configs = petl_args.method_configs(given)
    method_names = petl_args.method_names()
    if model_args.pooler_type not in ("auto", "model", "cls", "avg", "last"):
        raise PetlError(f"--pooler_type {model_args.pooler_type!r} is not one of auto, model, cls, avg, last")
    if data_args.pair_template is not None:
        check_pair_template(data_args.pair_template)
    if data_args.split_mode not in ("official", "heldout"):
        raise PetlError(f"--split_mode {data_args.split_mode!r} is not one of official, heldout")
    if training_args.cache_dtype not in ("float32", "bfloat16", "float16"):
        raise PetlError(f"--cache_dtype {training_args.cache_dtype!r} is not one of float32, bfloat16, float16")
    if petl_args.export_peft and "lora" not in method_names:
        raise PetlError("--export_peft needs --method lora (PEFT's adapter format holds LoRA weights)")
    if not petl_args.load_petl:
        training_args.do_train = True  # training is what a run does unless it evaluates a saved delta
    training_args.do_eval = True
    if not torch.cuda.is_available():
        training_args.dataloader_pin_memory = False
    if training_args.ddp_find_unused_parameters is None:
        # every trainable tensor of every method takes part in each forward; the blanket search for
        # unused ones (HF's default for non-PreTrainedModel wrappers) costs a graph walk per step
        training_args.ddp_find_unused_parameters = False
    out_dir = Path(training_args.output_dir) if trial else prepare_output_dir(model_args, data_args, petl_args, training_args)
    if training_args.results_file and not trial:
        from petl.results import check_appendable

        check_appendable(training_args.results_file, "--results_file")  # a folder or read-only file: refused before training
    if training_args.do_train:  # `true`: the latest complete checkpoint in output_dir; a bad path is refused here
        training_args.resume_from_checkpoint = resolve_resume_checkpoint(training_args.resume_from_checkpoint, out_dir)

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
    )

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
    model_args.pooler_type = model.petl_pooler_type  # `auto` resolved: recorded and saved as what ran
    if petl_args.load_petl:
        load_petl(model, petl_args.load_petl)
    else:
        apply_petl(model, method_configs)
    summary = trainable_summary(model)
    if petl_args.dry_run:
        print(format_summary(summary))
        return {"parameter_report": summary}
    logger.info("parameter report\n%s", format_summary(summary))

    pair_template = data_args.pair_template
    if pair_template is None and is_decoder(model):
        pair_template = DECODER_PAIR_TEMPLATE  # decoders have no pair format: never glue sentences without a boundary
    extra_tokenizers = getattr(model, "petl_extra_inputs", None)  # IDPG's encoder reads its own tokens

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

    metric = training_args.metric_for_best_model or default_selection_metric(task_name, labels.is_regression)
    metric = metric.removeprefix("eval_")
    greater = metric not in ("loss", "mse")
    best = BestStateCallback(model, metric, greater, training_args.early_stopping_patience)

    def compute_metrics(pred):
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
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
    )

    train_metrics = {}
    if training_args.do_train:
        train_out = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        train_metrics = dict(train_out.metrics)
        best.active = False
        if best.restore_best():
            logger.info(
                "restored the best state: %s=%.4f at step %s (epoch %.2f)",
                best.metric_key,
                best.best_value,
                best.best_step,
                best.best_epoch or 0,
            )
        elif trainer.args.eval_strategy != "no":
            logger.warning("no evaluation produced %s; keeping the final state", best.metric_key)
    best.active = False
    if trial:
        return {"selection_metric": metric, "best_validation_score": best.best_value, "evaluation_history": best.history}

    eval_metrics: dict[str, dict] = {}
    if training_args.do_eval or training_args.do_train:
        for name, ds in eval_ds.items():
            m = trainer.evaluate(eval_dataset=ds, metric_key_prefix=name)
            eval_metrics[name] = {k.removeprefix(f"{name}_"): v for k, v in m.items()}

    predictions = {}
    if training_args.do_predict:
        for name in plan.predict_sets:
            predictions[name] = trainer.predict(predict_ds[name], metric_key_prefix=name).predictions

    # ---- files: written only now that every evaluation has finished, so a run that failed earlier
    # leaves an earlier run's delta and predictions in output_dir as they were
    if training_args.do_train:
        state = petl_state_dict(model)  # every rank: gathers the slices under ZeRO-3
        if trainer.is_world_process_zero():
            extra = {
                "model_name_or_path": model_args.model_name_or_path,
                "pooler_type": model_args.pooler_type,
                "pair_template": pair_template,
            }
            save_petl(model, out_dir, extra=extra, state=state)
            if petl_args.export_peft:
                from petl.peft_export import export_peft

                export_peft(model, petl_args.export_peft, model_args.model_name_or_path, state=state)

    prediction_files = {}
    if trainer.is_world_process_zero():
        for name, preds in predictions.items():
            ids = plan.predict_sets[name].ids
            prediction_files[name] = str(write_predictions(out_dir, task, labels, name, preds, ids))

    report_prefix = plan.report_prefix
    record = {
        "task": task_name or "custom",
        "model": {
            "name_or_path": model_args.model_name_or_path,
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
        "trainable_parameters": summary["trainable_parameters"],
        "trainable_parameters_without_head": summary["trainable_parameters_without_head"],
        "head_parameters": summary["head_parameters"],
        "backbone_parameters": summary["backbone_parameters"],
        "total_parameters": summary["total_parameters"],
        "parameter_report": summary["rows"],
        "new_parameters_initialised": getattr(model, "petl_new_parameters", []),
        "frozen_layer_cache": cache_info,
        "train_runtime": train_metrics.get("train_runtime"),
        "train_samples_per_second": train_metrics.get("train_samples_per_second"),
        "train_loss": train_metrics.get("train_loss"),
        "wall_time_seconds": time.time() - started,
        "memory": peak_memory(),
        "versions": library_versions(),
        "hardware": hardware(),
        "git": git_commit(),
        "prediction_files": prediction_files,
        "arguments": {
            "model": dataclasses.asdict(model_args),
            "data": dataclasses.asdict(data_args),
            "petl": dataclasses.asdict(petl_args),
            "training": {k: v for k, v in training_args.to_dict().items() if not k.startswith("_")},
        },
        "output_dir": str(out_dir),
    }
    record = finite_or_null(record)  # results files stay JSON: no bare NaN/Infinity
    if trainer.is_world_process_zero():
        # the JSONL line first: a failed append (full disk) is an error before results.json exists, so a
        # re-run is not refused as "occupied"; a failed results.json takes the line back
        appended = append_jsonl(training_args.results_file, record, "--results_file") if training_args.results_file else None
        try:
            write_json_atomic(out_dir / RESULTS_FILE, record)
        except BaseException:
            if appended:
                from petl.results import remove_appended

                remove_appended(training_args.results_file, appended)
            raise
        for name, metrics in record["reported_metrics"].items():
            shown = ", ".join(f"{k}={'n/a' if v is None else format(v, '.4f')}" for k, v in metrics.items() if k in METRIC_NAMES)
            print(f"[{task_name or 'custom'}] {name}: {shown}")
            if name in record["baselines"]:
                kind = "mean label" if labels.is_regression else "majority class"
                constant = record["baselines"][name]["constant"]  # None: undefined (finite_or_null), e.g. Pearson of a constant
                shown = ", ".join(f"{k}={'n/a' if v is None else format(v, '.4f')}" for k, v in constant.items() if k in METRIC_NAMES)
                print(f"[{task_name or 'custom'}] {name}, constant baseline ({kind}): {shown}")
    del torch, transformers
    return record


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, datefmt="%H:%M:%S")
    import transformers

    transformers.logging.set_verbosity_warning()

    def parse_and_run() -> None:
        from argument_classes import given_argument_names

        arguments = parse_args(argv)
        run(*arguments, given=given_argument_names(sys.argv[1:] if argv is None else argv))

    return exit_status(parse_and_run)


if __name__ == "__main__":
    sys.exit(main())

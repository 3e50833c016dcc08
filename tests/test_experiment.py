"""The pipeline (petl/experiment.py) as its callers use it: arguments checked where they are defined,
the caller's argument objects never changed, one home for the selection metric."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from conftest import FAST

import run_glue
from argument_classes import DataArguments, ModelArguments, PetlTrainingArguments, arguments_from_dict
from petl.errors import PetlError


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: ModelArguments(pooler_type="mean"), "--pooler_type 'mean' is not one of auto, model, cls, avg, last"),
        (lambda: DataArguments(split_mode="random"), "--split_mode 'random' is not one of official, heldout"),
        (lambda: DataArguments(pair_template="{s1} and"), "--pair_template '{s1} and' lacks {s2}"),
        (lambda: PetlTrainingArguments(cache_dtype="int8"), "--cache_dtype 'int8' is not one of float32, bfloat16, float16"),
    ],
)
def test_each_value_is_checked_where_its_argument_class_is_defined(build, message):
    with pytest.raises(PetlError, match=message.replace("{", r"\{").replace("}", r"\}")):
        build()


def test_an_args_file_value_refused_by_its_class_names_the_file():
    with pytest.raises(PetlError, match=r"^argument file 'a.json': --split_mode 'random' is not one of official, heldout$"):
        arguments_from_dict({"split_mode": "random"}, "argument file 'a.json'")


def test_run_leaves_the_callers_arguments_as_they_were(tmp_path, glue_dir, monkeypatch):
    """run() works on its own copies; the record says what ran (default folder, `auto` resolved, training
    on, the collator's columns kept for the layer cache, a loaded delta's method)."""
    monkeypatch.chdir(tmp_path)  # the default output folder, outputs/<task>-<model>-<method>-s<seed>, is made here
    common = [*FAST, "--task_name", "mrpc", "--glue_dir", str(glue_dir), "--max_train_samples", "32", "--max_eval_samples", "32"]
    given = run_glue.parse_args([*common, "--method", "lora", "--lora_layers", "1", "--num_train_epochs", "1", "--cache_frozen_layers"])
    before = copy.deepcopy(given)
    record = run_glue.run(*given)
    assert given == before
    ran = record["arguments"]
    assert record["output_dir"] == "outputs/mrpc-minilm-l6-lora-s1" and ran["training"]["output_dir"] == record["output_dir"]
    assert record["model"]["origin"] == "sentence-transformers/all-MiniLM-L6-v2"  # the alias, as others can resolve it
    assert ran["model"]["pooler_type"] == "model" and ran["training"]["do_train"] and not ran["training"]["remove_unused_columns"]
    assert given[0].pooler_type == "auto" and given[3].output_dir == "trainer_output" and given[3].remove_unused_columns

    given = run_glue.parse_args([*common, "--load_petl", record["output_dir"], "--output_dir", str(tmp_path / "reloaded")])
    before = copy.deepcopy(given)
    reloaded = run_glue.run(*given)
    assert given == before and given[2].method == "full"
    assert reloaded["method"] == "lora" and reloaded["arguments"]["petl"]["method"] == "lora"
    assert reloaded["validation_metrics"]["loss"] == pytest.approx(record["validation_metrics"]["loss"], abs=1e-5)


def test_the_task_definition_is_the_one_home_of_the_selection_metric(monkeypatch):
    """A run's best state and a search's best trial are chosen by the task's `selection_metric`."""
    import run_glue_hyper_search
    from petl.metrics import default_selection_metric, selection_metric
    from petl.tasks import GLUE_TASKS

    assert {name: default_selection_metric(name, task.is_regression) for name, task in GLUE_TASKS.items()} == {
        "cola": "matthews_correlation", "sst2": "accuracy", "mrpc": "f1", "stsb": "combined_score", "qqp": "f1",
        "mnli": "accuracy", "qnli": "accuracy", "rte": "accuracy", "wnli": "accuracy",
    }  # fmt: skip
    monkeypatch.setitem(GLUE_TASKS, "rte", dataclasses.replace(GLUE_TASKS["rte"], selection_metric="loss"))
    assert selection_metric("rte", False) == "loss" and selection_metric("rte", False, None, "eval_f1") == "f1"
    training = PetlTrainingArguments(output_dir="x")
    objective = run_glue_hyper_search.search_objective(DataArguments(task_name="rte"), training, run_glue_hyper_search.SearchArguments())
    assert (objective.metric, objective.mode, objective.key) == ("loss", "min", "eval_loss")


def test_packaged_aliases_name_their_origin_and_unknown_architectures_say_where_to_add_one():
    from transformers import AutoModelForSequenceClassification, GPTNeoConfig

    from petl.arch import arch_for
    from petl.models import PACKAGED_MODELS, packaged_origin, packaged_origin_note

    assert all("/" in packaged.origin and " " not in packaged.origin for packaged in PACKAGED_MODELS.values())  # a resolvable hub id
    assert packaged_origin("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "dequantised to float32 from a Q4_1 GGUF" in packaged_origin_note("smollm2-135m")
    assert packaged_origin_note("minilm-l6") is None
    assert packaged_origin("bert-base-uncased") is None
    config = GPTNeoConfig(hidden_size=8, num_layers=1, num_heads=2, attention_types=[[["global"], 1]])
    model = AutoModelForSequenceClassification.from_config(config)
    with pytest.raises(PetlError, match=r"model_type 'gpt_neo' is not supported; supported: .*one entry in ARCHITECTURES, petl/arch.py"):
        arch_for(model)


def test_the_restored_states_validation_scores_are_reused_not_evaluated_again(tmp_path, glue_dir):
    """The best state was scored on the validation set when it was chosen; after restoring it the final
    evaluation runs only the test set, and the record's validation metrics are that evaluation's."""
    from transformers import TrainerCallback

    class Evaluations(TrainerCallback):
        def __init__(self):
            self.prefixes: list[str] = []

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.prefixes.append(next(k for k in metrics if k.endswith("_loss")).removesuffix("_loss"))

    seen = Evaluations()
    argv = [*FAST, "--task_name", "mrpc", "--glue_dir", str(glue_dir), "--max_train_samples", "32", "--max_eval_samples", "32",
            "--method", "lora", "--num_train_epochs", "2", "--split_mode", "heldout", "--output_dir", str(tmp_path / "run")]  # fmt: skip
    record = run_glue.run(*run_glue.parse_args(argv), callbacks=[seen])
    assert seen.prefixes == ["eval", "eval", "test"]  # two epochs chose the state; the final pass is test only
    metric = record["selection_metric"]
    best = max(record["evaluation_history"], key=lambda h: h[f"eval_{metric}"])  # the first of equals, as chosen
    assert record["validation_metrics"][metric] == record["best_validation_score"] == best[f"eval_{metric}"]
    assert record["validation_metrics"]["epoch"] == record["best_epoch"] == best["epoch"]
    assert record["test_metrics"]["accuracy"] == record["reported_metrics"]["test"]["accuracy"]

"""GLUE readers on the real files, the split protocols, custom files and bad input."""

import json
import re

import pytest

from petl.data import TextSplit, load_custom_files, load_glue_dir, plan_splits, read_glue_split
from petl.errors import PetlError
from petl.tasks import GLUE_TASKS, get_task

OFFICIAL_SIZES = {
    "cola": {"train": 8551, "dev": 1043, "test": 1063},
    "sst2": {"train": 67349, "dev": 872, "test": 1821},
    "mrpc": {"train": 3668, "dev": 408, "test": 1725},
    "stsb": {"train": 5749, "dev": 1500, "test": 1379},
    "rte": {"train": 2490, "dev": 277, "test": 3000},
    "wnli": {"train": 635, "dev": 71, "test": 146},
    "qnli": {"dev": 5463, "test": 5463},
}


@pytest.mark.parametrize("task", sorted(OFFICIAL_SIZES))
def test_row_counts_equal_official_sizes(glue_dir, task):
    spec = get_task(task)
    for split, size in OFFICIAL_SIZES[task].items():
        data = read_glue_split(glue_dir, spec, split)
        assert len(data) == size
        assert (data.labels is None) == (split == "test")
        if data.labels is not None:
            if spec.is_regression:
                assert all(0.0 <= y <= 5.0 for y in data.labels)
            else:
                assert set(data.labels) == set(range(spec.num_labels))


def test_glue_quirks(glue_dir):
    cola = read_glue_split(glue_dir, get_task("cola"), "train")  # no header row
    assert cola.text_a[0].startswith("Our friends won't buy this analysis")
    assert cola.labels[0] == 1
    mrpc = read_glue_split(glue_dir, get_task("mrpc"), "train")  # BOM in the header, pairs
    assert mrpc.text_b is not None and mrpc.labels[0] == 1
    # a field that starts with a quote is text, not a quoted field (QUOTE_NONE): read verbatim, and it
    # must not swallow the tab and the lines after it
    mrpc_dev = read_glue_split(glue_dir, get_task("mrpc"), "dev")
    assert mrpc_dev.text_b[0] == '" The foodservice pie business does not fit our long-term growth strategy .'
    assert mrpc_dev.text_a[11] == '" Sanitation is poor ... there could be typhoid and cholera , " he said .'
    rte = read_glue_split(glue_dir, get_task("rte"), "dev")
    assert rte.text_a[137].startswith('"It\'s Only a Play" is Terrence McNally\'s "Give My Regards to Broadway,"')
    assert rte.text_b[137] == "Broadway is in New York." and rte.labels[137] == 0  # entailment
    assert set(rte.labels) == {0, 1}  # entailment, not_entailment


def test_all_nine_tasks_known_and_missing_files_are_clear(glue_dir):
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    with pytest.raises(PetlError, match="train.tsv"):
        load_glue_dir(glue_dir, get_task("qnli"), need_test=False)  # QNLI has no train here
    with pytest.raises(PetlError, match="no folder 'MNLI'"):
        load_glue_dir(glue_dir, get_task("mnli"), need_test=False)
    with pytest.raises(PetlError, match="unknown; allowed"):
        get_task("squad")


def _split(n, labeled=True):
    return TextSplit([f"s{i}" for i in range(n)], None, [i % 2 for i in range(n)] if labeled else None, [str(i) for i in range(n)])


def test_heldout_small_task_splits_dev_in_halves_deterministically():
    raw = {"train": _split(500), "dev": _split(101)}
    a = plan_splits(raw, ("dev",), ("test",), "heldout", 7)
    b = plan_splits(raw, ("dev",), ("test",), "heldout", 7)
    c = plan_splits(raw, ("dev",), ("test",), "heldout", 8)
    val, test = set(a.eval_sets["validation"].ids), set(a.eval_sets["test"].ids)
    assert not val & test and len(val) + len(test) == 101 and len(val) == 50
    assert a.eval_sets["validation"].ids == b.eval_sets["validation"].ids
    assert a.eval_sets["validation"].ids != c.eval_sets["validation"].ids
    assert a.report_prefix == "test" and len(a.train) == 500


def test_heldout_large_task_holds_out_training_examples():
    raw = {"train": _split(12000), "dev_matched": _split(300), "dev_mismatched": _split(200)}
    plan = plan_splits(raw, ("dev_matched", "dev_mismatched"), (), "heldout", 1)
    assert len(plan.eval_sets["validation"]) == 1000 and len(plan.train) == 11000
    assert not set(plan.eval_sets["validation"].ids) & set(plan.train.ids)
    assert len(plan.eval_sets["test"]) == 300 and len(plan.eval_sets["test_mismatched"]) == 200


def test_heldout_validation_size_sets_how_many_training_examples_are_held_out():
    raw = {"train": _split(12000), "dev": _split(300)}
    plan = plan_splits(raw, ("dev",), (), "heldout", 1, max_train_samples=400, heldout_validation_size=500)
    assert len(plan.eval_sets["validation"]) == 500 and len(plan.eval_sets["test"]) == 300 and len(plan.train) == 400
    assert not set(plan.eval_sets["validation"].ids) & set(plan.train.ids)
    assert plan.description["protocol"] == "500 training examples held out as validation; dev is test"
    default = plan_splits(raw, ("dev",), (), "heldout", 1)
    assert set(plan.eval_sets["validation"].ids) < set(default.eval_sets["validation"].ids)  # a prefix of the same shuffle


@pytest.mark.parametrize(
    "train,mode,size,message",
    [
        (500, "heldout", 100, "--heldout_validation_size 100 applies to tasks with 10,000+ training examples; this one has 500 "
         "and splits its dev set 50/50 into validation and test"),
        (12000, "official", 100, "--heldout_validation_size 100 needs --split_mode heldout (given: official)"),
        (12000, "heldout", 12000, "--heldout_validation_size 12000 leaves no training data; allowed: 1 to 11,999"),
    ],
)  # fmt: skip
def test_heldout_validation_size_where_it_cannot_apply_is_refused(train, mode, size, message):
    with pytest.raises(PetlError, match=f"^{re.escape(message)}$"):
        plan_splits({"train": _split(train), "dev": _split(100)}, ("dev",), (), mode, 1, heldout_validation_size=size)


def test_official_mode_reports_every_dev_set():
    raw = {"train": _split(50), "dev_matched": _split(30), "dev_mismatched": _split(20)}
    plan = plan_splits(raw, ("dev_matched", "dev_mismatched"), (), "official", 1)
    assert list(plan.eval_sets) == ["validation", "validation_mismatched"] and plan.report_prefix == "validation"


def test_subsampling_is_seeded_and_empty_is_an_error():
    raw = {"train": _split(1000), "dev": _split(100)}
    a = plan_splits(raw, ("dev",), (), "official", 3, train_fraction=0.1)
    b = plan_splits(raw, ("dev",), (), "official", 3, train_fraction=0.1)
    assert len(a.train) == 100 and a.train.ids == b.train.ids and a.train.ids != [str(i) for i in range(100)]
    assert len(plan_splits(raw, ("dev",), (), "official", 3, max_train_samples=10, max_eval_samples=5).eval_sets["validation"]) == 5
    with pytest.raises(PetlError, match="empty"):
        plan_splits(raw, ("dev",), (), "official", 3, max_train_samples=0)
    with pytest.raises(PetlError, match="train_fraction"):
        plan_splits(raw, ("dev",), (), "official", 3, train_fraction=1.5)


def test_custom_files_classification_and_regression(tmp_path):
    (tmp_path / "train.csv").write_text("a,b,y\nhello,world,pos\nfoo,bar,neg\nx,y,pos\n")
    (tmp_path / "dev.jsonl").write_text("\n".join(json.dumps({"a": "q", "b": "r", "y": "neg"}) for _ in range(2)))
    raw, labels = load_custom_files(
        {"train": str(tmp_path / "train.csv"), "validation": str(tmp_path / "dev.jsonl")}, ["a", "b"], "y", None
    )
    assert labels.names == ["neg", "pos"] and raw["train"].labels == [1, 0, 1] and raw["validation"].labels == [0, 0]
    (tmp_path / "reg.tsv").write_text("s\tscore\nab\t0.5\ncd\t4.25\n")
    raw, labels = load_custom_files({"train": str(tmp_path / "reg.tsv")}, ["s"], "score", None)
    assert labels.is_regression and raw["train"].labels == [0.5, 4.25]


def test_custom_file_errors(tmp_path):
    (tmp_path / "train.csv").write_text("a,y\nhello,pos\nbye,neg\n")  # two classes: one alone is refused
    (tmp_path / "dev.csv").write_text("a,y\nhello,maybe\n")
    with pytest.raises(PetlError, match="'maybe'.*label set"):
        load_custom_files({"train": str(tmp_path / "train.csv"), "validation": str(tmp_path / "dev.csv")}, ["a"], "y", None)
    with pytest.raises(PetlError, match="column 'b' missing"):
        load_custom_files({"train": str(tmp_path / "train.csv")}, ["a", "b"], "y", None)
    with pytest.raises(PetlError, match="does not exist"):
        load_custom_files({"train": str(tmp_path / "nope.csv")}, ["a"], "y", None)
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(PetlError, match="cannot be read"):
        load_custom_files({"train": str(tmp_path / "bin.csv")}, ["a"], "y", None)

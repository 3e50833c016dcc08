"""Bad input to run_glue_hyper_search.py gets one `error:` line and exit status 2 before Ray starts or
any folder is made; `--resume` unpickles only from folders the user's own searches created."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import petl.search
import run_glue_hyper_search

MARKER_FILE = ".petl_search.json"  # the documented name of a search folder's marker

REPO = Path(__file__).resolve().parent.parent
GOOD_SPACE = {"learning_rate": {"loguniform": [1e-4, 1e-2]}}


class RayStarted(Exception):
    """Raised by the stubbed ray.init: the run got past every check."""


@pytest.fixture(autouse=True)
def private_key_and_no_ray(tmp_path, monkeypatch):
    """A search key of the test's own (not ~/.config), and a Ray that only says it was reached."""
    import ray

    monkeypatch.setenv("PETL_SEARCH_KEY_FILE", str(tmp_path / "keys" / "search.key"))

    def fake_init(*args, **kwargs):
        raise RayStarted

    monkeypatch.setattr(ray, "init", fake_init)


def _argv(glue_dir, out: Path, *extra: str) -> list[str]:
    return ["--task_name", "rte", "--glue_dir", str(glue_dir), "--model_name_or_path", "minilm-l6", "--num_hidden_layers", "2",
            "--method", "lora", "--lora_layers", "1", "--output_dir", str(out), *extra]  # fmt: skip


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


def _space(tmp_path: Path, space) -> Path:
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    return path


def test_pbt_space_without_a_mutable_learning_rate_is_refused(tmp_path, glue_dir, capsys):
    space = _space(tmp_path, {"lora_rank": {"choice": [4, 8]}})
    out = tmp_path / "search"
    assert run_glue_hyper_search.main(_argv(glue_dir, out, "--search_space", str(space))) == 2
    line = _one_error_line(capsys)
    assert str(space) in line and "PBT" in line and "learning_rate" in line and "lora_rank" in line and "asha" in line
    assert not out.exists()
    # the same space is fine for ASHA, which mutates nothing: the run gets as far as starting Ray
    with pytest.raises(RayStarted):
        run_glue_hyper_search.main(_argv(glue_dir, out, "--search_space", str(space), "--search_scheduler", "asha"))


@pytest.mark.parametrize(
    "entry,message",
    [
        ({"lora_rank": {"choice": []}}, "lora_rank: choice needs a list of values, got []"),
        ({"lora_rank": {"choice": [8, "sixteen"]}}, 'choice value "sixteen" is not allowed; lora_rank takes an integer'),
        ({"lora_dropout": {"choice": [0.1, True]}}, "choice value true is not allowed; lora_dropout takes a number"),
        ({"learning_rate": {"loguniform": [1e-2, 1e-4]}}, "loguniform needs [low, high] with low < high, got [0.01, 0.0001]"),
        ({"learning_rate": {"loguniform": [1e-4, float("inf")]}}, "loguniform needs finite bounds, got [0.0001, Infinity]"),
        ({"weight_decay": {"uniform": [float("nan"), 0.1]}}, "uniform needs finite bounds, got [NaN, 0.1]"),
        ({"learning_rate": {"normal": [1]}}, 'give exactly one of loguniform, uniform, choice, randint, e.g. {loguniform: [1e-5, 1e-3]}; '
                                             'got {"normal": [1]}'),
        ({"learning_rte": {"loguniform": [1e-4, 1e-2]}}, "'learning_rte' is not a run_glue.py argument that can be searched"),
        ({"lora_rank": {"uniform": [4, 16]}}, "lora_rank takes integers: use randint with integer bounds"),
        ({"lora_layers": {"uniform": [0, 1]}}, "uniform draws numbers, but lora_layers takes a string; use choice"),
        ({"results_file": {"choice": ["../../escaped.jsonl"]}}, "'results_file' is not a run_glue.py argument that can be searched"),
        ({"export_peft": {"choice": ["/tmp/elsewhere"]}}, "'export_peft' is not a run_glue.py argument that can be searched"),
    ],
)  # fmt: skip
def test_bad_space_values_get_one_line_before_anything_is_written(tmp_path, glue_dir, capsys, entry, message):
    space = _space(tmp_path, {**GOOD_SPACE, **entry})
    out = tmp_path / "search"
    assert run_glue_hyper_search.main(_argv(glue_dir, out, "--search_space", str(space))) == 2
    line = _one_error_line(capsys)
    assert message in line and f"--search_space {str(space)!r}" in line, line
    assert not out.exists()


def test_missing_args_file_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nowhere.json"
    assert run_glue_hyper_search.main([str(missing)]) == 2
    line = _one_error_line(capsys)
    assert f"argument file {str(missing)!r} does not exist" in line


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"task_name": "rte",\n "search_trials": "four"}', 'line 2: \'search_trials\' is "four"; expected an integer'),
        ('{"task_name": "rte",\n\n "num_train_epochs": "3"}', 'line 3: \'num_train_epochs\' is "3"; expected a number (write the number'),
        ('{"task_name": "rte", "learning_rate": NaN}', "line 1: 'learning_rate' is NaN; expected a finite number"),
        ('{"task_name": "rte", "disable_tqdm": "yes"}', '\'disable_tqdm\' is "yes"; expected true or false or null'),
        ('{"serch_trials": 3}', "line 1: 'serch_trials' (= 3) is not a run_glue_hyper_search.py argument (did you mean 'search_trials'?)"),
        ('{"task_name": "rte",\n "method": ', "line 2: not valid JSON"),
        ('["--task_name", "rte"]', "expected an object of argument names and values, got [\"--task_name\", \"rte\"]"),
    ],
)  # fmt: skip
def test_wrongly_typed_args_file_names_file_line_value_and_type(tmp_path, capsys, text, message):
    args_file = tmp_path / "args.json"
    args_file.write_text(text)
    assert run_glue_hyper_search.main([str(args_file)]) == 2
    line = _one_error_line(capsys)
    assert f"argument file {str(args_file)!r}" in line and message in line, line


def test_bad_search_flags_and_metric(tmp_path, glue_dir, capsys):
    out = tmp_path / "search"
    for extra, message in [
        (["--cpus_per_trial", "nan"], "--cpus_per_trial nan is invalid; allowed: a finite number > 0"),
        (["--perturbation_interval", "0"], "--perturbation_interval 0 is invalid"),
        (["--search_metric", "acc"], "--search_metric 'acc' is not reported for this task; allowed: accuracy, loss"),
        (["--lora_rank", "abc"], "argument --lora_rank: invalid int value: 'abc'"),  # one line, no usage text
        (["--adapter_dim", "64"], "--adapter_dim was given but --method 'lora' does not use it"),  # even at its default
        (["--lora_alpha", "nan"], "--lora_alpha nan is not a finite number"),
        (["--ray_address", "127.0.0.1:1"], "--ray_address '127.0.0.1:1': no Ray cluster answers there"),  # before the folder
    ]:
        assert run_glue_hyper_search.main(_argv(glue_dir, out, *extra)) == 2
        assert message in _one_error_line(capsys)
    assert not out.exists()


def _crafted_pickle(folder: Path, proof: Path) -> None:
    """A tuner.pkl that, when unpickled, creates `proof`: what a hostile folder would hold."""
    (folder / "ray" / "search").mkdir(parents=True, exist_ok=True)
    payload = b"cos\nmkdir\n(V" + str(proof).encode() + b"\ntR."  # os.mkdir(proof)
    (folder / "ray" / "search" / "tuner.pkl").write_bytes(payload)
    with pytest.raises(FileExistsError):  # the payload really does run code when unpickled
        proof.mkdir()
        pickle.loads(payload)
    proof.rmdir()


def test_resume_refuses_a_folder_no_search_created(tmp_path, glue_dir, capsys):
    out = tmp_path / "search"
    proof = tmp_path / "payload-ran"
    _crafted_pickle(out, proof)
    assert run_glue_hyper_search.main(_argv(glue_dir, out, "--resume")) == 2
    line = _one_error_line(capsys)
    assert f"{str(out)!r} has no {MARKER_FILE}" in line and "pickled" in line
    assert not proof.exists()
    # a marker copied from (or forged after) another search does not make it trusted
    other = tmp_path / "other"
    other.mkdir()
    petl.search.write_marker(other)
    (out / MARKER_FILE).write_text((other / MARKER_FILE).read_text())
    os.chmod(out / MARKER_FILE, 0o600)
    assert run_glue_hyper_search.main(_argv(glue_dir, out, "--resume")) == 2
    assert "created as" in _one_error_line(capsys) and not proof.exists()
    forged = json.loads((out / MARKER_FILE).read_text()) | {"folder": str(out.resolve())}
    (out / MARKER_FILE).write_text(json.dumps(forged))
    assert run_glue_hyper_search.main(_argv(glue_dir, out, "--resume")) == 2
    assert "was not signed with your search key" in _one_error_line(capsys) and not proof.exists()


@pytest.mark.parametrize("target", [".", MARKER_FILE, "ray/search/tuner.pkl", "ray/search"])
def test_resume_refuses_a_folder_others_can_write(tmp_path, glue_dir, capsys, target):
    out = tmp_path / "search"
    out.mkdir()
    petl.search.write_marker(out)
    proof = tmp_path / "payload-ran"
    _crafted_pickle(out, proof)
    petl.search.check_resumable(out)  # trusted as it stands
    path = out / target
    os.chmod(path, os.stat(path).st_mode | 0o020)
    assert run_glue_hyper_search.main(_argv(glue_dir, out, "--resume")) == 2
    line = _one_error_line(capsys)
    assert str(path.resolve()) in line and "writable by group or others" in line and "chmod go-w" in line, line
    assert not proof.exists()


def test_a_new_search_signs_its_folder_and_resume_gets_past_the_check(tmp_path, glue_dir, monkeypatch):
    from ray import tune

    out = tmp_path / "search"
    with pytest.raises(RayStarted):  # a new search: folder and marker are made, then Ray starts
        run_glue_hyper_search.main(_argv(glue_dir, out))
    marker = json.loads((out / MARKER_FILE).read_text())
    assert marker["folder"] == str(out.resolve()) and marker["uid"] == os.getuid() and len(marker["token"]) == 32
    assert os.stat(out / MARKER_FILE).st_mode & 0o077 == 0
    # an interrupted search left Ray's state behind; --resume must reach Tuner.restore on it
    (out / "ray" / "search").mkdir(parents=True)
    (out / "ray" / "search" / "tuner.pkl").write_bytes(pickle.dumps({"benign": True}))
    restored = []

    def fake_restore(path, **kwargs):
        restored.append(path)
        raise RayStarted

    monkeypatch.setattr("ray.init", lambda *a, **k: None)
    monkeypatch.setattr("ray.shutdown", lambda *a, **k: None)
    monkeypatch.setattr(tune.Tuner, "restore", fake_restore)
    with pytest.raises(RayStarted):
        run_glue_hyper_search.main(_argv(glue_dir, out, "--resume"))
    assert restored == [str(out.resolve() / "ray" / "search")]
    # and without --resume the old search is not silently mixed into a new one
    assert run_glue_hyper_search.main(_argv(glue_dir, out)) == 2


def test_trial_folders_are_named_by_ray_id_not_by_sampled_values():
    class Trial:
        trial_id = "a1b2c_00003"
        config = {"lora_layers": "../../escaped"}

    assert run_glue_hyper_search.trial_folder_name(Trial()) == "trial_a1b2c_00003"


def test_hyper_search_sh_bad_space_is_one_line_in_seconds(tmp_path):
    """The shell entry point, as a user runs it: no traceback, exit 2, no output folder."""
    space = _space(tmp_path, {"learning_rate": {"loguniform": [1e-4, 1e-2]}, "lora_rank": {"choice": []}})
    out = tmp_path / "search"
    env = {**os.environ, "SPACE": str(space), "OUTPUT_DIR": str(out), "METHOD": "lora", "PYTHON": sys.executable,
           "PETL_SEARCH_KEY_FILE": str(tmp_path / "key"), "OMP_NUM_THREADS": "1"}  # fmt: skip
    done = subprocess.run(["bash", str(REPO / "hyper_search.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [f"error: --search_space {str(space)!r}: lora_rank: choice needs a list of values, got []"]
    assert not out.exists()


def test_output_folder_that_is_or_lies_under_a_file(tmp_path, glue_dir, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me\n")
    assert run_glue_hyper_search.main(_argv(glue_dir, blocker)) == 2
    assert f"--output_dir {str(blocker)!r} is a file" in _one_error_line(capsys)
    assert run_glue_hyper_search.main(_argv(glue_dir, blocker / "search")) == 2
    assert f"--output_dir {str(blocker / 'search')!r} cannot be written" in _one_error_line(capsys)
    assert blocker.read_text() == "keep me\n"


def test_custom_data_needs_a_search_metric_and_a_contradicting_direction_is_refused(tmp_path, glue_dir, capsys):
    """Custom files: the metric depends on labels not yet read, so the search asks for it rather than
    optimise a metric no trial reports; --greater_is_better against the metric is refused up front."""
    data = tmp_path / "train.csv"
    data.write_text("s,label\na,0.5\nb,1.5\n")
    out = tmp_path / "search"
    custom = ["--train_file", str(data), "--validation_file", str(data), "--text_columns", "s", "--output_dir", str(out),
              "--model_name_or_path", "minilm-l6", "--method", "lora"]  # fmt: skip
    assert run_glue_hyper_search.main(custom) == 2
    assert "custom data files need --search_metric" in _one_error_line(capsys)
    assert run_glue_hyper_search.main(_argv(glue_dir, out, "--metric_for_best_model", "loss", "--greater_is_better", "true")) == 2
    assert "--greater_is_better true contradicts the selection metric 'loss'" in _one_error_line(capsys)
    assert not out.exists()


def test_an_empty_search_key_is_refused_and_a_new_one_is_written_whole(tmp_path, monkeypatch):
    """A key file cut short would sign markers with an empty secret: refused. A new key is written
    whole (private name, then linked into place) with owner-only permissions."""
    from petl.errors import PetlError
    from petl.search import _read_key

    monkeypatch.setenv("PETL_SEARCH_KEY_FILE", str(tmp_path / "search.key"))
    key = _read_key(create=True)
    assert len(key) == 64 and (tmp_path / "search.key").stat().st_mode & 0o777 == 0o600
    assert _read_key(create=True) == key and [p.name for p in tmp_path.iterdir()] == ["search.key"]
    (tmp_path / "search.key").write_text("")
    with pytest.raises(PetlError, match="holds no key"):
        _read_key(create=False)

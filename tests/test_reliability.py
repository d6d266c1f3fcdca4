"""Reliability and security: bad input ends in one readable line and writes nothing, the source model is never
touched, outputs appear whole or not at all, divergence stops on good weights, runs repeat exactly, and loading
never runs a folder's code or unpickles its weights.

Every case works on copies (tmp_path) of the session world, which it corrupts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unstar_trl.cli import main
from unstar_trl.io import UsageError, fingerprint, mark_output

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


# ---- helpers ----------------------------------------------------------------------------------------------------

def cli(argv, capsys) -> tuple[int, str]:
    """Run `unstar ARGV` in-process: (exit code, stderr). argparse errors exit through SystemExit."""
    capsys.readouterr()
    try:
        code = main([str(item) for item in argv])
    except SystemExit as error:
        code = error.code
    return code, capsys.readouterr().err.strip()


def assert_one_line_error(code, err: str, expected: str) -> None:
    """A non-zero exit whose last stderr line names the problem, and no traceback."""
    assert code not in (0, None), err
    assert "Traceback" not in err, err
    last = err.splitlines()[-1] if err else ""
    assert "error" in last and expected in last, err


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def edit_rows(path: Path, edit) -> None:
    rows = read_rows(path)
    edit(rows)
    write_rows(path, rows)


def leftovers(folder: Path, name: str) -> list[Path]:
    """Staging or backup folders that atomic_directory leaves beside `folder/name` when it fails to clean up."""
    return sorted(folder.glob(f".{name}.*"))


@pytest.fixture
def earlier_output(tmp_path) -> Path:
    """tmp_path/out as an earlier `unstar unlearn` left it (a report, a file of its own, and the marker that lists
    them)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("an earlier run")
    (out / "unlearn_report.json").write_text("{}")
    mark_output(out, "unlearn")
    return out


@pytest.fixture
def data(world_dir, tmp_path) -> Path:
    """A copy of the world's splits, free to corrupt."""
    return Path(shutil.copytree(world_dir / "data", tmp_path / "data"))


@pytest.fixture
def model(world_dir, tmp_path) -> Path:
    """A copy of the world's model folder, free to corrupt."""
    return Path(shutil.copytree(world_dir / "model", tmp_path / "model"))


def without_tokenizer(model: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).unlink()


def pickled_weights_only(model: Path) -> None:
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()


def with_remote_code(model: Path) -> Path:
    """config.json names custom code (auto_map, a model type transformers does not know); importing it would write
    the returned marker file."""
    marker = model.parent / "REMOTE_CODE_RAN"
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="evil_llama", auto_map={"AutoConfig": "evil.EvilConfig",
                                                    "AutoModelForCausalLM": "evil.EvilModel"})
    (model / "config.json").write_text(json.dumps(config))
    (model / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'evil_llama'\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    return marker


# ---- bad input through `unstar unlearn`: one line, non-zero exit, nothing written -----------------------------

def _missing_answer(d):
    edit_rows(d / "forget.jsonl", lambda rows: rows[2].pop("answer"))


def _empty_question(d):
    edit_rows(d / "forget.jsonl", lambda rows: rows[0].update(question="  "))


def _numeric_answer(d):
    edit_rows(d / "retain.jsonl", lambda rows: rows[1].update(answer=42))


def _paraphrases_not_a_list(d):
    edit_rows(d / "forget.jsonl", lambda rows: rows[0].update(paraphrased_questions="Who?"))


def _duplicate_id(d):
    edit_rows(d / "retain.jsonl", lambda rows: rows[4].update(id=rows[3]["id"]))


def _forget_retain_same_id(d):
    forget = read_rows(d / "forget.jsonl")
    edit_rows(d / "retain.jsonl", lambda rows: rows.append(forget[0]))


def _forget_retain_same_fact(d):
    forget = read_rows(d / "forget.jsonl")
    edit_rows(d / "retain.jsonl", lambda rows: rows.append({**forget[1], "id": "another-id"}))


def _empty_forget(d):
    (d / "forget.jsonl").write_text("")


def _sibling_missing(d):
    edit_rows(d / "targeted.jsonl", lambda rows: rows[0]["siblings"].append("Nobody:at_all"))


def _truncated(d):
    text = (d / "forget.jsonl").read_text()
    (d / "forget.jsonl").write_text(text[: len(text) // 2])


def _unreadable(d):  # a dangling link: unreadable even for root, which chmod 000 does not stop
    (d / "forget.jsonl").unlink()
    (d / "forget.jsonl").symlink_to(d / "gone.jsonl")


def _not_utf8(d):
    (d / "retain.jsonl").write_bytes(b'{"id": "\xff\xfe"}\n')


def _not_an_object(d):
    with (d / "neighbor.jsonl").open("a") as handle:
        handle.write('["a", "list"]\n')


def _beyond_positions(d):
    edit_rows(d / "forget.jsonl", lambda rows: rows[0].update(question="very " * 140 + "long question?"))


def _answer_beyond_positions(d):  # 5000 characters: probing it used to generate far past the model's positions
    edit_rows(d / "retain.jsonl", lambda rows: rows[0].update(answer=("Rivermoor " * 500)[:5000]))


DATA_CASES = [  # (corruption of the data copy, words the error line must hold, also a DataError of the Python API)
    pytest.param(_missing_answer, "forget.jsonl row 3: field 'answer' is missing", True, id="missing-field"),
    pytest.param(_empty_question, "forget.jsonl row 1: field 'question' is empty", True, id="empty-field"),
    pytest.param(_numeric_answer, "retain.jsonl row 2: field 'answer' must be a string", True, id="non-string"),
    pytest.param(_paraphrases_not_a_list, "'paraphrased_questions' must be a list", True, id="non-list"),
    pytest.param(_duplicate_id, "retain.jsonl row 5: field 'id' repeats", True, id="duplicate-id"),
    pytest.param(_forget_retain_same_id, "is also in the forget set", True, id="overlap-id"),
    pytest.param(_forget_retain_same_fact, "repeat a fact of the forget set", True, id="overlap-fact"),
    pytest.param(_empty_forget, "the forget set is empty", True, id="empty-forget"),
    pytest.param(_sibling_missing, "names ids that no split holds: Nobody:at_all", True, id="sibling-missing"),
    pytest.param(_truncated, "forget.jsonl row", True, id="truncated-jsonl"),
    pytest.param(_unreadable, "forget.jsonl: cannot read", True, id="unreadable-jsonl"),
    pytest.param(_not_utf8, "retain.jsonl row 1: not UTF-8 text", True, id="not-utf8"),
    pytest.param(_not_an_object, "expected a JSON object, got a list", True, id="row-not-object"),
    pytest.param(_beyond_positions, "more than the model's 256 positions", False, id="question-beyond-positions"),
    pytest.param(_answer_beyond_positions, "more than the model's 256 positions", False, id="answer-beyond-positions"),
]


@pytest.mark.parametrize("corrupt, expected, api", DATA_CASES)
def test_bad_data_is_one_line_and_writes_nothing(world_dir, data, tmp_path, capsys, corrupt, expected, api):
    from unstar_trl.data import DataError, load_unlearning_data

    corrupt(data)
    out = tmp_path / "out"
    code, err = cli(["unlearn", "--method", "grad_ascent", "--model_name_or_path", world_dir / "model", "--data_dir", data,
                     "--output_dir", out, "--max_steps", 1], capsys)
    assert_one_line_error(code, err, expected)
    assert not out.exists() and not leftovers(tmp_path, "out")
    if api:
        with pytest.raises(DataError, match="^" + re.escape(str(data))):
            load_unlearning_data(data)


@pytest.mark.parametrize("argv, expected", [
    pytest.param(["--forget_split", "nope"], "unknown split 'nope'; available:", id="unknown-split"),
    pytest.param(["--targeted", "true", "--targeted_split", "nope"], "unknown split 'nope'", id="unknown-targeted-split"),
    pytest.param(["--learning_rte", "0.1"], "['--learning_rte', '0.1']", id="unknown-flag"),
    pytest.param(["--max_steps", "two"], "argument --max_steps/--max-steps: invalid int value: 'two'", id="bad-flag-value"),
    pytest.param(["--learning_r", "0.1"], "['--learning_r', '0.1']", id="abbreviated-flag"),
    pytest.param(["--data_dir", "/no/such/data"], "/no/such/data: no such file or folder", id="no-data-dir"),
])
def test_bad_arguments_are_one_line_and_write_nothing(world_dir, tmp_path, capsys, argv, expected):
    out = tmp_path / "out"
    code, err = cli(["unlearn", "--method", "grad_ascent", "--model_name_or_path", world_dir / "model", "--data_dir", world_dir / "data",
                     "--output_dir", out, "--max_steps", 1, *argv], capsys)
    assert_one_line_error(code, err, expected)
    assert len(err.splitlines()) == 1, err  # no usage text above it
    assert not out.exists() and not leftovers(tmp_path, "out")


def test_abbreviated_flags_are_refused(tmp_path, capsys):
    code, err = cli(["bench", "--output-d", tmp_path / "out", "--quick"], capsys)
    assert code != 0 and "--output-d" in err and not (tmp_path / "out").exists()


def _recipe_not_a_mapping(tmp_path, model):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("- method: grad_ascent\n")
    return ["--config", recipe], "must be a YAML mapping"


def _recipe_unknown_key(tmp_path, model):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method: grad_ascent\nlearning_rate: 0.001\nforget_wieght: 2\n")
    return ["--config", recipe], "unknown recipe key 'forget_wieght'"


def _output_is_the_model(tmp_path, model):
    return ["--output_dir", model], "overlaps the input"


def _output_is_the_data(tmp_path, model):
    return ["--output_dir", tmp_path / "data"], "overlaps the input"


def _no_tokenizer(tmp_path, model):
    without_tokenizer(model)
    return [], "holds no tokenizer"


def _pickled_weights(tmp_path, model):
    pickled_weights_only(model)
    return [], "never unpickles weights"


@pytest.mark.parametrize("setup", [_recipe_not_a_mapping, _recipe_unknown_key, _output_is_the_model,
                                   _output_is_the_data, _no_tokenizer, _pickled_weights])
def test_bad_recipe_model_or_output_and_the_model_is_untouched(data, model, tmp_path, capsys, setup):
    extra, expected = setup(tmp_path, model)
    before = fingerprint(model), fingerprint(data)
    out = tmp_path / "out"
    code, err = cli(["unlearn", "--method", "grad_ascent", "--model_name_or_path", model, "--data_dir", data, "--output_dir", out,
                     "--max_steps", 1, *extra], capsys)
    assert_one_line_error(code, err, expected)
    assert not out.exists() and not leftovers(tmp_path, "out")
    assert (fingerprint(model), fingerprint(data)) == before


def test_a_failed_run_leaves_the_previous_output_as_it_was(world_dir, data, tmp_path, capsys, earlier_output):
    out, before = earlier_output, fingerprint(earlier_output)
    # fails inside the staging folder, after the model is loaded and probed: no prompt fits in 8 tokens
    code, err = cli(["unlearn", "--method", "grad_ascent", "--model_name_or_path", world_dir / "model", "--data_dir", data,
                     "--output_dir", out, "--max_steps", 1, "--max_length", 8], capsys)
    assert_one_line_error(code, err, "max_length")
    assert fingerprint(out) == before and not leftovers(tmp_path, "out")


def test_debug_shows_the_traceback(world_dir, data, tmp_path):
    from unstar_trl.data import DataError

    _duplicate_id(data)
    with pytest.raises(DataError, match="repeats"):
        main(["--debug", "unlearn", "--method", "grad_ascent", "--model_name_or_path", str(world_dir / "model"), "--data_dir", str(data),
              "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_bad_data_in_a_subprocess(world_dir, data, tmp_path):
    _truncated(data)
    done = subprocess.run([sys.executable, "-m", "unstar_trl.cli", "unlearn", "--method", "grad_ascent", "--model_name_or_path",
                           str(world_dir / "model"), "--data_dir", str(data), "--output_dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert_one_line_error(done.returncode, done.stderr.strip(), "forget.jsonl row")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("unstar: error: ")
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path, "out")


# ---- handled, not an error --------------------------------------------------------------------------------------

def test_a_tokenizer_without_pad_token_is_handled(model, data, tmp_path, capsys):
    config = json.loads((model / "tokenizer_config.json").read_text())
    del config["pad_token"]
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    code, err = cli(["unlearn", "--method", "grad_ascent", "--model_name_or_path", model, "--data_dir", data, "--output_dir", out,
                     "--max_steps", 1], capsys)
    assert code == 0, err
    assert json.loads((out / "unlearn_report.json").read_text())["steps"] == 1


def test_an_unknown_relation_is_data_not_an_error(world_dir, data):
    """Relations are free text (TOFU's is "tofu_qa"): a record with one the world lacks, and no rationale, loads and
    gets template anti-samples without a rationale."""
    from unstar_trl.method.generators import TemplateGenerator
    from unstar_trl.data import load_unlearning_data

    edit_rows(data / "forget.jsonl", lambda rows: rows[0].update(relation="favourite_colour", rationale=None))
    record = load_unlearning_data(data).forget[0]
    assert record["relation"] == "favourite_colour"
    samples = TemplateGenerator(n_wrong_answers=2).generate([record])
    assert samples and all(s.rationale == "" and s.wrong_answer != record["answer"] for s in samples)


# ---- bad input through `unstar eval` and `unstar world` --------------------------------------------------------

@pytest.mark.parametrize("setup, argv, expected", [
    pytest.param(None, ["--model", "{tmp}/nothere"], "nothere: no such model folder", id="no-model"),
    pytest.param(None, ["--tasks", "unstar_nope"], "no unstar task matches 'unstar_nope'", id="unknown-task"),
    pytest.param(None, ["--metadata", "{bad"], "argument --metadata: not valid JSON", id="bad-metadata-json"),
    pytest.param(None, ["--data-dir", "{tmp}/nodata"], "nodata: no such file or folder", id="no-data-dir"),
    pytest.param(without_tokenizer, [], "holds no tokenizer", id="no-tokenizer"),
    pytest.param(pickled_weights_only, [], "never unpickles weights", id="pickled-weights"),
])
def test_eval_bad_input(model, data, tmp_path, capsys, setup, argv, expected):
    if setup:
        setup(model)
    output = tmp_path / "results.json"
    argv = [item.replace("{tmp}", str(tmp_path)) for item in argv]
    code, err = cli(["eval", "--model", model, "--data-dir", data, "--tasks", "unstar_forget_qa", "--limit", 2,
                     "--output", output, *argv], capsys)
    assert_one_line_error(code, err, expected)
    assert not output.exists()


@pytest.mark.parametrize("argv, expected", [
    pytest.param(["--people", "3"], "people must be at least 10, got 3", id="too-few-people"),
    pytest.param(["--people", "100000"], "must be at most", id="too-many-people"),
    pytest.param(["--people", "ten"], "invalid int value: 'ten'", id="people-not-a-number"),
])
def test_world_bad_input(tmp_path, capsys, argv, expected):
    code, err = cli(["world", "--output-dir", tmp_path / "world", *argv], capsys)
    assert_one_line_error(code, err, expected)
    assert not (tmp_path / "world").exists() and not leftovers(tmp_path, "world")


def test_world_bad_input_in_a_subprocess(tmp_path):
    done = subprocess.run([sys.executable, "-m", "unstar_trl.cli", "world", "--output-dir", str(tmp_path / "w"),
                           "--people", "2"], capture_output=True, text=True, timeout=300, env=ENV)
    assert_one_line_error(done.returncode, done.stderr.strip(), "people must be at least 10")
    assert not (tmp_path / "w").exists()


# ---- safe loading -----------------------------------------------------------------------------------------------

def test_custom_code_is_never_run(model, data, tmp_path, capsys, monkeypatch):
    from unstar_trl.models import load_model
    from unstar_trl.method.trainers import GradientAscentConfig, GradientAscentTrainer

    marker = with_remote_code(model)
    monkeypatch.setattr("builtins.input", lambda *args: "y")  # a user who would say yes if transformers asked
    code, err = cli(["unlearn", "--method", "grad_ascent", "--model_name_or_path", model, "--data_dir", data, "--output_dir", tmp_path / "out",
                     "--max_steps", 1], capsys)
    assert_one_line_error(code, err, "own code")
    code, err = cli(["eval", "--model", model, "--data-dir", data, "--tasks", "unstar_forget_qa", "--limit", 1],
                    capsys)
    assert_one_line_error(code, err, "own code")
    with pytest.raises(UsageError, match="own code"):
        load_model(model)
    with pytest.raises(UsageError, match="own code"):
        GradientAscentTrainer(str(model), GradientAscentConfig(output_dir=str(tmp_path / "api")), train_dataset=[])
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_pickled_weights_are_refused_by_the_python_api(model, tmp_path):
    from unstar_trl.models import load_model
    from unstar_trl.method.trainers import GradientAscentConfig, GradientAscentTrainer

    pickled_weights_only(model)
    with pytest.raises(UsageError, match="never unpickles"):
        load_model(model)
    with pytest.raises(UsageError, match="never unpickles"):
        GradientAscentTrainer(str(model), GradientAscentConfig(output_dir=str(tmp_path / "api")), train_dataset=[])


# ---- the source model is never touched; outputs are atomic -------------------------------------------------------

def test_the_source_model_is_untouched_by_a_run_that_succeeds_and_one_that_fails(model, data, tmp_path, capsys):
    before = fingerprint(model)
    code, err = cli(["unlearn", "--method", "grad_ascent", "--model_name_or_path", model, "--data_dir", data, "--output_dir", tmp_path / "ok",
                     "--max_steps", 2], capsys)
    assert code == 0, err
    assert fingerprint(model) == before
    _beyond_positions(data)
    code, err = cli(["unlearn", "--method", "grad_ascent", "--model_name_or_path", model, "--data_dir", data, "--output_dir",
                     tmp_path / "failed", "--max_steps", 2], capsys)
    assert code != 0 and not (tmp_path / "failed").exists()
    assert fingerprint(model) == before


def test_an_exception_mid_training_leaves_the_previous_output(world_dir, tmp_path, capsys, monkeypatch,
                                                                 earlier_output):
    from unstar_trl.method.trainers import GradientAscentTrainer

    out, before = earlier_output, fingerprint(earlier_output)
    seen = {}

    def broken_train(self, *args, **kwargs):
        seen["staging"] = Path(self.args.output_dir).parent
        (seen["staging"] / "model.safetensors").write_bytes(b"half a model")  # a partial write to clean up
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(GradientAscentTrainer, "train", broken_train)
    code, err = cli(["unlearn", "--method", "grad_ascent", "--model_name_or_path", world_dir / "model", "--data_dir", world_dir / "data",
                     "--output_dir", out, "--max_steps", 1], capsys)
    assert_one_line_error(code, err, "disk on fire")
    assert seen["staging"].parent == tmp_path and seen["staging"] != out
    assert not seen["staging"].exists() and not leftovers(tmp_path, "out")
    assert fingerprint(out) == before


STEP_DONE = re.compile(r"\b[1-9]\d*/100000\b")
"""The step bar of a run of 100000 steps, past its first step."""


def running_leftovers(out: Path) -> list[str]:
    """The kinds of file a run into `out` keeps beside it while it runs (or after it was killed): its lock file and
    its staging folder."""
    return sorted(path.name.split("-")[0] for path in leftovers(out.parent, out.name))


def start_long_training(world_dir, out: Path, log: Path) -> subprocess.Popen:
    """`unstar unlearn` into `out` for far longer than any test, returned once its first step is logged (with
    its staging folder beside `out`)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "unstar_trl.cli", "unlearn", "--method", "grad_ascent", "--model_name_or_path", str(world_dir / "model"),
         "--data_dir", str(world_dir / "data"), "--output_dir", str(out), "--max_steps", "100000",
         "--learning_rate", "1e-6", "--max_forget_nll", "1000"],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env={**ENV, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 240
    while not STEP_DONE.search(log.read_text()) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if process.poll() is not None or not STEP_DONE.search(log.read_text()):
        process.kill()
        pytest.fail("training did not start in time: " + log.read_text()[-3000:])
    assert running_leftovers(out) == [f".{out.name}.lock", f".{out.name}.tmp"]  # its lock, its staging folder
    return process


def test_sigterm_mid_training_leaves_the_previous_output(world_dir, tmp_path, earlier_output):
    out, before = earlier_output, fingerprint(earlier_output)
    process = start_long_training(world_dir, out, tmp_path / "log.txt")
    try:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    finally:
        process.kill()
    assert code != 0
    assert fingerprint(out) == before
    assert not leftovers(tmp_path, "out"), "the staging folder was left behind"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_stopping_a_world_build_ends_the_side_processes_training_its_models(tmp_path, stop):
    """`unstar world` trains its two models in processes of their own: stopped, it ends them with it, at once (not
    when their training is done); SIGTERM also leaves no staging folder or lock (after SIGKILL, the next run
    removes them)."""
    from unstar_trl.testbed import world_folder

    if world_folder.cores() < 2 or sys.platform != "linux":
        pytest.skip("one core: the models are trained in turn, in the process itself; /proc: Linux")
    out, log = tmp_path / "world", tmp_path / "log.txt"
    process = subprocess.Popen([sys.executable, "-m", "unstar_trl.cli", "world", "--output-dir", str(out),
                                "--people", "10", "--epochs", "200"], stdout=log.open("w"), stderr=subprocess.STDOUT,
                               env={**ENV, "PYTHONUNBUFFERED": "1"})
    children = []
    try:
        deadline = time.monotonic() + 240
        while not re.search(r"\b[1-9]\d*/\d+ \[", log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.2)  # the knowledge model's step bar: both side processes train
        children = _children(process.pid)
        assert len(children) >= 2, log.read_text()[-2000:]
        process.send_signal(stop)
        assert process.wait(timeout=30) != 0
        deadline = time.monotonic() + 10
        while any(map(_running, children)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in children if _running(pid)] == []
    finally:
        process.kill()
        for pid in filter(_running, children):  # what a failed check left
            os.kill(pid, signal.SIGKILL)
    assert not out.exists()
    if stop == signal.SIGTERM:
        assert not leftovers(tmp_path, "world")


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux)."""
    return [int(stat.parent.name) for stat in Path("/proc").glob("[0-9]*/stat") if (_stat(stat) or [0, 0])[1] == pid]


def _running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie waiting to be reaped."""
    fields = _stat(Path(f"/proc/{pid}/stat"))
    return fields is not None and fields[0] not in ("Z", "X")


def _stat(path: Path) -> list | None:
    """A process's state and parent pid from its /proc stat file (None when it is gone)."""
    try:
        state, parent = path.read_text().rsplit(")", 1)[1].split()[:2]
        return [state, int(parent)]
    except (OSError, ValueError):
        return None


def test_the_next_run_removes_the_staging_folder_of_a_killed_one(world_dir, tmp_path, capsys, earlier_output):
    out, before = earlier_output, fingerprint(earlier_output)
    process = start_long_training(world_dir, out, tmp_path / "log.txt")
    process.kill()  # SIGKILL: nothing runs on the way out
    process.wait(timeout=60)
    assert fingerprint(out) == before and running_leftovers(out) == [".out.lock", ".out.tmp"]
    code, err = cli(["unlearn", "--method", "grad_ascent", "--model_name_or_path", world_dir / "model", "--data_dir", world_dir / "data",
                     "--output_dir", out, "--max_steps", 1], capsys)
    assert code == 0, err
    assert (out / "model.safetensors").is_file() and not (out / "previous.txt").exists()
    assert not leftovers(tmp_path, "out")


def test_unstar_stopped_by_sigterm_after_a_round_resumes_to_the_same_end(world_dir, tmp_path, capsys):
    """One uninterrupted run and one stopped after its first round, then resumed: same anti-samples, round log,
    report and weights (a CPU run repeats exactly, so the tolerance is float noise)."""
    import torch
    from safetensors.torch import load_file

    recipe = ["unlearn", "--config", RECIPES / "world_unstar.yaml", "--model_name_or_path", world_dir / "model",
              "--data_dir", world_dir / "data", "--save_strategy", "epoch", "--num_train_epochs", 1,
              "--learning_rate", "2e-4", "--max_rounds", 3]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert cli([*recipe, "--output_dir", whole], capsys)[0] == 0
    first_round = tmp_path / "resumed.checkpoints" / "round-1"
    process = subprocess.Popen([sys.executable, "-m", "unstar_trl.cli", *map(str, recipe), "--output_dir",
                                str(resumed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        deadline = time.monotonic() + 300
        while not first_round.is_dir() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) != 0, "the run ended before it could be stopped"
    finally:
        process.kill()
    assert not resumed.exists() and not (tmp_path / "resumed.checkpoints" / "round-2").exists()
    code, err = cli([*recipe, "--output_dir", resumed, "--resume_from_checkpoint", "true"], capsys)
    assert code == 0, err
    assert (resumed / "anti_samples.jsonl").read_text() == (whole / "anti_samples.jsonl").read_text()
    round_logs = [[_without_timing(json.loads(line)) for line in (folder / "rounds.jsonl").read_text().splitlines()]
                  for folder in (whole, resumed)]
    assert round_logs[1] == round_logs[0]
    reports = [json.loads((folder / "unlearn_report.json").read_text()) for folder in (whole, resumed)]
    assert reports[0]["rounds"] >= 2, "too few rounds to stop between them"
    for key in ("before", "after", "rounds", "round_log", "steps", "trained_tokens"):
        assert _without_timing(reports[1][key]) == _without_timing(reports[0][key]), key
    assert [entry["loss"] for entry in reports[1]["history"]] == pytest.approx(
        [entry["loss"] for entry in reports[0]["history"]], rel=1e-5)
    weights = [load_file(folder / "model.safetensors") for folder in (whole, resumed)]
    assert all(torch.allclose(weights[0][name], weights[1][name], atol=1e-6) for name in weights[0])
    assert not any(tmp_path.glob("*.checkpoints")), "checkpoints of a finished run were left behind"


def test_resuming_from_a_checkpoint_of_another_run_is_refused(world_dir, tmp_path, capsys):
    from unstar_trl.data import load_unlearning_data
    from unstar_trl.method.trainers import AntiSampleConfig, AntiSampleTrainer
    from unstar_trl.method.trainers.unstar_checkpoints import save_round_checkpoint

    data = load_unlearning_data(world_dir / "data")
    config = AntiSampleConfig(output_dir=str(tmp_path / "kept"), save_strategy="epoch", max_rounds=1, seed=0,
                              disable_tqdm=True)
    trainer = AntiSampleTrainer(str(world_dir / "model"), config, train_dataset=data.forget,
                                retain_dataset=data.retain_train)  # what the CLI trains on
    trainer.train()
    assert not list((tmp_path / "kept").glob("round-*"))  # a run removes its round checkpoints when it ends
    checkpoint = save_round_checkpoint(trainer)  # one left behind, as by a run that was stopped
    assert (checkpoint / "unstar_state.json").is_file()
    out = tmp_path / "out"
    code, err = cli(["unlearn", "--config", RECIPES / "world_unstar.yaml", "--model_name_or_path",
                     world_dir / "model", "--data_dir", world_dir / "data", "--output_dir", out, "--max_rounds", 1,
                     "--seed", 1, "--resume_from_checkpoint", tmp_path / "kept"], capsys)
    assert_one_line_error(code, err, "is a checkpoint of another run: its seed is 0, this run's is 1")
    assert not out.exists() and not leftovers(tmp_path, "out")


# ---- divergence ---------------------------------------------------------------------------------------------------

def test_divergence_stops_with_one_line_before_updating_the_weights_that_went_bad(world_dir, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    from unstar_trl.data import load_records
    from unstar_trl.method.trainers import GradientAscentConfig, GradientAscentTrainer
    from unstar_trl.method.trainers.losses import nll

    out = tmp_path / "out"
    forget = load_records(world_dir / "data", split="forget")
    # one batch holds the whole forget set, so each step's forget_nll is that of the weights it started from; the
    # recipe's stopping rule probes after the 20 steps only, so that only the divergence guard can stop the run
    code, err = cli(["unlearn", "--config", RECIPES / "world_grad_ascent.yaml", "--model_name_or_path",
                     world_dir / "model", "--data_dir", world_dir / "data", "--output_dir", out,
                     "--learning_rate", "0.1", "--max_steps", 20, "--per_device_train_batch_size", len(forget),
                     "--forget_probe_every", 1000],
                    capsys)
    assert_one_line_error(code, err, "training diverged after step")
    report = json.loads((out / "unlearn_report.json").read_text())
    diverged = report["diverged"]
    assert "exceeds max_forget_nll" in diverged["reason"] or "nan" in diverged["reason"]
    assert report["steps"] == diverged["step"] >= 1 and f"wrote the weights of step {diverged['step']}" in err
    saved = load_file(out / "model.safetensors")
    assert all(tensor.isfinite().all() for tensor in saved.values())
    # the saved weights are those of `step`: the first whose forget NLL crossed the bound, none applied after it
    trainer = GradientAscentTrainer(str(out), GradientAscentConfig(output_dir=str(tmp_path / "check")),
                                    train_dataset=forget)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])["forget"]
    with torch.no_grad():
        model = trainer.model.eval()
        held = nll(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                   batch["labels"]).item()
    logged = {entry["step"]: entry["forget_nll"] for entry in report["history"]}
    if "exceeds max_forget_nll" in diverged["reason"]:
        assert held > 30.0 and float(diverged["reason"].split()[1]) == pytest.approx(held, abs=0.06)
    assert logged[diverged["step"]] <= 30.0


# ---- determinism ----------------------------------------------------------------------------------------------------

def _without_timing(value):
    if isinstance(value, dict):
        return {key: _without_timing(item) for key, item in value.items()
                if key not in ("seconds", "time_split", "train_runtime", "train_samples_per_second", "train_steps_per_second")}
    if isinstance(value, list):
        return [_without_timing(item) for item in value]
    return value


@pytest.mark.parametrize("method, extra", [
    ("grad_diff", ["--max_steps", "2"]),
    ("unstar", ["--max_rounds", "1", "--max_steps", "2", "--follow_ups", "0"]),
])
def test_same_seed_same_run(world_dir, tmp_path, capsys, method, extra):
    from unstar_trl.method.trainers import METHODS

    if method not in METHODS:
        pytest.skip(f"{method} is not a method yet")
    outputs = []
    for name in ("first", "second"):
        out = tmp_path / name
        code, err = cli(["unlearn", "--config", RECIPES / f"world_{method}.yaml", "--model_name_or_path",
                         world_dir / "model", "--data_dir", world_dir / "data", "--output_dir", out,
                         "--seed", 3, *extra], capsys)
        assert code == 0, err
        outputs.append(out)
    first, second = (json.loads((out / "unlearn_report.json").read_text()) for out in outputs)
    assert first["steps"] > 0 and first["history"]
    configs = [report.pop("config") for report in (first, second)]
    assert {key for key in configs[0] if configs[0][key] != configs[1][key]} <= {"output_dir", "logging_dir"}
    assert _without_timing(first) == _without_timing(second)
    assert (outputs[0] / "model.safetensors").read_bytes() == (outputs[1] / "model.safetensors").read_bytes()
    if method == "unstar":
        anti_samples = [(out / "anti_samples.jsonl").read_text() for out in outputs]
        assert anti_samples[0] and anti_samples[0] == anti_samples[1]


def test_a_folder_of_other_files_is_never_replaced(world_dir, tmp_path, capsys):
    """An output_dir that holds someone's files (and no earlier report) is refused, and its files stay."""
    from unstar_trl.cli import main

    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "thesis.tex").write_text("years of work")
    code = main(["unlearn", "--config", str(RECIPES / "world_grad_diff.yaml"), "--model_name_or_path",
                 str(world_dir / "model"), "--data_dir", str(world_dir / "data"), "--output_dir", str(keep),
                 "--max_steps", "1"])
    assert code != 0 and "not an earlier output" in capsys.readouterr().err
    assert main(["world", "--output-dir", str(keep), "--people", "10"]) != 0
    assert [path.name for path in keep.iterdir()] == ["thesis.tex"]
    assert (keep / "thesis.tex").read_text() == "years of work"

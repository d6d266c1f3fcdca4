"""Reliability and security, round two: no entry point runs a folder's code or unpickles weights, outputs never land
in inputs or over files, baselines resume only their own checkpoints, metadata typos are refused, runs that would
measure nothing are refused or warned about, and failures come early, in one line, without debris.

Every case works on copies (tmp_path) of the session world, which it corrupts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_reliability import (ENV, RECIPES, assert_one_line_error, cli, edit_rows, leftovers, pickled_weights_only,
                              read_rows, start_long_training, with_remote_code)
from test_reliability import data, earlier_output, model  # noqa: F401 (fixtures: copies of the world to spoil)
from test_tasks import utils as task_utils

from unstar_trl.io import UsageError, fingerprint

UNLEARN = ["unlearn", "--method", "grad_ascent", "--max_steps", 1]


@pytest.fixture
def notes(tmp_path) -> Path:
    """A file of the user's, which no output may replace or move aside."""
    path = tmp_path / "notes.txt"
    path.write_text("my notes")
    return path


@pytest.fixture
def nothing_loads(monkeypatch):
    """Make loading a model or a tokenizer fail loudly: a refusal that comes before any work never gets there."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")

    for auto_class in (AutoModelForCausalLM, AutoTokenizer):
        monkeypatch.setattr(auto_class, "from_pretrained", load)


def trapped_pickle_only(model: Path) -> Path:
    """`pickled_weights_only`, plus an object whose unpickling writes the returned marker file."""
    import torch

    marker = model.parent / "PICKLE_RAN"
    pickled_weights_only(model)
    weights = torch.load(model / "pytorch_model.bin", weights_only=True)
    torch.save({**weights, "trap": _Trap(str(marker))}, model / "pytorch_model.bin")
    return marker


class _Trap:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('unpickled')",)


def with_remote_tokenizer(model: Path) -> Path:
    """tokenizer_config.json names a tokenizer class in the folder's own code; importing it writes the marker."""
    marker = model.parent / "TOKENIZER_CODE_RAN"
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": ["evil_tokenizer.EvilTokenizer", None]})
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    (model / "evil_tokenizer.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PreTrainedTokenizerFast\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    return marker


def world_with_model(world_dir: Path, tmp_path: Path, spoil) -> tuple[Path, Path]:
    """A copy of the world whose model `spoil` made unsafe: (world folder, the marker its code would write)."""
    world = Path(shutil.copytree(world_dir, tmp_path / "bad_world"))
    return world, spoil(world / "model")


# ---- item 1: no entry point runs a folder's code or unpickles ------------------------------------------------------

@pytest.mark.parametrize("spoil, expected", [
    pytest.param(with_remote_code, "own code", id="config-auto-map"),
    pytest.param(with_remote_tokenizer, "own code", id="tokenizer-auto-map"),
    pytest.param(trapped_pickle_only, "never unpickles", id="pickle-only"),
])
def test_no_entry_point_runs_a_folders_code_or_unpickles(world_dir, tmp_path, capsys, monkeypatch, spoil, expected):
    from unstar_trl.evaluation.lm_eval_tasks import evaluate_model
    from unstar_trl.method.trainers import GradientAscentConfig, GradientAscentTrainer

    monkeypatch.setattr("builtins.input", lambda *args: "y")  # a user who would say yes if transformers asked
    world, marker = world_with_model(world_dir, tmp_path, spoil)
    bad, good, data = world / "model", world_dir / "model", world_dir / "data"
    runs = {
        "unlearn": [*UNLEARN, "--model_name_or_path", bad, "--data_dir", data, "--output_dir", tmp_path / "o1"],
        "teacher": ["unlearn", "--model_name_or_path", good, "--data_dir", data, "--output_dir", tmp_path / "o2",
                    "--generator", bad, "--max_rounds", 1, "--max_steps", 1],
        "eval": ["eval", "--model", bad, "--data-dir", data, "--tasks", "unstar_forget_qa", "--limit", 1],
        "bench": ["bench", "--world", world, "--methods", "grad_ascent", "--quick", "--output-dir", tmp_path / "b"],
    }
    for name, argv in runs.items():
        code, err = cli(argv, capsys)
        assert_one_line_error(code, err, expected)
    with pytest.raises(UsageError, match=expected):
        GradientAscentTrainer(str(bad), GradientAscentConfig(output_dir=str(tmp_path / "api")), train_dataset=[])
    with pytest.raises(UsageError, match=expected):
        evaluate_model(bad, tasks=["unstar_forget_qa"], data_dir=data, limit=1)
    assert not marker.exists()
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "api"))


def test_a_pickled_adapter_is_never_unpickled(world_dir, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    from unstar_trl.models import load_model

    model, _ = load_model(world_dir / "model")
    adapter = tmp_path / "adapter"
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(
        adapter, safe_serialization=False)
    assert (adapter / "adapter_model.bin").is_file()
    code, err = cli(["eval", "--model", world_dir / "model", "--adapter", adapter, "--data-dir", world_dir / "data",
                     "--tasks", "unstar_forget_qa", "--limit", 1], capsys)
    assert_one_line_error(code, err, "no adapter_model.safetensors (unstar never unpickles weights")


# ---- item 2: eval never writes into its inputs ---------------------------------------------------------------------

@pytest.mark.parametrize("output, expected", [
    pytest.param("model/config.json", "--output {tmp}/model/config.json overlaps the input", id="a-model-file"),
    pytest.param("model/results.json", "overlaps the input", id="inside-the-model"),
    pytest.param("data/results.json", "overlaps the input", id="inside-the-data"),
    pytest.param("model", "output file {tmp}/model is a folder", id="the-model-folder"),
    pytest.param("somewhere", "output file {tmp}/somewhere is a folder", id="a-folder"),
    pytest.param("notes.txt/results.json", "notes.txt is a file, not a folder", id="under-a-file"),
])
def test_eval_output_is_refused_before_any_work(model, data, notes, tmp_path, capsys, nothing_loads, output,
                                                expected):
    (tmp_path / "somewhere").mkdir()
    before = fingerprint(model), fingerprint(data), notes.read_text()
    code, err = cli(["eval", "--model", model, "--data-dir", data, "--tasks", "unstar_forget_qa", "--limit", 1,
                     "--output", tmp_path / output], capsys)
    assert_one_line_error(code, err, expected.format(tmp=tmp_path))
    assert (fingerprint(model), fingerprint(data), notes.read_text()) == before
    assert not list((tmp_path / "somewhere").iterdir()) and not list(tmp_path.glob(".*"))


# ---- item 3 (and 8): an output folder that is a file, a link or under a file --------------------------------------

def _unlearn_into(world_dir, out):
    return [*UNLEARN, "--model_name_or_path", world_dir / "model", "--data_dir", world_dir / "data",
            "--output_dir", out]


def _world_into(world_dir, out):
    return ["world", "--output-dir", out, "--people", 10, "--epochs", 1]


def _bench_into(world_dir, out):
    return ["bench", "--world", world_dir, "--methods", "grad_ascent", "--quick", "--output-dir", out]


@pytest.mark.parametrize("command", [_unlearn_into, _world_into, _bench_into], ids=["unlearn", "world", "bench"])
@pytest.mark.parametrize("name, expected", [
    pytest.param("notes.txt", "output folder {tmp}/notes.txt is an existing file", id="a-file"),
    pytest.param("notes.txt/out", "cannot create {tmp}/notes.txt/out: {tmp}/notes.txt is a file", id="under-a-file"),
    pytest.param("link", "output folder {tmp}/link is a symbolic link", id="a-link"),
    pytest.param("dangling", "output folder {tmp}/dangling is a symbolic link", id="a-dangling-link"),
])
def test_an_output_folder_that_is_not_a_folder_is_refused(world_dir, notes, tmp_path, capsys, nothing_loads,
                                                          command, name, expected):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    code, err = cli(command(world_dir, tmp_path / name), capsys)
    assert_one_line_error(code, err, expected.format(tmp=tmp_path))
    assert notes.read_text() == "my notes" and not list((tmp_path / "elsewhere").iterdir())
    assert (tmp_path / "link").is_symlink() and (tmp_path / "dangling").is_symlink()
    assert not list(tmp_path.glob(".*")), "something was moved aside or left behind"


def test_an_output_in_an_unwritable_place_is_refused(world_dir, tmp_path, capsys, monkeypatch, nothing_loads):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access  # root may write anywhere: for `locked`, answer as for a user who may not
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    for argv, out in ((_unlearn_into(world_dir, locked / "out"), locked / "out"),
                      (["eval", "--model", world_dir / "model", "--output", locked / "a" / "r.json"],
                       locked / "a" / "r.json")):
        code, err = cli(argv, capsys)
        assert_one_line_error(code, err, f"cannot create {out}: {locked} is not writable")
    assert not list(locked.iterdir())


# ---- item 4: baselines resume only their own checkpoints ---------------------------------------------------------

def _checkpoint(world_dir, folder: Path, trainer_class, config_class, **settings) -> Path:
    """checkpoint-1 of a run of `trainer_class` on the world (saved by the Trainer, with its run identity)."""
    from unstar_trl.data import load_unlearning_data

    data = load_unlearning_data(world_dir / "data")
    config = config_class(output_dir=str(folder), save_strategy="steps", save_steps=1, max_steps=1,
                          disable_tqdm=True, **settings)
    trainer_class(str(world_dir / "model"), config, train_dataset=data.forget,
                  retain_dataset=data.retain_train).train()  # what the CLI trains on
    return folder / "checkpoint-1"


def test_a_baseline_refuses_another_runs_checkpoint(world_dir, tmp_path, capsys):
    from unstar_trl.method.trainers import GradientAscentConfig, GradientAscentTrainer

    foreign = _checkpoint(world_dir, tmp_path / "kept", GradientAscentTrainer, GradientAscentConfig, seed=5,
                          learning_rate=1e-2)
    out = tmp_path / "out"
    recipe = ["unlearn", "--config", RECIPES / "world_grad_diff.yaml", "--model_name_or_path", world_dir / "model",
              "--data_dir", world_dir / "data", "--output_dir", out, "--max_steps", 2]
    code, err = cli([*recipe, "--resume_from_checkpoint", foreign], capsys)
    assert_one_line_error(code, err, "is a checkpoint of another run: its method is 'GradientAscentTrainer', this "
                                     "run's is 'GradDiffTrainer'")
    (foreign / "unstar_run.json").unlink()  # a checkpoint that says nothing of the run that saved it
    code, err = cli([*recipe, "--resume_from_checkpoint", foreign], capsys)
    assert_one_line_error(code, err, "holds no checkpoint saved by an unstar run")
    assert not out.exists() and not leftovers(tmp_path, "out") and not (tmp_path / "out.checkpoints").exists()


def test_a_baseline_resumes_its_own_checkpoint(world_dir, tmp_path, capsys):
    from unstar_trl.method.trainers import GradDiffConfig, GradDiffTrainer

    recipe = yaml.safe_load((RECIPES / "world_grad_diff.yaml").read_text())
    own = _checkpoint(world_dir, tmp_path / "kept", GradDiffTrainer, GradDiffConfig, seed=0,
                      **{key: recipe[key] for key in ("learning_rate", "stop_forget_acc", "forget_probe_every")})
    # (the run it resumes: the recipe's rate and stopping rule)
    out = tmp_path / "out"
    code, err = cli(["unlearn", "--config", RECIPES / "world_grad_diff.yaml", "--model_name_or_path",
                     world_dir / "model", "--data_dir", world_dir / "data", "--output_dir", out, "--max_steps", 2,
                     "--resume_from_checkpoint", own], capsys)
    assert code == 0, err
    report = json.loads((out / "unlearn_report.json").read_text())
    assert report["steps"] == 2 and [entry["step"] for entry in report["history"]] == [1, 2]  # 1: the checkpoint's


def test_resume_with_nothing_to_resume_is_refused_before_loading(world_dir, tmp_path, capsys, nothing_loads):
    for method in ("grad_ascent", "unstar"):
        code, err = cli(["unlearn", "--method", method, "--model_name_or_path", world_dir / "model", "--data_dir",
                         world_dir / "data", "--output_dir", tmp_path / "out", "--resume_from_checkpoint", "true"],
                        capsys)
        assert_one_line_error(code, err, f"--resume_from_checkpoint true: no checkpoint in {tmp_path}/out.checkpoints")
    assert not list(tmp_path.iterdir())


# ---- item 5: metadata typos ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    pytest.param(["--metadata", '{"datadir": "x"}'], "unknown metadata key 'datadir' (did you mean data_dir?); the "
                 "unstar tasks read data_dir, format, forget_split", id="typo"),
    pytest.param(["--metadata", '{"pretrained": "x"}'], "unknown metadata key 'pretrained'", id="model-argument"),
    pytest.param(["--metadata", '[1, 2]'], "argument --metadata: must be a JSON object", id="not-an-object"),
    pytest.param(["--metadata", '{"data_dir": 5}'], "metadata 'data_dir' must be a string, got 5", id="not-a-string"),
    pytest.param(["--limit", "1.5"], "argument --limit: must be a whole number of documents", id="limit-fraction"),
    pytest.param(["--limit", "-1"], "argument --limit: must be", id="limit-negative"),
    pytest.param(["--limit", "0"], "argument --limit: must be", id="limit-zero"),
    pytest.param(["--limit", "nan"], "argument --limit: must be", id="limit-nan"),
])
def test_eval_metadata_and_limit_are_checked_before_loading(world_dir, capsys, nothing_loads, argv, expected):
    code, err = cli(["eval", "--model", world_dir / "model", "--data-dir", world_dir / "data", "--tasks",
                     "unstar_forget_qa", *argv], capsys)
    assert_one_line_error(code, err, expected)


def test_task_metadata_typo_is_refused_and_model_arguments_pass(world_dir):
    from unstar_trl.evaluation.lm_eval_tasks import tasks_path

    utils = task_utils
    data_dir = str(world_dir / "data")
    with pytest.raises(UsageError, match=r"unknown metadata key 'datadir' \(did you mean data_dir\?\)"):
        utils.load("forget", datadir=data_dir, version=1)
    with pytest.raises(UsageError, match="unknown metadata key 'forget_splits' \\(did you mean forget_split\\?\\)"):
        utils.load("forget", data_dir=data_dir, forget_splits="forget")
    # what a plain lm_eval run mixes in: lm-eval's own keys and the --model_args of its HF model
    docs = utils.load("forget", data_dir=data_dir, version=1, config_source=str(tasks_path() / "x.yaml"),
                      pretrained="m", dtype="float32", device="cpu", attn_implementation="eager")["test"]
    assert len(docs) == len((world_dir / "data" / "forget.jsonl").read_text().splitlines())


def test_lm_eval_cli_refuses_a_metadata_typo(world_dir, tmp_path):
    from unstar_trl.evaluation.lm_eval_tasks import tasks_path

    done = subprocess.run(["lm_eval", "--model", "hf", "--model_args", f"pretrained={world_dir / 'model'},dtype=float32",
                           "--device", "cpu", "--include_path", str(tasks_path()), "--tasks", "unstar_forget_qa",
                           "--limit", "1", "--metadata", json.dumps({"datadir": str(world_dir / "data")})],
                          capture_output=True, text=True, timeout=600, env=ENV, cwd=tmp_path)
    assert done.returncode != 0
    assert "unknown metadata key 'datadir' (did you mean data_dir?)" in done.stderr


# ---- item 7: runs that would measure or train nothing -------------------------------------------------------------

@pytest.mark.parametrize("method, extra", [
    ("grad_diff", []), ("grad_ascent_kl", []), ("npo", []), ("unstar", []),
    ("grad_ascent", ["--retain_weight", "0.5", "--retain_loss_type", "kl"]),
])
def test_an_empty_retain_split_is_refused_when_the_method_needs_it(world_dir, data, tmp_path, capsys,
                                                                  nothing_loads, method, extra):
    (data / "retain.jsonl").write_text("")
    (data / "targeted.jsonl").write_text("")  # its siblings were in the retain split
    code, err = cli(["unlearn", "--method", method, "--model_name_or_path", world_dir / "model", "--data_dir", data,
                     "--output_dir", tmp_path / "out", "--max_steps", 1, *extra], capsys)
    assert_one_line_error(code, err, "but there are no retain records (the retain split is empty or missing)")
    assert not (tmp_path / "out").exists()


def test_an_empty_retain_is_refused_by_the_python_api(world_dir, tmp_path):
    from unstar_trl.data import load_unlearning_data
    from unstar_trl.method.trainers import GradDiffConfig, GradDiffTrainer

    forget = load_unlearning_data(world_dir / "data").forget
    with pytest.raises(UsageError, match="retain_weight is 1.0 but there are no retain records"):
        GradDiffTrainer(str(world_dir / "model"), GradDiffConfig(output_dir=str(tmp_path)), train_dataset=forget,
                        retain_dataset=[])


@pytest.mark.parametrize("argv, expected", [
    pytest.param(["--num_train_epochs", 0], "num_train_epochs is 0.0 and max_steps -1: nothing would be trained",
                 id="zero-epochs"),
    pytest.param(["--num_train_epochs", 0, "--max_steps", 0], "nothing would be trained", id="zero-steps"),
    pytest.param(["--prompt_template", "Tell me:"], "prompt_template 'Tell me:' must hold a {question} slot and no "
                 "other", id="template-without-question"),
    pytest.param(["--prompt_template", "{question} {answer}"], "no other", id="template-with-another-slot"),
    pytest.param(["--generator", "/no/such/teacher"], "generator must be 'auto', 'self', 'template' or a teacher "
                 "model folder; '/no/such/teacher' is none of these", id="no-such-teacher"),
    pytest.param(["--method", "npo", "--remove_unused_columns", "true"], "remove_unused_columns true: the "
                 "unlearning collators read columns", id="remove-unused-columns"),
])
def test_a_run_that_cannot_train_is_refused_at_config_time(world_dir, tmp_path, capsys, nothing_loads, argv,
                                                            expected):
    code, err = cli(["unlearn", "--model_name_or_path", world_dir / "model", "--data_dir", world_dir / "data",
                     "--output_dir", tmp_path / "out", *argv], capsys)
    assert_one_line_error(code, err, expected)
    assert not list(tmp_path.iterdir())


def test_forget_facts_the_model_never_knew_are_a_recorded_warning(world_dir, data, tmp_path, capsys):
    edit_rows(data / "forget.jsonl", lambda rows: [row.update(answer=f"Zyx{index}") for index, row in enumerate(rows)])
    out = tmp_path / "out"
    code, err = cli([*UNLEARN, "--model_name_or_path", world_dir / "model", "--data_dir", data, "--output_dir", out],
                    capsys)
    assert code == 0, err
    report = json.loads((out / "unlearn_report.json").read_text())
    assert report["before"]["forget_acc"] == 0.0
    (warning,) = report["warnings"]
    facts = len(read_rows(data / "forget.jsonl"))
    assert warning.startswith(f"0/{facts} forget facts are known under the prompt format 'Question: {{question}}")
    assert f"unstar: warning: {warning}" in err


def test_infinity_is_written_as_null_with_a_warning(world_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = cli([*UNLEARN, "--model_name_or_path", world_dir / "model", "--data_dir", world_dir / "data",
                     "--output_dir", out, "--max_forget_nll", "inf"], capsys)
    assert code == 0, err

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    report = json.loads((out / "unlearn_report.json").read_text(), parse_constant=refuse)
    assert report["config"]["max_forget_nll"] is None
    assert "config.max_forget_nll (inf) is not a finite number; written as null" in report["warnings"]


def test_a_second_run_into_the_same_output_is_refused_while_the_first_runs(world_dir, tmp_path, capsys,
                                                                          earlier_output):
    out, before = earlier_output, fingerprint(earlier_output)
    process = start_long_training(world_dir, out, tmp_path / "log.txt")
    try:
        code, err = cli(_unlearn_into(world_dir, out), capsys)
        assert_one_line_error(code, err, f"another run is writing {out}")
    finally:
        process.kill()
        process.wait(timeout=60)
    assert fingerprint(out) == before


@pytest.mark.parametrize("command", [_world_into, _bench_into], ids=["world", "bench"])
def test_the_world_and_the_bench_hold_the_lock_too(tmp_path, capsys, world_dir, nothing_loads, command):
    from unstar_trl.io import output_lock

    out = tmp_path / "out"
    with output_lock(out):  # as a run in another process would hold it
        code, err = cli(command(world_dir, out), capsys)
        assert_one_line_error(code, err, f"another run is writing {out}")
    assert not list(tmp_path.iterdir())  # the lock file went with the lock


# ---- item 8: late or vague failures, debris --------------------------------------------------------------------------

def _truncated_weights(model: Path) -> tuple[str, str]:
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return f"{weights}: not a complete safetensors file, truncated or corrupt", ""


def _vocabulary_past_the_embedding(model: Path) -> tuple[str, str]:
    from safetensors.torch import load_file, save_file

    weights = {name: tensor[:500].clone() if "embed" in name else tensor
               for name, tensor in load_file(model / "model.safetensors").items()}
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "vocab_size": 500}))
    return f"{model}: the tokenizer has", "tokens, more than the 500 rows of the model's embedding"


@pytest.mark.parametrize("spoil", [_truncated_weights, _vocabulary_past_the_embedding],
                         ids=["truncated-safetensors", "vocabulary-past-the-embedding"])
def test_a_broken_model_is_one_line_naming_the_file_and_the_cause(model, data, tmp_path, capsys, spoil):
    start, cause = spoil(model)
    for argv in ([*UNLEARN, "--model_name_or_path", model, "--data_dir", data, "--output_dir", tmp_path / "out"],
                 ["eval", "--model", model, "--data-dir", data, "--tasks", "unstar_forget_qa", "--limit", 1]):
        code, err = cli(argv, capsys)
        assert_one_line_error(code, err, cause)
        assert f"unstar: error: {start}" in err
    assert not (tmp_path / "out").exists()


def test_a_yaml_error_names_the_recipe_and_the_line(world_dir, tmp_path, capsys, nothing_loads):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method: grad_ascent\nlearning_rate: [1e-3\n")
    code, err = cli(["unlearn", "--config", recipe, "--model_name_or_path", world_dir / "model", "--data_dir",
                     world_dir / "data", "--output_dir", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, f"recipe {recipe} line 3 column 1: not valid YAML (expected ',' or ']'")


def test_generation_never_runs_past_the_models_positions(world_dir, monkeypatch):
    from unstar_trl.method.probe import generate
    from unstar_trl.models import load_model

    model, tokenizer = load_model(world_dir / "model")
    positions = model.config.max_position_embeddings
    asked = {}
    real_generate = model.generate

    def spy(**kwargs):
        asked["max_new_tokens"] = kwargs["max_new_tokens"]
        return real_generate(**kwargs)

    monkeypatch.setattr(model, "generate", spy)
    prompt = "Question: " + "very " * 60 + "long?\nAnswer:"
    length = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert positions - 100 < length < positions
    generate(model, tokenizer, [prompt], max_new_tokens=500)
    assert asked["max_new_tokens"] == positions - length


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    from unstar_trl.io import write_text_atomic

    (tmp_path / "keep").mkdir()
    with pytest.raises(IsADirectoryError):
        write_text_atomic(tmp_path / "keep", "results")
    assert [path.name for path in tmp_path.iterdir()] == ["keep"] and not list((tmp_path / "keep").iterdir())


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_checkpoints_folder(world_dir, tmp_path, capsys,
                                                                                   monkeypatch):
    from unstar_trl.method.trainers import GradientAscentTrainer

    def broken_train(self, *args, **kwargs):  # the Trainer has created its output_dir, the checkpoints folder
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(GradientAscentTrainer, "train", broken_train)
    code, err = cli([*_unlearn_into(world_dir, tmp_path / "out"), "--save_strategy", "steps"], capsys)
    assert_one_line_error(code, err, "disk on fire")
    assert not list(tmp_path.iterdir())

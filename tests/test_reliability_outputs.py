"""Reliability, round three: a run deletes or replaces only what it made itself (its outputs and checkpoint folders
carry a marker listing what they hold), an output that cannot be renamed into place is refused before any work, and
a baseline killed after a checkpoint resumes to the end of an uninterrupted run.

Every case works on copies (tmp_path) of the session world.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_reliability import ENV, RECIPES, _without_timing, assert_one_line_error, cli, leftovers
from test_reliability import data, model  # noqa: F401 (fixtures: copies of the world)
from test_reliability_inputs import _bench_into, _unlearn_into, _world_into
from test_reliability_inputs import nothing_loads  # noqa: F401 (fixture: loading a model fails loudly)

from unstar_trl.io import OUTPUT_MARKER, check_output_folder, fingerprint, mark_output, remove_output

COMMANDS = {"unlearn": _unlearn_into, "world": _world_into, "bench": _bench_into}


def _added_to_our_output(out: Path, kind: str) -> str:
    """An earlier `kind` output of ours, to which the user added notes.txt and my_eval/."""
    out.mkdir()
    (out / "report.json").write_text("{}")
    mark_output(out, kind)
    (out / "notes.txt").write_text("my notes")
    (out / "my_eval").mkdir()
    (out / "my_eval" / "scores.csv").write_text("1,2")
    return "holds my_eval/, notes.txt, which no unstar run wrote there"


def _earlier_results_not_marked(out: Path, kind: str) -> str:
    """A folder holding results.md and results.json that no marked run of ours wrote (a bench's files, say)."""
    out.mkdir()
    (out / "results.md").write_text("| method |")
    (out / "results.json").write_text("{}")
    return f"{out} exists and holds files that are not an earlier output of unstar {kind} (no {OUTPUT_MARKER})"


def _another_commands_output(out: Path, kind: str) -> str:
    """An output of ours, but of another command."""
    out.mkdir()
    (out / "report.json").write_text("{}")
    other = "bench" if kind != "bench" else "world"
    mark_output(out, other)
    return f"not an earlier output of unstar {kind} (by unstar {other})"


# ---- what a rewrite would delete ----------------------------------------------------------------------------------

@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("spoil", [_added_to_our_output, _earlier_results_not_marked, _another_commands_output],
                         ids=["user-files-added", "unmarked-results", "another-kind"])
def test_an_output_holding_what_the_run_did_not_make_is_refused_before_loading(world_dir, tmp_path, capsys,
                                                                                nothing_loads, command, spoil):
    out = tmp_path / "out"
    expected = spoil(out, command)
    before = fingerprint(out)
    code, err = cli(COMMANDS[command](world_dir, out), capsys)
    assert_one_line_error(code, err, expected)
    assert fingerprint(out) == before and not leftovers(tmp_path, "out")


def test_rewriting_an_earlier_output_keeps_the_files_the_user_added(world_dir, tmp_path, capsys):
    """A real run marks its output; a rewrite refuses while the user's notes.txt and my_eval/ are in it, and replaces
    it once they are gone."""
    out = tmp_path / "out"
    assert cli(_unlearn_into(world_dir, out), capsys)[0] == 0
    assert json.loads((out / OUTPUT_MARKER).read_text())["kind"] == "unlearn"
    (out / "notes.txt").write_text("my notes")
    (out / "my_eval").mkdir()
    (out / "my_eval" / "scores.csv").write_text("1,2")
    before = fingerprint(out)
    code, err = cli(_unlearn_into(world_dir, out), capsys)
    assert_one_line_error(code, err, f"{out} holds my_eval/, notes.txt, which no unstar run wrote there")
    assert fingerprint(out) == before
    shutil.rmtree(out / "my_eval")
    (out / "notes.txt").unlink()
    assert cli(_unlearn_into(world_dir, out), capsys)[0] == 0
    assert (out / "model.safetensors").is_file() and not leftovers(tmp_path, "out")


# ---- the checkpoints beside the output, removed at the end --------------------------------------------------------

def _model_there(world_dir, checkpoints: Path) -> tuple[list, str]:
    shutil.copytree(world_dir / "model", checkpoints)
    return ["--model_name_or_path", checkpoints], f"checkpoints folder {checkpoints} overlaps the input"


def _data_there(world_dir, checkpoints: Path) -> tuple[list, str]:
    shutil.copytree(world_dir / "data", checkpoints)
    return ["--data_dir", checkpoints], f"checkpoints folder {checkpoints} overlaps the input"


def _model_inside(world_dir, checkpoints: Path) -> tuple[list, str]:
    (checkpoints / "checkpoint-3").mkdir(parents=True)
    mark_output(checkpoints, "unlearn checkpoints", ["checkpoint-*"])
    shutil.copytree(world_dir / "model", checkpoints / "checkpoint-3" / "model")
    return (["--model_name_or_path", checkpoints / "checkpoint-3" / "model"],
            f"checkpoints folder {checkpoints} overlaps the input")


def _experiments_there(world_dir, checkpoints: Path) -> tuple[list, str]:
    (checkpoints / "experiments").mkdir(parents=True)
    (checkpoints / "notes.txt").write_text("my notes")
    return [], f"{checkpoints} exists and holds files that are not an earlier output of unstar unlearn checkpoints"


def _notes_in_ours(world_dir, checkpoints: Path) -> tuple[list, str]:
    (checkpoints / "checkpoint-3").mkdir(parents=True)
    mark_output(checkpoints, "unlearn checkpoints", ["checkpoint-*"])
    (checkpoints / "notes.txt").write_text("my notes")
    return [], f"{checkpoints} holds notes.txt, which no unstar run wrote there"


@pytest.mark.parametrize("setup", [_model_there, _data_there, _model_inside, _experiments_there, _notes_in_ours],
                         ids=["the-model", "the-data", "a-model-inside", "a-users-folder", "notes-in-ours"])
def test_a_checkpoints_place_that_is_not_ours_is_refused_before_loading(world_dir, tmp_path, capsys, nothing_loads,
                                                                         setup):
    """With --save_strategy epoch, OUT.checkpoints is removed at the end: it may only be a marked folder of ours."""
    checkpoints = tmp_path / "o" / "mdl.checkpoints"
    extra, expected = setup(world_dir, checkpoints)
    before = fingerprint(checkpoints)
    code, err = cli([*_unlearn_into(world_dir, tmp_path / "o" / "mdl"), "--save_strategy", "epoch", *extra], capsys)
    assert_one_line_error(code, err, expected)
    assert fingerprint(checkpoints) == before and not (tmp_path / "o" / "mdl").exists()


def test_removing_an_output_removes_only_what_its_marker_lists(tmp_path):
    """What a user put into a checkpoints folder while the run ran stays, and so does the folder holding it."""
    folder = tmp_path / "out.checkpoints"
    (folder / "checkpoint-2").mkdir(parents=True)
    (folder / "checkpoint-2" / "model.safetensors").write_bytes(b"weights")
    mark_output(folder, "unlearn checkpoints", ["checkpoint-*"])
    (folder / "notes.txt").write_text("my notes")
    remove_output(folder)
    assert sorted(path.name for path in folder.iterdir()) == ["notes.txt"]
    (folder / "notes.txt").unlink()
    (folder / "checkpoint-4").mkdir()
    mark_output(folder, "unlearn checkpoints", ["checkpoint-*"])
    remove_output(folder)
    assert not folder.exists()


def test_a_marked_output_with_only_its_own_entries_may_be_rewritten(tmp_path):
    for kind, names in (("bench", ["results.md", "results.json"]), ("world", ["world.json", "data"])):
        out = tmp_path / kind
        out.mkdir()
        for name in names:
            (out / name).write_text("x")
        mark_output(out, kind)
        check_output_folder(out, kind)  # no refusal


# ---- the teacher ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("output", ["teacher", "."], ids=["the-teacher", "around-the-teacher"])
def test_the_teacher_is_an_input_that_no_output_may_replace(world_dir, tmp_path, capsys, nothing_loads, output):
    teacher = Path(shutil.copytree(world_dir / "model", tmp_path / "o" / "teacher"))  # an earlier output of ours
    (teacher / "unlearn_report.json").write_text("{}")
    mark_output(teacher, "unlearn")
    out = tmp_path / "o" / output  # (pathlib drops the ".")
    before = fingerprint(teacher)
    code, err = cli(["unlearn", "--config", RECIPES / "world_unstar.yaml", "--model_name_or_path", world_dir / "model",
                     "--data_dir", world_dir / "data", "--generator", teacher, "--output_dir", out, "--max_rounds", 1],
                    capsys)
    assert_one_line_error(code, err, f"overlaps the input {teacher}")
    assert fingerprint(teacher) == before and not leftovers(out.parent, out.name)


# ---- outputs that cannot be renamed into place ----------------------------------------------------------------------

@pytest.fixture
def empty_mount_point(tmp_path):
    """An empty tmpfs mounted at tmp_path/mnt (skipped where this process may not mount)."""
    point = tmp_path / "mnt"
    point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "none", str(point)], capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs privileges this process lacks")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=True)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("output, expected", [
    pytest.param("", "output folder '' is the current directory or holds it", id="empty"),
    pytest.param(".", "output folder '.' is the current directory or holds it", id="dot"),
    pytest.param("..", "output folder '..' is the current directory or holds it", id="a-parent"),
])
def test_the_current_directory_is_refused_as_an_output_before_loading(world_dir, tmp_path, capsys, monkeypatch,
                                                                      nothing_loads, command, output, expected):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, err = cli(COMMANDS[command](world_dir, output), capsys)
    assert_one_line_error(code, err, expected)
    assert not list(work.iterdir()) and sorted(path.name for path in tmp_path.iterdir()) == ["work"]


@pytest.mark.parametrize("command", COMMANDS)
def test_an_empty_mount_point_is_refused_as_an_output_before_loading(world_dir, empty_mount_point, capsys,
                                                                     nothing_loads, command):
    code, err = cli(COMMANDS[command](world_dir, empty_mount_point), capsys)
    assert_one_line_error(code, err, f"output folder {empty_mount_point} is a mount point, which cannot be renamed "
                                     "into place")
    assert not list(empty_mount_point.iterdir()) and not leftovers(empty_mount_point.parent, "mnt")


# ---- a baseline's resume ----------------------------------------------------------------------------------------------

KILLED_AFTER_A_CHECKPOINT = """
import os, signal, sys
from unstar_trl.cli import main
from unstar_trl.method.trainers import base

def on_save(self, args, state, control, _save=base.RunIdentityCallback.on_save, **kwargs):
    _save(self, args, state, control, **kwargs)
    if state.global_step == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)

base.RunIdentityCallback.on_save = on_save
sys.exit(main(sys.argv[1:]))
"""
"""`unstar ARGV`, SIGKILLed by itself once the checkpoint of step KILL_AT_STEP is written (whole: the run's identity
is its last file), when the data loader has already made the next batch."""


def test_a_baseline_killed_after_a_checkpoint_resumes_to_the_end_of_an_uninterrupted_run(world_dir, tmp_path, capsys,
                                                                                         monkeypatch):
    """grad_diff (retain pairs drawn at random) saving every 2 steps, SIGKILLed after checkpoint-4 in the middle of
    an epoch, then resumed: it trains only the 5 steps left and ends with the weights (bit for bit), trained tokens
    and history of an uninterrupted run."""
    from unstar_trl.method.trainers import GradDiffTrainer

    recipe = ["unlearn", "--config", RECIPES / "world_grad_diff.yaml", "--model_name_or_path", world_dir / "model",
              "--data_dir", world_dir / "data", "--save_strategy", "steps", "--save_steps", 2, "--max_steps", 9,
              "--per_device_train_batch_size", 2]  # 7 steps an epoch: checkpoint-4 is in the middle of the first
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert cli([*recipe, "--output_dir", whole], capsys)[0] == 0
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_A_CHECKPOINT, *map(str, recipe), "--output_dir",
                             str(resumed)], env={**ENV, "KILL_AT_STEP": "4"}, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(path.name for path in (tmp_path / "resumed.checkpoints").glob("checkpoint-*")) == \
        ["checkpoint-2", "checkpoint-4"]
    steps = []
    step = GradDiffTrainer.training_step
    monkeypatch.setattr(GradDiffTrainer, "training_step", lambda self, *a, **k: steps.append(1) or step(self, *a, **k))
    code, err = cli([*recipe, "--output_dir", resumed, "--resume_from_checkpoint", "true"], capsys)
    assert code == 0, err
    assert len(steps) == 5, "the run did not go on from checkpoint-4"
    reports = [json.loads((folder / "unlearn_report.json").read_text()) for folder in (whole, resumed)]
    assert [entry["step"] for entry in reports[0]["history"]] == list(range(1, 10))
    for key in ("steps", "trained_tokens", "after", "history"):
        assert _without_timing(reports[1][key]) == _without_timing(reports[0][key]), key
    assert (resumed / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
    assert not (tmp_path / "resumed.checkpoints").exists() and not leftovers(tmp_path, "resumed")


# ---- a full disk at a round checkpoint -------------------------------------------------------------------------------

@pytest.mark.parametrize("failing_round", [1, 2])
def test_a_round_checkpoint_that_cannot_be_written_stops_the_run_saying_what_a_rerun_resumes(
        world_dir, tmp_path, capsys, monkeypatch, failing_round):
    """A full disk while writing round k's checkpoint (save_strategy epoch): the run stops in one line that names the
    checkpoint kept (round k-1) or says none is; no partial checkpoint is left; the rerun the line advises works (a
    resume from round k-1, or a refused resume with nothing to resume and a run from the start)."""
    import errno

    from unstar_trl.method.trainers import unstar_checkpoints

    write = unstar_checkpoints._write_round_checkpoint

    def full_disk(trainer, path):
        if len(trainer.rounds) >= failing_round:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(trainer, path)

    recipe = ["unlearn", "--config", RECIPES / "world_unstar.yaml", "--model_name_or_path", world_dir / "model",
              "--data_dir", world_dir / "data", "--save_strategy", "epoch", "--num_train_epochs", 1,
              "--learning_rate", "2e-4", "--max_rounds", 3, "--output_dir", tmp_path / "out"]
    with monkeypatch.context() as patched:
        patched.setattr(unstar_checkpoints, "_write_round_checkpoint", full_disk)
        code, err = cli(recipe, capsys)
    checkpoints = tmp_path / "out.checkpoints"
    kept = sorted(path.name for path in checkpoints.glob("round-*"))
    assert not (tmp_path / "out").exists() and not list(checkpoints.glob(".round-*"))  # no partial checkpoint
    assert "No space left on device" in err
    if failing_round == 1:
        assert_one_line_error(code, err, "no earlier round checkpoint is kept: free space, then run again from the "
                                         "start")
        assert kept == []
        code, err = cli([*recipe, "--resume_from_checkpoint", "true"], capsys)
        assert_one_line_error(code, err, f"{checkpoints} holds no checkpoint, only anti_samples.jsonl")
        rerun = recipe
    else:
        assert_one_line_error(code, err, "round-1 is the latest checkpoint kept: free space, then rerun with "
                                         "--resume_from_checkpoint true")
        assert kept == ["round-1"]
        rerun = [*recipe, "--resume_from_checkpoint", "true"]
    code, err = cli(rerun, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "unlearn_report.json").read_text())
    assert report["rounds"] >= failing_round and not checkpoints.exists()

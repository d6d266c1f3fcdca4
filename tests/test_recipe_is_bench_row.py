"""A shipped world recipe run alone (`unstar unlearn --config world_<row>`) is its bench row: the recipes carry the
bench's one stopping rule and batch size, so the same seed gives the same steps and the same forget accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unstar_trl.cli import main
from unstar_trl.data import load_unlearning_data
from unstar_trl.evaluation.bench_runner import BenchSettings, run_method
from unstar_trl.evaluation.sweep import BATCH_SIZE, STOPPING_RULE
from unstar_trl.method.probe import probe_accuracy
from unstar_trl.recipes import read_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("world_*.yaml"))


def test_the_bench_runs_under_the_rule_of_the_recipes():
    settings = BenchSettings()
    assert (settings.target, settings.probe_every, settings.step_budget, settings.batch_size) == (
        STOPPING_RULE.target, STOPPING_RULE.probe_every, STOPPING_RULE.step_budget, BATCH_SIZE)
    assert settings.max_rounds is None  # UnSTAR's rounds: the recipe's own


@pytest.mark.parametrize("recipe", RECIPES, ids=[path.stem for path in RECIPES])
def test_every_world_recipe_holds_the_stopping_rule_and_batch_size(recipe):
    values = read_recipe(recipe)
    assert {key: values.get(key) for key in ("stop_forget_acc", "forget_probe_every", "max_steps",
                                             "per_device_train_batch_size")} == {
        "stop_forget_acc": STOPPING_RULE.target, "forget_probe_every": STOPPING_RULE.probe_every,
        "max_steps": STOPPING_RULE.step_budget, "per_device_train_batch_size": BATCH_SIZE}
    if values.get("method") != "unstar":  # max_steps is the whole budget: epochs would be a knob that does nothing
        assert "num_train_epochs" not in values


@pytest.mark.parametrize("row", ["grad_ascent", "unstar_plus"])
def test_a_recipe_run_alone_gives_its_bench_row(world_dir, tmp_path, capsys, row):
    """The forget run of a bench row and `unstar unlearn --config world_<row>` with nothing else: the same steps and
    forget accuracy (UnSTAR-plus: over rounds, with the recipe's max_rounds, which the bench keeps)."""
    out = tmp_path / "alone"
    assert main(["unlearn", "--config", f"world_{row}", "--model_name_or_path", str(world_dir / "model"),
                 "--data_dir", str(world_dir / "data"), "--output_dir", str(out)]) == 0, capsys.readouterr().err
    report = json.loads((out / "unlearn_report.json").read_text())
    data = load_unlearning_data(world_dir / "data")
    settings = BenchSettings(seeds=(read_recipe(f"world_{row}")["seed"],))
    bench = run_method(row, settings.seeds[0], world_dir, data.forget, data.retain_train, settings)
    forget_acc = probe_accuracy(bench["model"], bench["tokenizer"], data.forget, bench["template"])
    assert report["before"]["forget_acc"] >= 0.9  # there was something to forget
    assert 0 < report["steps"] < STOPPING_RULE.step_budget  # stopped by the rule, not by the budget
    assert report["after"]["forget_acc"] <= STOPPING_RULE.target
    assert (report["steps"], report["after"]["forget_acc"]) == (bench["steps"], forget_acc)
    resolved = report["config"]  # what the run alone trained under: the bench's rule
    assert (resolved["stop_forget_acc"], resolved["forget_probe_every"], resolved["max_steps"]) == (
        settings.target, settings.probe_every, settings.step_budget)

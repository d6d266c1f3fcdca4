"""`unstar sweep` on a user's model and data writes a recipe that `unstar unlearn --config` takes; `unstar eval` on
that run's output finds its anti-samples and its data; the run that ends above its target says what to do next."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from unstar_trl.cli import main
from unstar_trl.commands.unlearn import kept_knowledge_warnings
from unstar_trl.evaluation.sweep import StoppingRule, choose, keeps_less_warning, swept_recipe

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_the_rule_picks_the_rate_that_reaches_the_target_early_and_keeps_most():
    rule = StoppingRule(target=0.05, step_budget=40)
    runs = [{"learning_rate": 1e-4, "forget_acc": 0.5, "kept": 1.0, "steps": 40},
            {"learning_rate": 3e-4, "forget_acc": 0.0, "kept": 0.9, "steps": 20},
            {"learning_rate": 1e-3, "forget_acc": 0.0, "kept": 0.7, "steps": 6},
            {"learning_rate": 3e-3, "forget_acc": 0.0, "kept": 1.0, "steps": 31}]  # too late: over 3/4 of the budget
    assert choose(runs, rule)["learning_rate"] == 3e-4
    assert choose(runs[:1], rule)["learning_rate"] == 1e-4  # none reached: the one that forgets most


def test_swept_recipe_sets_keys_in_place_or_adds_them():
    text = "method: npo\nlearning_rate: 1.0e-05   # old\nseed: 0\n"
    swept = swept_recipe(text, {"learning_rate": 3e-4, "max_steps": 60, "data_dir": "my data"})
    assert yaml.safe_load(swept) == {"method": "npo", "learning_rate": 3e-4, "seed": 0, "max_steps": 60,
                                     "data_dir": "my data"}
    assert swept.splitlines()[1].startswith("learning_rate: 0.0003") and swept.count("learning_rate") == 1


@pytest.fixture(scope="module")
def swept(chat_world, tmp_path_factory):
    """`unstar sweep` of the template UnSTAR recipe on the chat model, a tiny grid; then `unstar unlearn` with the
    recipe it wrote. (recipe path, output folder)."""
    folder = tmp_path_factory.mktemp("sweep")
    recipe, out = folder / "recipe.yaml", folder / "out"
    assert main(["sweep", "--config", "world_unstar_template", "--model_name_or_path", str(chat_world / "model"),
                 "--data_dir", str(chat_world / "data"), "--grid", "1e-4,3e-3", "--step_budget", "8",
                 "--probe_every", "2", "--output", str(recipe)]) == 0
    assert main(["unlearn", "--config", str(recipe), "--output_dir", str(out), "--max_rounds", "2"]) == 0
    return recipe, out


def test_sweep_writes_a_recipe_that_unlearn_takes(swept, chat_world, capsys):
    recipe, out = swept
    written = yaml.safe_load(recipe.read_text())
    assert written["learning_rate"] in (1e-4, 3e-3) and written["stop_forget_acc"] == 0.05
    assert written["max_steps"] == 8 and written["model_name_or_path"] == str(chat_world / "model")
    assert written["generator"] == "template" and written["method"] == "unstar"  # the rest is the recipe's
    report = json.loads((out / "unlearn_report.json").read_text())
    assert report["config"]["learning_rate"] == written["learning_rate"] and 0 < report["steps"] <= 8
    above = [w for w in report["warnings"] if "above its target" in w]
    if report["after"]["forget_acc"] > 0.05:
        assert len(above) == 1 and "unstar sweep --config RECIPE" in above[0]
    else:
        assert above == []


def test_sweep_refuses_to_replace_a_recipe(swept, chat_world, capsys):
    recipe, _ = swept
    before = recipe.read_text()
    assert main(["sweep", "--config", "world_unstar_template", "--model_name_or_path", str(chat_world / "model"),
                 "--data_dir", str(chat_world / "data"), "--output", str(recipe)]) == 2
    assert "exists; name a new file" in capsys.readouterr().err and recipe.read_text() == before


def test_eval_on_an_output_finds_its_anti_samples_and_its_data(swept, tmp_path, capsys):
    _, out = swept
    result = tmp_path / "r.json"
    assert main(["eval", "--model", str(out), "--tasks", "unstar_planted,unstar_forget_qa", "--output",
                 str(result)]) == 0
    summary = json.loads(result.read_text())["summary"]
    planted = summary["planted_planted_share"]  # NaN (None here) when the tasks did not find the anti-samples
    assert planted is not None and 0 <= planted <= 1
    report = json.loads((out / "unlearn_report.json").read_text())
    assert math.isclose(summary["forget_qa_acc"], report["after"]["forget_acc"], abs_tol=0.05)
    assert f"data: {report['data_dir']} (named by {out / 'unlearn_report.json'})" in capsys.readouterr().out


def test_eval_without_data_or_a_report_is_refused(chat_world, capsys):
    assert main(["eval", "--model", str(chat_world / "model"), "--tasks", "unstar_forget_qa"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "give --data-dir" in err and "unlearn_report.json" in err


def test_a_chosen_rate_that_keeps_nothing_is_warned_about():
    """The foreign chat model's sweep: every rate that forgets keeps nothing, the one that keeps forgets nothing."""
    runs = [{"learning_rate": 1e-4, "forget_acc": 1.0, "kept": 1.0, "steps": 60, "diverged": None},
            {"learning_rate": 1e-3, "forget_acc": 0.0, "kept": 0.0, "steps": 22, "diverged": None}]
    found = {"chosen": choose(runs, StoppingRule())["learning_rate"], "runs": runs}
    assert found["chosen"] == 1e-3 and "keeps 0.00" in keeps_less_warning(found) and "0.0001 kept 1.00" in (
        keeps_less_warning(found))
    runs[1]["kept"] = 0.95
    assert keeps_less_warning(found) is None


def test_a_report_whose_kept_splits_collapse_is_warned_about():
    before = {"forget_acc": 1.0, "retain_heldout_acc": 1.0, "retain_trained_acc": 1.0, "neighbor_acc": 0.8,
              "sibling_heldout_acc": None}
    (line,) = kept_knowledge_warnings(before, {"forget_acc": 0.0, "retain_heldout_acc": 0.0, "retain_trained_acc": 0.0,
                                               "neighbor_acc": 0.75, "sibling_heldout_acc": None})
    assert line.startswith("held-out retain accuracy fell from 1.00 to 0.00")  # one line: the held-out facts
    assert kept_knowledge_warnings(before, {"forget_acc": 0.0, "retain_heldout_acc": 0.9, "retain_trained_acc": 0.0,
                                            "neighbor_acc": 0.73}) == []  # the trained ones are not read beside them


def test_data_without_held_out_facts_is_warned_about_on_the_trained_ones():
    before = {"retain_heldout_acc": None, "retain_trained_acc": 1.0, "neighbor_acc": None,
              "sibling_heldout_acc": None, "sibling_trained_acc": 0.9}
    after = {"retain_heldout_acc": None, "retain_trained_acc": 0.2, "neighbor_acc": None,
             "sibling_heldout_acc": None, "sibling_trained_acc": 0.3}
    lines = kept_knowledge_warnings(before, after)
    assert [line.split(" accuracy")[0] for line in lines] == ["trained retain", "trained sibling"]

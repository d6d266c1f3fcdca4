"""`unstar unlearn`: one real end-to-end run with a recipe, and the ways it must refuse."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unstar_trl.cli import main
from unstar_trl.io import fingerprint
from unstar_trl.method.trainers.time_split import PHASES
from unstar_trl.recipes import method_recipe, read_recipe
from unstar_trl.text import PROMPTS_FILE, contains_answer

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_end_to_end_with_a_recipe(world_dir, tmp_path):
    untouched = fingerprint(world_dir / "model")
    out = tmp_path / "out"
    command = ["unstar", "unlearn", "--config", str(RECIPES / "world_grad_ascent.yaml"),
               "--model_name_or_path", str(world_dir / "model"), "--data_dir", str(world_dir / "data"),
               "--output_dir", str(out), "--max_steps", "6", "--learning_rate", "3e-3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "unlearn_report.json").read_text())
    steps = report["steps"]  # the recipe's stopping rule may end the run before --max_steps
    assert report["method"] == "grad_ascent" and report["rounds"] == 1 and 1 <= steps <= 6
    assert steps == 6 or (steps % 2 == 0 and report["after"]["forget_acc"] <= 0.05)
    assert report["diverged"] is None and report["seconds"] > 0 and report["trained_tokens"] > 0
    split = report["time_split"]  # the training run's seconds by phase, within the command's (which loads and scores)
    assert set(split) == set(PHASES) and split["fit"] > 0 and sum(split.values()) <= report["seconds"]
    for key in ("forget_acc", "paraphrase_acc", "retain_heldout_acc", "retain_trained_acc", "neighbor_acc",
                "targeted_acc", "sibling_heldout_acc", "sibling_trained_acc"):
        assert 0.0 <= report["before"][key] <= 1.0 and 0.0 <= report["after"][key] <= 1.0
    assert report["after"]["forget_acc"] < report["before"]["forget_acc"]
    assert [entry["step"] for entry in report["history"]] == list(range(1, steps + 1))
    assert all("forget_nll" in entry for entry in report["history"])
    assert {"model.safetensors", "config.json", "tokenizer.json", "unstar_prompts.json"} <= {
        path.name for path in out.iterdir()}
    assert not [path for path in out.iterdir() if path.name == "trainer"]
    assert not list(tmp_path.glob(".out.*"))  # the staging folder is gone
    assert fingerprint(world_dir / "model") == untouched


def run(argv, capsys):
    code = main(["unlearn", *map(str, argv)])
    return code, capsys.readouterr().err.strip()


def test_unknown_recipe_key_is_one_line(world_dir, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method: npo\nlearning_rat: 0.1\n")
    code, err = run(["--config", recipe, "--model_name_or_path", world_dir / "model", "--data_dir",
                     world_dir / "data", "--output_dir", tmp_path / "out"], capsys)
    assert code != 0
    assert len(err.splitlines()) == 1 and "learning_rat" in err and "NPOConfig" in err
    assert not (tmp_path / "out").exists()


def test_unknown_recipe_key_in_a_subprocess(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method: grad_diff\nbogus_key: 1\n")
    done = subprocess.run([sys.executable, "-m", "unstar_trl.cli", "unlearn", "--config", str(recipe),
                           "--output_dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "bogus_key" in done.stderr


def test_unknown_method_and_output_inside_the_model(world_dir, tmp_path, capsys):
    code, err = run(["--method", "nope", "--output_dir", tmp_path / "out"], capsys)
    assert code != 0 and "nope" in err and "grad_ascent" in err
    code, err = run(["--config", RECIPES / "world_grad_diff.yaml", "--model_name_or_path", world_dir / "model",
                     "--data_dir", world_dir / "data", "--output_dir", world_dir / "model" / "unlearned"], capsys)
    assert code != 0 and "overlaps" in err


def test_every_recipe_parses(world_dir, tmp_path):
    from unstar_trl.commands.unlearn import parse
    from unstar_trl.method.trainers import METHODS

    for recipe in sorted(RECIPES.glob("world_*.yaml")):
        if recipe.name.startswith("world_unstar"):
            continue
        script_args, config, _, _ = parse(["--config", str(recipe), "--model_name_or_path", str(world_dir / "model"),
                                        "--data_dir", str(world_dir / "data"), "--output_dir", str(tmp_path)])
        assert isinstance(config, METHODS[script_args.method][1]), recipe.name
        assert recipe.name == f"world_{script_args.method}.yaml"
        assert config.bf16 is False and config.gradient_checkpointing is False


def test_tofu_recipes_parse_for_a_gpu_user(tofu_dir, tmp_path):
    """The GPU recipes name only real fields and the TOFU splits they ask for exist."""
    from unstar_trl.commands.unlearn import parse
    from unstar_trl.data import load_unlearning_data
    from unstar_trl.method.trainers import METHODS

    recipes = sorted(RECIPES.glob("tofu_*.yaml"))
    assert len(recipes) >= 3
    for recipe in recipes:
        script_args, config, model_args, _ = parse(["--config", str(recipe), "--model_name_or_path", "some/model",
                                                 "--data_dir", str(tofu_dir), "--output_dir", str(tmp_path),
                                                 "--bf16", "false"])  # the recipes ask for bf16: a GPU's
        assert isinstance(config, METHODS[script_args.method][1]), recipe.name
        assert model_args.use_peft and config.prompt_template is None, recipe.name
        data = load_unlearning_data(tofu_dir, format=script_args.data_format, forget_split=script_args.forget_split,
                                    retain_split=script_args.retain_split)
        assert data.forget and data.retain, recipe.name


def test_columns_map_a_users_data(chat_world, tmp_path, capsys):
    data = tmp_path / "qa"
    data.mkdir()
    for split in ("forget", "retain"):
        rows = [json.loads(line) for line in (chat_world / "data" / f"{split}.jsonl").read_text().splitlines()]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(
            {"prompt": row["question"], "response": row["answer"], "name": row["subject"]}) + "\n" for row in rows))
    argv = ["--method", "grad_ascent", "--model_name_or_path", chat_world / "model", "--data_dir", data,
            "--max_steps", 1]
    code, err = run([*argv, "--output_dir", tmp_path / "out", "--columns", "question=prompt,answer=response,"
                     "subject=name"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "unlearn_report.json").read_text())
    assert report["before"]["forget_acc"] == 1.0 and report["warnings"] == []  # read, and asked, as taught
    code, err = run([*argv, "--output_dir", tmp_path / "bad", "--columns", "question"], capsys)
    assert code != 0 and err.splitlines()[-1].endswith(
        "--columns: 'question' is not ours=theirs (e.g. --columns subject=name,question=prompt)")


def test_tofu_neighbours_default_to_real_authors(tofu_dir):
    from unstar_trl.commands.unlearn import UnlearnArguments, _load_data
    from unstar_trl.data import load_records

    data = _load_data(UnlearnArguments(data_dir=str(tofu_dir), forget_split="forget01", retain_split="retain99"))
    assert data.neighbor == load_records(tofu_dir, split="real_authors") and data.neighbor


def test_a_format_the_model_was_not_taught_is_a_warning_in_the_report(chat_world, tmp_path, capsys):
    code, err = run(["--method", "grad_ascent", "--model_name_or_path", chat_world / "model", "--data_dir",
                     chat_world / "data", "--output_dir", tmp_path / "out", "--max_steps", 1, "--prompt_template",
                     "Question: {question}\nAnswer:"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "unlearn_report.json").read_text())
    assert report["before"]["forget_acc"] < 1.0 and report["prompt_template"] == "Question: {question}\nAnswer:"
    # the tests' chat model answers none of them in this format on the default world (seed 0), 2 of 6 on seed 1
    warned = [warning for warning in report["warnings"] if warning.startswith(
        "0/6 forget facts are known under the prompt format 'Question: {question}\\nAnswer:'")]
    assert len(warned) == (report["before"]["forget_acc"] == 0.0)
    assert json.loads((tmp_path / "out" / "unstar_prompts.json").read_text())["prompt_template"] == (
        "Question: {question}\nAnswer:")
# ---- UnSTAR's recipes: the method, its ablations, a teacher, and "auto" on a model without skills ---------------

ABLATIONS = {"world_unstar_template.yaml": {"generator": "template"},
             "world_unstar_no_rationale.yaml": {"with_rationale": False},
             "world_unstar_round_only.yaml": {"refit": "round"}}
"""Each ablation recipe and the one field where it differs from world_unstar.yaml."""


PLUS = {"retain_neighbors": True, "retain_weight": 4.0, "reversed_loss_weight": 0.3, "reversed_loss_type": "stranger"}
"""Where world_unstar_plus.yaml differs from world_unstar.yaml: what issue 17 measured to help."""
PLUS_ABLATIONS = {"no_neighbors": {"retain_neighbors": False}, "no_floor": {"reversed_loss_weight": 0.0},
                  "stranger_answers": {"stranger_answers": True}}
"""Each UnSTAR-plus ablation (world_unstar_plus_<name>.yaml) and the one field where it differs from UnSTAR-plus."""


def unstar_fields(recipe: Path, world_dir: Path, tmp_path: Path) -> dict:
    from unstar_trl.commands.unlearn import parse

    script_args, config, _, _ = parse(["--config", str(recipe), "--model_name_or_path", str(world_dir / "model"),
                                       "--data_dir", str(world_dir / "data"), "--output_dir", str(tmp_path)])
    assert script_args.method == "unstar" and config.bf16 is False, recipe.name
    return {key: value for key, value in config.to_dict().items() if key != "logging_dir"}


@pytest.mark.parametrize("form", ["", "_targeted"])
def test_each_unstar_ablation_recipe_differs_in_the_one_field_it_is_named_for(world_dir, tmp_path, form):
    unstar = unstar_fields(RECIPES / f"world_unstar{form}.yaml", world_dir, tmp_path)
    assert unstar["generator"] == "auto" and unstar["with_rationale"] is True and unstar["refit"] == "replay"
    for name, changed in ABLATIONS.items():
        recipe = RECIPES / name.replace(".yaml", f"{form}.yaml")
        fields = unstar_fields(recipe, world_dir, tmp_path)
        assert {key: value for key, value in fields.items() if unstar[key] != value} == changed, recipe.name
        method = name.removeprefix("world_").removesuffix(".yaml")  # how a bench row finds it
        assert method_recipe(method, targeted=bool(form)) == read_recipe(recipe)


@pytest.mark.parametrize("form", ["", "_targeted"])
def test_unstar_plus_is_unstar_with_its_ingredients_and_each_of_its_ablations_drops_one(world_dir, tmp_path, form):
    unstar = unstar_fields(RECIPES / f"world_unstar{form}.yaml", world_dir, tmp_path)
    plus = unstar_fields(RECIPES / f"world_unstar_plus{form}.yaml", world_dir, tmp_path)
    assert {key: value for key, value in plus.items() if unstar[key] != value} == PLUS
    for name, changed in PLUS_ABLATIONS.items():
        recipe = RECIPES / f"world_unstar_plus_{name}{form}.yaml"
        fields = unstar_fields(recipe, world_dir, tmp_path)
        assert {key: value for key, value in fields.items() if plus[key] != value} == changed, recipe.name
        assert method_recipe(f"unstar_plus_{name}", targeted=bool(form)) == read_recipe(recipe)


def unlearn_rows(argv: list, capsys) -> tuple[dict, list[dict]]:
    """Run `unstar unlearn` in this process; its report and anti-sample rows."""
    code, err = run(argv, capsys)
    assert code == 0, err
    out = Path(argv[argv.index("--output_dir") + 1])
    rows = [json.loads(line) for line in (out / "anti_samples.jsonl").read_text().splitlines()]
    return json.loads((out / "unlearn_report.json").read_text()), rows


@pytest.mark.parametrize("recipe", ["world_unstar.yaml", *ABLATIONS])
def test_each_unstar_recipe_does_what_its_name_says(world_dir, tmp_path, capsys, recipe):
    # a low learning rate leaves facts known after the first round, so that a second one is fitted
    report, rows = unlearn_rows(["--config", RECIPES / recipe, "--model_name_or_path", world_dir / "model",
                                 "--data_dir", world_dir / "data", "--output_dir", tmp_path / "out",
                                 "--max_rounds", 2, "--num_train_epochs", 1, "--learning_rate", "1e-5"], capsys)
    answers = {json.loads(line)["id"]: json.loads(line)["answer"]
               for line in (world_dir / "data" / "forget.jsonl").read_text().splitlines()}
    generators = {row["generator"] for row in rows}
    with_rationale = [row for row in rows if row["rationale"]]
    fitted = [log for log in report["round_log"] if log["steps"]]
    assert len(fitted) == 2
    if recipe == "world_unstar_template.yaml":
        assert generators == {"template"} and report["generator"] == {"kind": "template", "why": None}
        return
    assert generators == {"self_taught"} and report["generator"] == {"kind": "self", "why": None}
    if recipe == "world_unstar_no_rationale.yaml":
        assert not with_rationale
        return
    assert len(with_rationale) >= len(rows) / 2  # measured: 90% or more on each of six world seeds
    for row in with_rationale:
        assert contains_answer(row["rationale"], row["wrong_answer"])
        assert not contains_answer(row["rationale"], answers[row["source_id"]])
    batch, epochs = 8, 1
    kept = [log["kept"] for log in fitted]
    replayed = 0 if recipe == "world_unstar_round_only.yaml" else min(kept[0], kept[1])  # replay_ratio 1
    fitted_per_round = [kept[0], kept[1] + replayed]
    assert [log["steps"] for log in fitted] == [epochs * -(-n // batch) for n in fitted_per_round]


def test_auto_falls_back_to_the_template_generator_in_one_line_on_a_model_without_skills(world_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(world_dir / "model", model)
    prompts = json.loads((model / PROMPTS_FILE).read_text())
    (model / PROMPTS_FILE).write_text(json.dumps({**prompts, "skill_prompts": None}))  # as a TOFU knowledge model
    out = tmp_path / "out"
    done = subprocess.run(["unstar", "unlearn", "--config", str(RECIPES / "world_unstar.yaml"), "--model_name_or_path",
                           str(model), "--data_dir", str(world_dir / "data"), "--output_dir", str(out),
                           "--max_rounds", "1", "--max_steps", "1", "--disable_tqdm", "true"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if "generator" in line]
    report = json.loads((out / "unlearn_report.json").read_text())
    assert report["generator"]["kind"] == "template" and said == [f"unstar: warning: {report['generator']['why']}"]
    assert report["generator"]["why"] in report["warnings"]
    assert "taught no skill prompts" in said[0]
    rows = (out / "anti_samples.jsonl").read_text().splitlines()
    assert rows and {json.loads(row)["generator"] for row in rows} == {"template"}


def test_a_teacher_model_of_another_world_seed_writes_the_anti_samples(world_dir, tmp_path, capsys, monkeypatch):
    from unstar_trl import models
    from unstar_trl.testbed.embedded_world import SKILL_PROMPTS, build_world, training_texts
    from unstar_trl.testbed.knowledge_model import train_knowledge_model
    from unstar_trl.testbed.model_sizes import KnowledgeModelConfig

    # a quick teacher: one model (no retain model) of another world, so another tokenizer, taught its facts and the
    # skills for 5 epochs, with no accuracy bar to top up to: its skills suffice
    teacher = tmp_path / "teacher"
    train_knowledge_model(training_texts(build_world(seed=1, people=10)), teacher / "model",
                          KnowledgeModelConfig(seed=1, epochs=5), skill_prompts=SKILL_PROMPTS, progress=False)
    loaded, load_model = [], models.load_model
    monkeypatch.setattr(models, "load_model", lambda source, **kwargs: loaded.append(Path(source)) or load_model(
        source, **kwargs))
    report, rows = unlearn_rows(["--config", RECIPES / "world_unstar.yaml", "--model_name_or_path",
                                 world_dir / "model", "--data_dir", world_dir / "data", "--output_dir",
                                 tmp_path / "out", "--generator", teacher / "model", "--max_rounds", 1,
                                 "--writer_check_bar", 0], capsys)  # the teacher path; the check: test_writer_check
    assert teacher / "model" in loaded  # through the one safe loader
    assert report["generator"] == {"kind": str(teacher / "model"), "why": None}
    assert rows and {row["generator"] for row in rows} == {f"teacher:{teacher / 'model'}"}
    assert report["after"]["forget_acc"] < report["before"]["forget_acc"]


def test_unlearn_help_leads_with_our_fields_and_fits_two_screens(capsys):
    assert main(["unlearn", "--help"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert len(lines) <= 100 and max(map(len, lines)) <= 120  # two screens of 50 lines, before any inherited option
    for flag in ("--config", "--method", "--generator", "--max_rounds", "--reversed_loss_weight", "--data_dir",
                 "--output_dir", "--model_name_or_path"):
        assert f"  {flag}" in text, flag
    assert "(default: the recipe's, else unstar)" in " ".join(text.split()) and "--help-all" in text
    assert "--lr_scheduler_type" not in text  # TrlParser's full list is one flag away
    assert main(["unlearn", "--method", "npo", "--help"]) == 0
    assert "  --beta" in capsys.readouterr().out


@pytest.mark.parametrize("command, shown", [("world", "(default: 0)"), ("bench", "(default: 0,2,3)"),
                                            ("eval", "(default: unstar_*)"), ("sweep", "(default: 0.05)")])
def test_other_commands_show_each_default_once(command, shown, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert done.value.code == 0 and "(default: None)" not in text and "(default: False)" not in text
    assert not re.search(r"\(default: [^)]*\) \(default:", text)  # a default the help states is not repeated
    assert shown in text  # real defaults are still shown

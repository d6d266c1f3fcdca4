"""The learning-rate sweep: every rate of one grid runs a method under the one stopping rule (stop at the first probe of
the forget questions that reads at most `target`, within a step budget; `method/trainers/forget_stop.py`), and one
rule picks the rate. The bench tunes its recipes with it on a world it does not report (`benchmarks/sweep.py`); a user
tunes a recipe for their own model on their own data with `unstar sweep`, which writes the recipe it picked.

The rule: the rate whose run reaches the target within `MARGIN` of the step budget (a rate that needs nearly all of
it would miss it on other seeds) and then keeps the most held-out knowledge (mean of retain and neighbour accuracy);
when none does, the one that forgets most.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path
from typing import Callable

import yaml

GRID = (1e-4, 3e-4, 1e-3, 3e-3)
"""Learning rates tried for every method."""
MARGIN = 0.75
"""A rate must reach the target within this share of the step budget."""


@dataclasses.dataclass(frozen=True)
class StoppingRule:
    """The one stopping rule every swept run trains under (the bench's defaults)."""

    target: float = 0.05
    """Stop at the first probe of the forget questions that reads at most this accuracy..."""
    probe_every: int = 2
    """...probed every this many optimizer steps..."""
    step_budget: int = 60
    """...or after this many optimizer steps (for UnSTAR: all rounds together)."""


STOPPING_RULE = StoppingRule()
"""The one stopping rule of the bench (`BenchSettings`' defaults), of benchmarks/sweep.py and of every shipped world
recipe (`stop_forget_acc`, `forget_probe_every`, `max_steps`: tests/test_unlearn_cli.py holds them to it)."""
BATCH_SIZE = 8
"""Forget (and retain) examples per batch for every method: the bench's and every shipped world recipe's."""


def sweep(run: Callable[[float], dict], rule: StoppingRule, grid: tuple[float, ...] = GRID,
          say: Callable[[str], None] = print) -> dict:
    """{"chosen": learning rate, "runs": [{"learning_rate", "forget_acc", "kept", "steps", "diverged"}, ...]}, where
    `run(learning_rate)` trains once under `rule` and returns the run's figures; one line per run through `say`."""
    runs = []
    for learning_rate in grid:
        runs.append({"learning_rate": learning_rate, **run(learning_rate)})
        say(run_line(runs[-1]))
    return {"chosen": choose(runs, rule)["learning_rate"], "runs": runs}


def choose(runs: list[dict], rule: StoppingRule) -> dict:
    """The run the sweep picks (see the module)."""
    reached = [run for run in runs if run["forget_acc"] <= rule.target and run["steps"] <= MARGIN * rule.step_budget]
    return max(reached, key=lambda run: run["kept"]) if reached else min(runs, key=lambda run: run["forget_acc"])


def keeps_less_warning(found: dict) -> str | None:
    """A line when the chosen rate keeps less than 0.9x the held-out knowledge another rate kept: on this model and
    data no rate of the grid both forgets and keeps (None otherwise)."""
    chosen = next(run for run in found["runs"] if run["learning_rate"] == found["chosen"])
    best = max(found["runs"], key=lambda run: run["kept"])
    if chosen["kept"] >= 0.9 * best["kept"]:
        return None
    return (f"the chosen learning rate {chosen['learning_rate']:g} keeps {chosen['kept']:.2f} of the held-out "
            f"knowledge where {best['learning_rate']:g} kept {best['kept']:.2f} (forget {best['forget_acc']:.2f}): no "
            "rate of the grid both forgets and keeps; try a retain term, another grid (--grid), and check that the "
            "data's answers are written as the model says them")


def run_line(run: dict) -> str:
    return (f"lr {run['learning_rate']:.0e}: forget {run['forget_acc']:.2f}, kept {run['kept']:.2f}, {run['steps']} "
            f"steps{' (diverged)' if run['diverged'] else ''}")


def kept_accuracy(model, tokenizer, data, prompt_template: str | None) -> tuple[float, float]:
    """(forget accuracy, held-out kept accuracy: the mean of eval-only retain and neighbour accuracy, over those the
    data has) of a model, by the greedy probe."""
    from ..method.probe import probe_accuracy

    kept = [probe_accuracy(model, tokenizer, records, prompt_template)
            for records in (data.retain_eval, data.neighbor) if records]
    return probe_accuracy(model, tokenizer, data.forget, prompt_template), sum(kept) / len(kept) if kept else 0.0


def run_recipe(recipe: dict, method: str, model_dir: str, data, rule: StoppingRule, learning_rate: float) -> dict:
    """One swept run of a user's recipe: `method` with the recipe's fields (its PEFT fields too), on a fresh load of
    `model_dir`, unlearning `data.forget` with `data.retain_train`, at `learning_rate` under `rule`; its figures."""
    from trl import ModelConfig, get_peft_config

    from ..method.trainers import METHODS, DivergenceError
    from ..models import load_model
    from ..progress import quiet_progress
    from ..recipes import config_from_recipe

    trainer_class, config_class = METHODS[method]
    model, tokenizer = load_model(model_dir)
    with tempfile.TemporaryDirectory() as scratch:
        config = config_from_recipe(config_class, recipe, output_dir=scratch, learning_rate=learning_rate,
                                    stop_forget_acc=rule.target, forget_probe_every=rule.probe_every,
                                    max_steps=rule.step_budget, save_strategy="no", report_to="none",
                                    disable_tqdm=True)
        peft = get_peft_config(config_from_recipe(ModelConfig, recipe, model_name_or_path=model_dir))
        trainer = trainer_class(model=model, args=config, processing_class=tokenizer, train_dataset=data.forget,
                                retain_dataset=data.retain_train, peft_config=peft)
        quiet_progress(trainer)
        diverged = None
        try:
            trainer.train()
        except DivergenceError as error:  # the trainer kept the last good weights: score those
            diverged = error.reason
    forget_acc, kept = kept_accuracy(trainer.model.eval(), tokenizer, data, trainer.prompt_template)
    return {"forget_acc": forget_acc, "kept": kept, "steps": trainer.state.global_step, "diverged": diverged}


def swept_recipe(text: str, values: dict) -> str:
    """A recipe's YAML `text` with each key of `values` set (its line replaced, else added at the end), each marked
    as the sweep's."""
    for key, value in values.items():
        line = f"{key}: {yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}" \
               "   # unstar sweep"
        pattern = rf"^{re.escape(key)}:.*$"
        if re.search(pattern, text, flags=re.M):
            text = re.sub(pattern, lambda _: line, text, flags=re.M)
        else:
            text = text.rstrip("\n") + ("\n" if text.strip() else "") + line + "\n"
    return text


def recipe_values(found: dict, rule: StoppingRule, model_dir: str | Path, data_dir: str | Path) -> dict:
    """The keys `unstar sweep` writes into the recipe: the chosen rate, the stopping rule it was chosen under, and the
    model and data it was chosen for."""
    return {"learning_rate": found["chosen"], "stop_forget_acc": rule.target, "forget_probe_every": rule.probe_every,
            "max_steps": rule.step_budget, "model_name_or_path": str(model_dir), "data_dir": str(data_dir)}

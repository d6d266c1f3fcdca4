"""The one hyperparameter sweep every method's world recipe comes from: the same learning-rate grid for every
method, under the bench's own stopping rule, batch size and step budget, on a world seed the bench does not report.

The grid, the rule that picks a rate and the runs' figures are `unstar_trl.evaluation.sweep`'s (which `unstar sweep`
runs on a user's model and data); untuned baselines are the most common complaint about published unlearning tables:
this script is how ours are tuned, and `--write` puts its choices into recipes/world_<method>.yaml.

    python benchmarks/sweep.py --world /tmp/sweep-world [--methods unstar,npo] [--write]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import datasets

from unstar_trl.data import load_unlearning_data
from unstar_trl.evaluation.bench_runner import BenchSettings, run_method
from unstar_trl.evaluation.sweep import GRID, StoppingRule, kept_accuracy
from unstar_trl.evaluation.sweep import sweep as sweep_rates
from unstar_trl.method.trainers import METHODS
from unstar_trl.recipes import read_recipe, recipes_dir
from unstar_trl.testbed.embedded_world import BENCH_FORGET_PEOPLE, BENCH_PEOPLE, BENCH_TARGETED
from unstar_trl.testbed.world_folder import WORLD_FILE, build_world_dir

SWEEP_WORLD_SEED = 1
"""The sweep tunes on a world the default bench leaves out (its worlds are 0, 2 and 3)."""


def sweep(world: Path, methods: list[str], settings: BenchSettings, grid: tuple[float, ...] = GRID) -> dict[str, dict]:
    """{method: {"chosen": learning rate, "runs": [{"learning_rate", "forget_acc", "kept", "steps"}, ...]}}."""
    data = load_unlearning_data(world / "data")
    rule = StoppingRule(target=settings.target, probe_every=settings.probe_every, step_budget=settings.step_budget)
    found = {}
    for method in methods:
        def run(learning_rate: float, method: str = method) -> dict:
            done = run_method(method, settings.seeds[0], world, data.forget, data.retain_train, settings,
                              learning_rate=learning_rate)
            forget_acc, kept = kept_accuracy(done["model"], done["tokenizer"], data, done["template"])
            return {"forget_acc": forget_acc, "kept": kept, "steps": done["steps"],
                    "diverged": done["diverged"] is not None}

        found[method] = sweep_rates(run, rule, grid, say=lambda line, method=method: print(
            f"{method:>16} {line}", flush=True))
    return found


def write_recipes(found: dict[str, dict]) -> None:
    """Put each chosen learning rate into every world recipe of the method (its ablations and targeted forms too),
    with a comment naming this sweep."""
    for method, result in found.items():
        for path in sorted(p for p in recipes_dir().glob("world_*.yaml") if read_recipe(p).get("method") == method):
            text = re.sub(r"^learning_rate: .*$", f"learning_rate: {result['chosen']:.1e}   # benchmarks/sweep.py",
                          path.read_text(), flags=re.M)
            path.write_text(text)
            print(f"wrote learning_rate {result['chosen']:.1e} to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default="sweep-world", help="world folder (built there, seed 1, if missing)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods (the recipes of a "
                        "method's ablations take its rate)")
    parser.add_argument("--write", action="store_true", help="write the chosen rates into recipes/world_*.yaml")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    world = Path(args.world)
    if not (world / WORLD_FILE).is_file():
        build_world_dir(world, seed=SWEEP_WORLD_SEED, people=BENCH_PEOPLE, forget_people=BENCH_FORGET_PEOPLE,
                        targeted=BENCH_TARGETED)
    found = sweep(world, args.methods.split(","), BenchSettings(seeds=(0,)))
    print("\n| method | " + " | ".join(f"lr {rate:.0e}" for rate in GRID) + " | chosen |")
    print("|---|" + "---:|" * (len(GRID) + 1))
    for method, result in found.items():
        cells = [f"{run['forget_acc']:.2f} / {run['kept']:.2f} / {run['steps']}" for run in result["runs"]]
        print(f"| {method} | " + " | ".join(cells) + f" | {result['chosen']:.0e} |")
    print("\ncells: forget accuracy / held-out kept accuracy / steps to the stop")
    if args.write:
        write_recipes(found)


if __name__ == "__main__":
    main()

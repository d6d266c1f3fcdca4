"""How unlearning's cost grows with the forget set: one world, forget sets of growing size drawn from its forget
people, UnSTAR and two baselines under the bench's stopping rule; per set size, wall seconds, trained tokens and
optimizer steps per forgotten fact, peak RSS, and forget and neighbour accuracy (so that speed is never bought with
quality).

Each run is a fresh process (its peak RSS is its own). Writes OUT/scaling.json, OUT/scaling.md and OUT/scaling.png.

    python benchmarks/scaling.py --world /tmp/scaling-world [--people 60 --forget-people 20] [--sets 2,6,20]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets

from processes import in_own_process, peak_rss_mb  # beside this script
from unstar_trl.data import load_unlearning_data
from unstar_trl.evaluation.bench_measures import probed
from unstar_trl.evaluation.bench_runner import BenchSettings, run_method
from unstar_trl.models import load_model
from unstar_trl.testbed.embedded_world import BENCH_TARGETED
from unstar_trl.testbed.world_folder import MODEL_DIR, WORLD_FILE, build_world_dir
from unstar_trl.text import AUTO, resolve_prompt_template

METHODS = ("unstar", "grad_diff", "npo")
"""UnSTAR and the two baselines beside it."""
COLUMNS = (("facts", "facts"), ("forgotten", "forgotten"), ("steps", "steps"), ("steps/fact", "steps_per_fact"),
           ("tokens/fact", "tokens_per_fact"), ("seconds", "seconds"), ("s/fact", "seconds_per_fact"),
           ("peak RSS MB", "peak_rss_mb"), ("forget acc", "forget_acc"), ("neighbour acc", "neighbor_acc"))
"""The table's columns: header and results.json key."""


def forget_sets(forget: list[dict], people_per_set: list[int]) -> list[list[dict]]:
    """The forget records of the first k forget people (in the split's order), for each k (at most all of them):
    each set holds the smaller ones."""
    people = list(dict.fromkeys(record["subject"] for record in forget))
    return [[record for record in forget if record["subject"] in people[:count]]
            for count in dict.fromkeys(min(count, len(people)) for count in people_per_set)]


def measure_run(method: str, world: Path, forget_ids: list[str], settings: BenchSettings) -> dict:
    """One run (in its own process): `method` on the forget records `forget_ids` under `settings`; its cost and
    what it leaves known."""
    datasets.disable_progress_bars()
    data = load_unlearning_data(world / "data")
    forget = [record for record in data.forget if record["id"] in set(forget_ids)]
    model, tokenizer = load_model(world / MODEL_DIR)
    before = probed(model, tokenizer, forget, resolve_prompt_template(AUTO, tokenizer, world / MODEL_DIR))
    run = run_method(method, settings.seeds[0], world, forget, data.retain_train, settings)
    after = probed(run["model"], run["tokenizer"], forget, run["template"])
    neighbor = probed(run["model"], run["tokenizer"], data.neighbor, run["template"])
    forgotten = round(sum(before.values()) - sum(after.values()))
    per_fact = max(forgotten, 1)
    return {"method": method, "facts": len(forget), "forgotten": forgotten, "steps": run["steps"],
            "tokens": run["tokens"], "seconds": round(run["seconds"], 1), "split": run["split"],
            "steps_per_fact": run["steps"] / per_fact, "tokens_per_fact": run["tokens"] / per_fact,
            "seconds_per_fact": run["seconds"] / per_fact, "forget_acc": _mean(after),
            "neighbor_acc": _mean(neighbor), "diverged": run["diverged"],
            "peak_rss_mb": peak_rss_mb()}


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table, one per method and forget-set size."""
    lines = ["| method | " + " | ".join(header for header, _ in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for row in rows:
        cells = [_cell(row[key]) for _, key in COLUMNS]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Steps and seconds per forgotten fact against the forget set's size, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, (key, label) in zip(axes, (("steps_per_fact", "optimizer steps per forgotten fact"),
                                         ("seconds_per_fact", "wall seconds per forgotten fact"))):
        for method in dict.fromkeys(row["method"] for row in rows):
            mine = [row for row in rows if row["method"] == method]
            axis.plot([row["facts"] for row in mine], [row[key] for row in mine], marker="o", label=method)
        axis.set_xlabel("forget set (facts)")
        axis.set_ylabel(label)
        axis.set_ylim(bottom=0)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if value < 10 else f"{value:,.0f}"
    return f"{value:,}"


def _mean(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values) if values else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--world", default="scaling-world", help="world folder (built there if it has no "
                        "world.json; an existing one is used whatever its size)")
    parser.add_argument("--people", type=int, default=60, help="people of a world built here (the knowledge "
                        "model holds 60 at its accuracy bar; at 200 it does not and the build stops with an error)")
    parser.add_argument("--forget-people", type=int, default=20, help="forget people of a world built here (7 facts "
                        "each)")
    parser.add_argument("--seed", type=int, default=0, help="world seed of a world built here")
    parser.add_argument("--sets", default="2,6,20", help="forget people in each forget set (clipped to the "
                        "world's); 2,6,20 is 14, 42 and 140 facts")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated bench rows")
    parser.add_argument("--step-budget", type=int, default=400,
                        help="most optimizer steps of a run (UnSTAR: all rounds together); the bench's 60 cuts "
                        "UnSTAR's first round short from about 40 facts on")
    parser.add_argument("--output-dir", default="scaling", help="where scaling.json, .md and .png go")
    args = parser.parse_args()
    world, out = Path(args.world), Path(args.output_dir)
    if not (world / WORLD_FILE).is_file():
        print(f"building a world of {args.people} people ({args.forget_people} to forget) in {world}", flush=True)
        build_world_dir(world, seed=args.seed, people=args.people, forget_people=args.forget_people,
                        targeted=BENCH_TARGETED)  # no targeted run here: the fewest the bench's world has
    about = json.loads((world / WORLD_FILE).read_text())
    settings = BenchSettings(seeds=(0,), step_budget=args.step_budget)
    sets = forget_sets(load_unlearning_data(world / "data").forget, [int(k) for k in args.sets.split(",")])
    print(f"world {world}: {about['people']} people; forget sets of {', '.join(str(len(s)) for s in sets)} facts; "
          f"stop at forget accuracy {settings.target} (probed every {settings.probe_every} steps) or "
          f"{settings.step_budget} steps", flush=True)
    rows = []
    for method in args.methods.split(","):
        for forget in sets:
            row = in_own_process(measure_run, method, world, [record["id"] for record in forget], settings)
            rows.append(row)
            print(f"{method:>10} {row['facts']:>4} facts: {row['forgotten']} forgotten, {row['steps']} steps, "
                  f"{row['seconds']:.0f} s, forget {row['forget_acc']:.2f}, neighbour {row['neighbor_acc']:.2f}",
                  flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps({"world": about, "settings": vars(args), "rows": rows}, indent=1))
    table = markdown_table(rows)
    (out / "scaling.md").write_text(table)
    plot(rows, out / "scaling.png")
    print("\n" + table + f"\nwrote {out / 'scaling.json'}, {out / 'scaling.md'}, {out / 'scaling.png'}")


if __name__ == "__main__":
    main()

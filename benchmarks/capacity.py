"""Does size change the story? The bench's rows on knowledge models of each size (`unstar world --model-size`):
per size, each row's learning rate is swept (benchmarks/sweep.py's grid and rule) on a world no table reports, then
every row runs once on each of `--worlds` worlds (world seeds 0, 1, ...; one unlearning seed each) under the bench's
one stopping rule. Writes OUT/capacity.json, OUT/capacity.md (each removal and keeping column per row and size, mean
over worlds with a Student t interval over them) and OUT/capacity.png (each column against parameters), and keeps
every world's bench output under OUT/<size>/world-<seed>/.

Worlds are built once and reused from --worlds-dir (`<size>/seed-<k>`, `<size>/sweep`): size m takes 8 to 40
minutes per world on 2 CPU cores and l about an hour or more (docs/sizes.md), so build them ahead or leave them
running. A rerun under the same grid and settings reads back, row by row, each row's sweep and each world's bench
of it that an earlier run finished (OUT/<size>/sweep.json, results.json under OUT/<size>/world-<k>/): a stopped run
goes on, and an added row or size costs only itself.

    python benchmarks/capacity.py --sizes s,m,l --worlds 2 --output-dir capacity [--worlds-dir capacity-worlds]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

REMOVAL = ("forget_acc", "paraphrase_acc", "targeted_acc", "mcq_acc", "logit_lens_acc", "relearn_acc",
           "quant4_forget_acc", "mia_auc")
KEEPING = ("retain_heldout_acc", "neighbor_acc", "sibling_heldout_acc")
"""The columns compared across sizes: what a row removes (lower is more removed; MIA AUC 0.5 is none left to
find) and what it keeps (higher is better)."""
ROWS = ("unstar", "unstar_plus", "npo", "simnpo", "altpo")
"""The bench's main rows and its strongest new peer, AltPO: in the default bench the one peer that brings MCQ and
the logit lens to the retain model's while keeping most neighbours (docs/bench.md)."""
REFERENCES = ("target", "retain_model")
"""The rows every method is read against: the knowledge model before unlearning and the retain model, which never
saw the forget facts (what removal should look like)."""
SWEEP_SEED = 100
"""The world seed the learning rates are swept on (no reported world has it)."""
QUICK_GRID = (1e-3, 3e-3)


def world_path(worlds_dir: Path, size: str, seed: int | None) -> Path:
    return worlds_dir / size / ("sweep" if seed is None else f"seed-{seed}")


def ensure_world(path: Path, size: str, seed: int, progress: bool = False) -> Path:
    """The bench's world (24 people, 4 of them forgotten, 6 targeted) of `size` and `seed` at `path`, built unless
    one is there; one of another size there is refused."""
    from unstar_trl.testbed.embedded_world import BENCH_FORGET_PEOPLE, BENCH_PEOPLE, BENCH_TARGETED
    from unstar_trl.testbed.model_sizes import DEFAULT_SIZE
    from unstar_trl.testbed.world_folder import WORLD_FILE, build_world_dir

    if (path / WORLD_FILE).is_file():
        held = json.loads((path / WORLD_FILE).read_text()).get("model_size", DEFAULT_SIZE)
        if held != size:
            raise SystemExit(f"capacity: {path} holds a size-{held} world, not {size}: give another --worlds-dir")
        return path
    print(f"building the size-{size} world of seed {seed} in {path}", flush=True)
    build_world_dir(path, seed=seed, people=BENCH_PEOPLE, forget_people=BENCH_FORGET_PEOPLE, targeted=BENCH_TARGETED,
                    model_size=size, progress=progress)
    return path


def run_size(size: str, worlds: int, rows: list[str], worlds_dir: Path, out: Path, settings, grid) -> dict:
    """{"parameters", "rates": {row: chosen rate}, "sweep": ..., "worlds": [bench results of each world]}. What an
    earlier run finished under the same grid and settings is read back, row by row: each row's sweep
    (OUT/<size>/sweep.json) and each world's bench of it (a results.json under OUT/<size>/world-<k>/), so that a
    stopped run goes on where it stopped and an added row or size costs only itself."""
    import dataclasses

    from sweep import sweep  # beside this script
    from unstar_trl.io import write_json

    asked = {"grid": list(grid), "settings": dataclasses.asdict(settings)}
    swept = earlier_sweep(out / size / "sweep.json", asked)
    missing = [row for row in rows if row not in swept]
    if missing:
        world = ensure_world(world_path(worlds_dir, size, None), size, SWEEP_SEED)
        swept.update(sweep(world, missing, settings, grid=grid))
        write_json(out / size / "sweep.json", {**asked, "found": swept})
    rates = {row: swept[row]["chosen"] for row in rows}
    benched = [world_bench(ensure_world(world_path(worlds_dir, size, seed), size, seed), rows, rates,
                           out / size / f"world-{seed}", settings) for seed in range(worlds)]
    parameters = json.loads((world_path(worlds_dir, size, 0) / "world.json").read_text())["parameters"]
    return {"parameters": parameters, "rates": rates, "sweep": {row: swept[row] for row in rows},
            "worlds": benched}


def earlier_sweep(path: Path, asked: dict) -> dict:
    """{row: its sweep} that an earlier run wrote at `path` under `asked` (grid and settings), else {}."""
    if not path.is_file():
        return {}
    found = json.loads(path.read_text())
    if any(as_json(value) != found.get(key) for key, value in asked.items()):
        return {}
    print(f"reusing the sweep of {', '.join(found['found'])} in {path}", flush=True)
    return found["found"]


def world_bench(world: Path, rows: list[str], rates: dict, out: Path, settings) -> dict:
    """{"target", "retain_model", "methods": {row: figures}} of `rows` on `world`, each at its rate: the rows an
    earlier bench under `out` ran at that rate and these settings are read back, the others run into a folder of
    their own there (`out` itself the first time)."""
    import dataclasses

    from unstar_trl.evaluation.bench_runner import BenchWorld, run_bench

    same = as_json(dataclasses.asdict(dataclasses.replace(settings, learning_rates={})))
    merged = {"methods": {}}
    for path in sorted(out.glob("**/results.json")):
        result = json.loads(path.read_text())
        if {**result["settings"], "learning_rates": {}} != same:
            continue
        kept = {row: figures for row, figures in result["methods"].items()
                if row in rows and result["settings"]["learning_rates"].get(row) == rates[row]}
        if kept:
            print(f"reusing {', '.join(kept)} from {path}", flush=True)
        merged = {"target": result["target"], "retain_model": result["retain_model"],
                  "methods": {**kept, **merged["methods"]}}
    missing = [row for row in rows if row not in merged["methods"]]
    if missing:
        result = run_bench([BenchWorld(world)], missing, out / "+".join(missing) if merged["methods"] else out,
                           settings=dataclasses.replace(settings, learning_rates={row: rates[row] for row in missing}),
                           progress=False)
        merged = {"target": result["target"], "retain_model": result["retain_model"],
                  "methods": {**merged["methods"], **result["methods"]}}
    return merged


def as_json(value):
    """`value` as it reads back from JSON (tuples as lists)."""
    return json.loads(json.dumps(value))


def summarise(by_size: dict[str, dict], rows: list[str]) -> list[dict]:
    """One entry per size and row (the knowledge model's as `target`, the retain model's as `retain_model`): each
    column's value in each world, their mean and its 95% interval over worlds."""
    from unstar_trl.evaluation.intervals import seed_interval

    table = []
    for size, found in by_size.items():
        for row in (*REFERENCES, *rows):
            values = {column: [(bench[row] if row in REFERENCES else bench["methods"][row])[column]
                               for bench in found["worlds"]] for column in REMOVAL + KEEPING}
            entry = {"size": size, "parameters": found["parameters"], "row": row,
                     "learning_rate": found["rates"].get(row)}
            for column, seen in values.items():
                present = [value for value in seen if value is not None]
                entry[column] = sum(present) / len(present) if present and len(present) == len(seen) else None
                entry[f"{column}_ci95"] = seed_interval(seen) if entry[column] is not None and len(seen) > 1 else None
                entry[f"{column}_worlds"] = seen
            table.append(entry)
    return table


def markdown_table(table: list[dict]) -> str:
    columns = REMOVAL + KEEPING
    lines = ["| size | parameters | row | lr | " + " | ".join(columns) + " |", "|---|---:|---|---:|" +
             "---:|" * len(columns)]
    for entry in table:
        cells = [_cell(entry[column], entry[f"{column}_ci95"], entry[f"{column}_worlds"]) for column in columns]
        rate = f"{entry['learning_rate']:.0e}" if entry["learning_rate"] else ""
        lines.append(f"| {entry['size']} | {entry['parameters']:,} | {entry['row']} | {rate} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines) + ("\n\nremoval columns (lower: more removed; mia_auc 0.5: nothing to find): "
                               f"{', '.join(REMOVAL)}; keeping columns (higher: more kept): {', '.join(KEEPING)}; "
                               "mean over worlds [95% Student t interval over worlds] (each world's value)\n")


def _cell(value, interval, worlds) -> str:
    if value is None:
        return "-"
    return (f"{value:.2f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")
            + (f" ({' / '.join(f'{seen:.2f}' for seen in worlds)})" if len(worlds) > 1 else ""))


def plot(table: list[dict], path: Path) -> None:
    """Each removal and keeping column against parameters (log scale), one line per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = REMOVAL + KEEPING
    figure, axes = plt.subplots(2, (len(columns) + 1) // 2, figsize=(21, 7), squeeze=False)
    for axis, column in zip(axes.flat, columns):
        for row in dict.fromkeys(entry["row"] for entry in table):
            mine = [entry for entry in table if entry["row"] == row and entry[column] is not None]
            axis.plot([entry["parameters"] for entry in mine], [entry[column] for entry in mine], marker="o",
                      label=row, linestyle={"target": ":", "retain_model": "--"}.get(row, "-"))
        axis.set_xscale("log")
        axis.set_title(f"{column} ({'removal' if column in REMOVAL else 'keeping'})")
        axis.set_xlabel("parameters")
        axis.set_ylim(-0.02, 1.02)
    for axis in list(axes.flat)[len(columns):]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", default="s,m,l", help="comma-separated model sizes (s, m, l)")
    parser.add_argument("--worlds", type=int, default=2, help="reported worlds per size (world seeds 0, 1, ...)")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated bench rows")
    parser.add_argument("--output-dir", default="capacity", help="where capacity.json, .md and .png go")
    parser.add_argument("--worlds-dir", default=None, help="worlds built or reused here (default: OUT/worlds)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where unlearning runs (worlds always build on CPU, one thread per model, so that "
                        "their weights do not hang on the machine)")
    parser.add_argument("--quick", action="store_true", help="the bench's quick settings and a two-rate grid (tests)")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch looks: the trainers would take a GPU they see
    import datasets
    import torch

    from unstar_trl.evaluation.bench_runner import QUICK, BenchSettings
    from unstar_trl.evaluation.sweep import GRID
    from unstar_trl.io import write_json, write_text_atomic
    from unstar_trl.testbed.model_sizes import MODEL_SIZES

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("capacity: --device cuda, but torch sees no CUDA device")
    sizes = [size.strip() for size in args.sizes.split(",") if size.strip()]
    unknown = [size for size in sizes if size not in MODEL_SIZES]
    if not sizes or unknown or args.worlds < 1:
        raise SystemExit(f"capacity: --sizes takes {', '.join(MODEL_SIZES)} (got {args.sizes!r}); --worlds >= 1")
    datasets.disable_progress_bars()
    out = Path(args.output_dir)
    worlds_dir = Path(args.worlds_dir) if args.worlds_dir else out / "worlds"
    rows = [row.strip() for row in args.rows.split(",") if row.strip()]
    settings = QUICK if args.quick else BenchSettings(seeds=(0,))
    grid = QUICK_GRID if args.quick else GRID
    by_size = {size: run_size(size, args.worlds, rows, worlds_dir, out, settings, grid) for size in sizes}
    table = summarise(by_size, rows)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "capacity.json", {"sizes": {size: {key: found[key] for key in ("parameters", "rates", "sweep")}
                                                 for size, found in by_size.items()},
                                       "worlds": args.worlds, "device": args.device, "quick": args.quick,
                                       "table": table})
    write_text_atomic(out / "capacity.md", markdown_table(table))
    plot(table, out / "capacity.png")
    print(markdown_table(table))
    print(f"wrote {out}/capacity.json, capacity.md, capacity.png")


if __name__ == "__main__":
    main()

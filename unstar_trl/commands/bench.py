"""`unstar bench`: every method on several worlds (each its own knowledge model), from the same world's weights and
forget set within each; results.json, results.md and plots in the output folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..testbed.embedded_world import BENCH_FORGET_PEOPLE, BENCH_PEOPLE, BENCH_TARGETED, BENCH_TOFU_AUTHORS
from ..testbed.model_sizes import DEFAULT_SIZE, MODEL_SIZES
from . import HelpFormatter

DEFAULT_METHODS = "unstar,unstar_plus,grad_ascent,grad_diff,grad_ascent_kl,npo,simnpo,idk,altpo,dfmcq,rmu,undial"
"""UnSTAR, UnSTAR-plus (world_unstar_plus.yaml: the ingredients of issue 17), the gradient-ascent-style baselines and
the field's strongest peers (AltPO, DF-MCQ, RMU, UNDIAL)."""
ABLATIONS = "unstar_template,unstar_no_rationale,unstar_round_only"
"""UnSTAR's ablations (world_unstar_<name>.yaml: one field changed each), rows to ask for with --methods."""
DEFAULT_WORLDS = (0, 2, 3)
"""World seeds of the default bench: three knowledge models, the unit of variation between machines (not seed 1,
the world benchmarks/sweep.py tunes the learning rates on)."""
DEFAULT_SEEDS = "0"
"""Unlearning seeds within each world (the worlds vary more than seeds do)."""
NOT_ON_TOFU = ("unstar_plus",)
"""Default rows a TOFU bench leaves out: UnSTAR-plus asks each forget question about strangers, and TOFU's questions
do not name their author."""
TOFU_PROBE_EVERY = 5
"""Steps between the over-steps probes on TOFU, whose answers take ~100 tokens to generate (the world's take 3)."""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="compare unlearning methods on several worlds: forget/retain, targeted, probes, relearning, cost",
        description="On each world (its own knowledge model and retain model, built side by side in "
        "OUT/worlds/<seed>/), run each method from the world's knowledge model on its forget set (recipe defaults "
        "from recipes/world_<method>.yaml), evaluate it, attack it by relearning, and write OUT/results.json (the "
        "figures over all worlds, with intervals over worlds, and each world's own), OUT/results.md and three "
        "plots (forget/retain over steps, methods, forget vs kept).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--worlds", default=None, type=_seeds_of("--worlds"),
                        help=f"comma-separated world seeds, each world built in OUT/worlds/<seed>/ unless it is "
                        f"there (default: {','.join(map(str, DEFAULT_WORLDS))})")
    parser.add_argument("--world", default=None,
                        help="one world folder to reuse instead, whatever its kind and size (built there if it has "
                        "no world.json): a one-world bench")
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help="comma-separated rows: a method (unstar, grad_ascent, ...) or a shipped recipe's name "
                        f"without world_ (UnSTAR's ablations: {ABLATIONS}); on TOFU the default leaves out "
                        f"{', '.join(NOT_ON_TOFU)}")
    parser.add_argument("--data", choices=("world", "tofu"), default=None,
                        help="'world' (default): the embedded fictitious world; 'tofu': a knowledge model trained on "
                        "real TOFU rows (forget01's 2 authors to forget, --authors in all)")
    parser.add_argument("--people", type=int, default=None,
                        help=f"people in an embedded world the bench builds (default: {BENCH_PEOPLE})")
    parser.add_argument("--model-size", choices=tuple(MODEL_SIZES), default=None,
                        help=f"knowledge model of an embedded world the bench builds (default: {DEFAULT_SIZE}; m and "
                        "l take longer to build: docs/sizes.md)")
    parser.add_argument("--data-dir", default=None, help="the TOFU folder (full.jsonl, forget01_perturbed.jsonl, "
                        "retain99.jsonl, ...), with --data tofu")
    parser.add_argument("--authors", type=int, default=None,
                        help=f"TOFU authors the knowledge model learns, with --data tofu (>= 3; default: "
                        f"{BENCH_TOFU_AUTHORS})")
    parser.add_argument("--output-dir", required=True, help="folder for the results and plots")
    parser.add_argument("--seeds", default=DEFAULT_SEEDS, type=_seeds_of("--seeds"),
                        help="comma-separated unlearning seeds: every method runs once per seed on each world")
    parser.add_argument("--quick", action="store_true",
                        help="a few steps per method, first seed only, on every world (for tests)")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    import dataclasses
    import logging

    import transformers

    from ..evaluation.bench_runner import QUICK, WORLDS, BenchSettings, BenchWorld, method_of, run_bench
    from ..io import UsageError, refuse_overwrite
    from ..method.trainers import METHODS

    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    unknown = [name for name in methods if method_of(name) not in METHODS]
    if not methods or unknown:
        raise UsageError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)} or a shipped world_<name> "
                         "recipe" if unknown else "give at least one method")
    if args.world and args.worlds:
        raise UsageError("--world reuses one world folder and --worlds builds worlds in OUT/worlds/: give one")
    if args.world:
        refuse_overwrite(args.output_dir, args.world)
        folders = {None: Path(args.world)}
    else:
        folders = {seed: Path(args.output_dir) / WORLDS / str(seed)
                   for seed in args.worlds or DEFAULT_WORLDS}
    worlds = [_world_builder(args, folder, seed) for seed, folder in folders.items()]
    tofu = {kind for kind, _ in worlds} == {"tofu"}
    if tofu and args.methods == DEFAULT_METHODS:
        methods = [name for name in methods if name not in NOT_ON_TOFU]
    transformers.logging.set_verbosity_error()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    settings = dataclasses.replace(QUICK, seeds=args.seeds[:1]) if args.quick else BenchSettings(
        seeds=args.seeds, **({"probe_every": TOFU_PROBE_EVERY} if tofu else {}))
    run_bench([BenchWorld(folder, build) for folder, (_, build) in zip(folders.values(), worlds)], methods,
              args.output_dir, settings=settings)
    print((Path(args.output_dir) / "results.md").read_text())
    print(f"wrote {args.output_dir}/results.json, results.md, forget_retain_over_steps.png, methods.png, "
          "forget_vs_kept.png")
    return 0


def _seeds_of(option: str):
    """The parser of a comma-separated list of distinct whole numbers given to `option`."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            seeds = tuple(int(seed) for seed in text.split(",") if seed.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} takes whole numbers separated by commas, got {text!r}") \
                from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise argparse.ArgumentTypeError(f"{option} needs at least one seed and no seed twice, got {text!r}")
        return seeds

    return parse


def _world_builder(args, world: Path, seed: int | None):
    """(kind, builder) of a world the bench runs on: world `seed` (None: the builder's default). A world.json
    already at `world` is read as it is (its kind and size); a --data, --people or --authors given beside it must
    agree with what it holds."""
    import functools
    import json

    from ..io import UsageError
    from ..testbed.world_folder import WORLD_FILE, build_world_dir

    kind = args.data or "world"
    summary = world / WORLD_FILE
    if summary.is_file():
        built = json.loads(summary.read_text())
        kind, size, unit = (("tofu", built.get("authors"), "authors") if built.get("data") == "tofu"
                            else ("world", built.get("people"), "people"))
        asked = {"data": args.data, "people": args.people, "authors": args.authors, "model-size": args.model_size}
        holds = {"data": kind, unit: size, "model-size": built.get("model_size", DEFAULT_SIZE)}
        if any(value is not None and value != holds.get(name) for name, value in asked.items()):
            given = " ".join(f"--{name} {value}" for name, value in asked.items() if value is not None)
            raise UsageError(f"{world} holds a {kind} world of {size} {unit} (model size {holds['model-size']}); the "
                             f"bench was asked for {given}: pick another --world, or leave out what disagrees")
    if kind == "tofu" and not args.data_dir and not summary.is_file():
        raise UsageError("--data tofu needs --data-dir, the TOFU folder (e.g. ../shared/data/tofu)")
    if kind == "world" and args.data_dir:
        raise UsageError("--data-dir is for --data tofu; the embedded world needs no data")
    if kind == "tofu" and args.model_size not in (None, DEFAULT_SIZE):
        raise UsageError(f"--model-size {args.model_size} is for the embedded world; a TOFU world's model is size "
                         f"{DEFAULT_SIZE}")
    seeded = {} if seed is None else {"seed": seed}
    if kind == "tofu":
        from ..testbed.tofu_world import build_tofu_world_dir

        return kind, functools.partial(build_tofu_world_dir, tofu_dir=args.data_dir,
                                       authors=args.authors or BENCH_TOFU_AUTHORS, **seeded)
    size = args.model_size or DEFAULT_SIZE
    if args.people:
        return kind, functools.partial(build_world_dir, people=args.people, model_size=size, **seeded)
    return kind, functools.partial(build_world_dir, people=BENCH_PEOPLE, forget_people=BENCH_FORGET_PEOPLE,
                                   targeted=BENCH_TARGETED, model_size=size, **seeded)

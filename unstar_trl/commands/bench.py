"""`unstar bench`: every method on the same world, forget set and starting weights; results.json, results.md and
plots in the output folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..world import BENCH_PEOPLE

DEFAULT_METHODS = "unstar,grad_ascent,grad_diff,grad_ascent_kl,npo,simnpo,idk"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="compare unlearning methods on one world: forget/retain, targeted, probes, relearning, cost",
        description="Run each method from the same knowledge model on the same forget set (recipe defaults from "
        "recipes/world_<method>.yaml), evaluate it, attack it by relearning, and write OUT/results.json, "
        "OUT/results.md, OUT/forget_retain_over_steps.png and OUT/methods.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--world", default=None,
                        help="world folder to reuse (built there if it has no world.json; default: OUT/world)")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated keys of trainers.METHODS")
    parser.add_argument("--people", type=int, default=BENCH_PEOPLE, help="people in a world the bench builds")
    parser.add_argument("--output-dir", required=True, help="folder for the results and plots")
    parser.add_argument("--quick", action="store_true", help="a few steps per method (for tests)")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    import logging
    import warnings

    import transformers

    from ..bench import QUICK, BenchSettings, run_bench
    from ..io import UsageError, refuse_overwrite
    from ..trainers import METHODS

    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    unknown = [name for name in methods if name not in METHODS]
    if not methods or unknown:
        raise UsageError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}" if unknown
                         else "give at least one method")
    world = Path(args.world) if args.world else Path(args.output_dir) / "world"
    if args.world:
        refuse_overwrite(args.output_dir, world)
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    run_bench(world, methods, args.output_dir, people=args.people, settings=QUICK if args.quick else BenchSettings())
    print((Path(args.output_dir) / "results.md").read_text())
    print(f"wrote {args.output_dir}/results.json, results.md, forget_retain_over_steps.png, methods.png")
    return 0

"""`unstar world`: build the embedded fictitious world, its splits and its trained knowledge model."""

from __future__ import annotations

from ..testbed.embedded_world import DEFAULT_PEOPLE, DEFAULT_SEED
from ..testbed.model_sizes import DEFAULT_SIZE, MODEL_SIZES
from . import HelpFormatter


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "world",
        help="build the embedded world: DIR/data/<split>.jsonl, DIR/model/, DIR/world.json",
        description="Build the deterministic fictitious world, write its splits as JSONL, train the small "
        "knowledge model on it (CPU, minutes) and measure what it knows.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--output-dir", required=True, help="folder to create (replaced whole, atomically)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="world and training seed")
    parser.add_argument("--people", type=int, default=DEFAULT_PEOPLE, help="number of trained people (>= 10)")
    parser.add_argument("--forget-people", type=int, default=None,
                        help="people whose every fact is forgotten (default: a tenth, at least 2)")
    parser.add_argument("--targeted", type=int, default=None,
                        help="other people who lose one association each (default: as many as forget people)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="most training epochs (default: the model's; training stops once it knows its facts)")
    parser.add_argument("--model-size", choices=tuple(MODEL_SIZES), default=DEFAULT_SIZE,
                        help="knowledge model: s ~2.3M parameters (minutes), m ~10M, l ~40M (tens of minutes on 2 "
                        "cores); shapes, schedules and build times in docs/sizes.md")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    from ..testbed.world_folder import build_world_dir

    summary = build_world_dir(args.output_dir, seed=args.seed, people=args.people, forget_people=args.forget_people,
                              targeted=args.targeted, epochs=args.epochs, model_size=args.model_size)
    known, reference = summary["model"], summary["retain_model"]
    print(f"world written to {args.output_dir}: {summary['facts']} facts, size {args.model_size} "
          f"({summary['parameters']:,} parameters), {summary['seconds']:.0f}s; knowledge model ({known['epochs']} "
          "epochs): "
          + ", ".join(f"{split} {value:.2f}" for split, value in known["accuracy"].items() if value is not None)
          + f"; retain model ({reference['epochs']} epochs): forget {reference['accuracy']['forget']:.2f}, retain "
          f"{reference['accuracy']['retain']:.2f}")
    return 0

"""`unstar world`: build the embedded fictitious world, its splits and its trained knowledge model."""

from __future__ import annotations

import argparse

from ..testbed.embedded_world import DEFAULT_PEOPLE, DEFAULT_SEED


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "world",
        help="build the embedded world: DIR/data/<split>.jsonl, DIR/model/, DIR/world.json",
        description="Build the deterministic fictitious world, write its splits as JSONL, train the small "
        "knowledge model on it (CPU, minutes) and measure what it knows.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output-dir", required=True, help="folder to create (replaced whole, atomically)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="world and training seed")
    parser.add_argument("--people", type=int, default=DEFAULT_PEOPLE, help="number of trained people (>= 10)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the model's default)")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    from ..testbed.world_folder import build_world_dir

    summary = build_world_dir(args.output_dir, seed=args.seed, people=args.people, epochs=args.epochs)
    accuracy = summary["accuracy"]
    print(
        f"world written to {args.output_dir}: {summary['facts']} facts, {summary['parameters']:,} parameters, "
        f"{summary['seconds']:.0f}s; accuracy forget {accuracy['forget']:.3f} retain {accuracy['retain']:.3f} "
        f"paraphrase {accuracy['paraphrase']:.3f}"
    )
    return 0

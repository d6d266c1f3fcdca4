"""`unstar sweep`: pick the learning rate of a recipe for your model on your data, under the one stopping rule, and
write the recipe with it (`unstar unlearn --config` takes it as it is)."""

from __future__ import annotations

import sys
from pathlib import Path

from . import HelpFormatter


def add_parser(subparsers) -> None:
    from ..evaluation.sweep import GRID, StoppingRule

    rule = StoppingRule()
    parser = subparsers.add_parser(
        "sweep",
        help="pick a recipe's learning rate for your model on your data and write the recipe",
        description=__doc__.replace("\n", " ") + " Each rate of the grid unlearns the forget split from a fresh load "
        "of the model, stopping at the first probe of the forget questions that reads at most --target (or at "
        "--step_budget); the rate that reaches it within three quarters of the budget and keeps the most held-out "
        "retain (and neighbour) facts wins, else the one that forgets most.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--config", required=True, help="recipe YAML, or the name of a shipped one (world_unstar, ...)")
    parser.add_argument("--model_name_or_path", default=None, help="model folder (default: the recipe's)")
    parser.add_argument("--data_dir", default=None, help="data folder or dataset (default: the recipe's)")
    parser.add_argument("--data_format", default="auto", help="data format: auto, jsonl, tofu or hf")
    parser.add_argument("--forget_split", default="forget", help="split of the facts to unlearn")
    parser.add_argument("--retain_split", default="retain", help="split of the facts to keep")
    parser.add_argument("--output", default=None,
                        help="the recipe to write (default: <recipe name>_swept.yaml here); never replaced")
    parser.add_argument("--grid", default=",".join(f"{rate:g}" for rate in GRID), type=_rates,
                        help="comma-separated learning rates")
    parser.add_argument("--target", type=float, default=rule.target, help="forget accuracy to stop at")
    parser.add_argument("--probe_every", type=int, default=rule.probe_every, help="optimizer steps between probes")
    parser.add_argument("--step_budget", type=int, default=rule.step_budget, help="most optimizer steps of a run")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    import datasets

    from ..evaluation.sweep import StoppingRule, keeps_less_warning, recipe_values, run_recipe, swept_recipe, sweep
    from ..io import UsageError, check_output_file, write_text_atomic
    from ..recipes import find_recipe, read_recipe
    from .unlearn import DEFAULT_METHOD, UnlearnArguments, _config_class, _load_data

    path = find_recipe(args.config)
    recipe = read_recipe(path)
    method = recipe.get("method", DEFAULT_METHOD)
    _check_keys(recipe, _config_class(method), path)  # refused before anything loads
    model_dir = args.model_name_or_path or recipe.get("model_name_or_path")
    data_dir = args.data_dir or recipe.get("data_dir")
    if not model_dir or not data_dir:
        raise UsageError("give --model_name_or_path and --data_dir (flags or recipe keys)")
    output = Path(args.output or f"{path.stem}_swept.yaml")
    check_output_file(output)
    if output.exists():
        raise UsageError(f"--output {output} exists; name a new file (a sweep never replaces a recipe)")
    if not 0 <= args.target <= 1 or args.probe_every < 1 or args.step_budget < 1:
        raise UsageError("--target must be between 0 and 1, --probe_every and --step_budget at least 1")
    rule = StoppingRule(target=args.target, probe_every=args.probe_every, step_budget=args.step_budget)
    datasets.disable_progress_bars()
    data = _load_data(UnlearnArguments(method=method, data_dir=data_dir, data_format=args.data_format,
                                       forget_split=args.forget_split, retain_split=args.retain_split))
    print(f"sweeping the learning rate of {method} ({path.name}) for {model_dir} on {data_dir}: stop at forget "
          f"accuracy {rule.target} (probed every {rule.probe_every} steps) within {rule.step_budget} steps", flush=True)
    found = sweep(lambda rate: run_recipe(recipe, method, model_dir, data, rule, rate), rule, args.grid,
                  say=lambda line: print(line, flush=True))
    write_text_atomic(output, swept_recipe(path.read_text(), recipe_values(found, rule, model_dir, data_dir)))
    print(f"chose learning_rate {found['chosen']:g}; wrote {output} (unstar unlearn --config {output} "
          "--output_dir OUT)")
    warning = keeps_less_warning(found)
    if warning:
        print(f"unstar: warning: {warning}", file=sys.stderr)
    return 0


def _check_keys(recipe: dict, config_class, path: Path) -> None:
    """Refuse a recipe key that `unstar unlearn` would refuse: the written recipe must be one it takes."""
    import dataclasses

    from trl import ModelConfig

    from ..io import UsageError
    from .unlearn import UnlearnArguments

    known = {item.name for cls in (UnlearnArguments, config_class, ModelConfig) for item in dataclasses.fields(cls)}
    unknown = [key for key in recipe if key not in known | {"env"}]
    if unknown:
        raise UsageError(f"unknown recipe key {unknown[0]!r} in {path}: not a field of UnlearnArguments, "
                         f"{config_class.__name__} or ModelConfig")


def _rates(text: str) -> tuple[float, ...]:
    """--grid: comma-separated positive learning rates."""
    import argparse

    try:
        rates = tuple(float(item) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers, got {text!r}") from None
    if not rates or any(not rate > 0 for rate in rates):
        raise argparse.ArgumentTypeError(f"learning rates must be positive, got {text!r}")
    return rates

"""`unstar eval`: run the unstar lm-eval tasks on a model folder (optionally with a PEFT adapter)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

from . import HelpFormatter


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="run the unstar lm-eval tasks on a model and print their table",
        description="Run the unstar lm-eval tasks (no --include_path needed) on a model folder, print one row per "
        "metric and optionally write every figure as JSON.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--model", required=True, help="model folder (or a PEFT adapter folder)")
    parser.add_argument("--adapter", default=None, help="PEFT adapter folder to merge into --model")
    parser.add_argument("--data-dir", default=None,
                        help="folder of <split>.jsonl, TOFU folder or dataset (default: the embedded 60-person world)")
    parser.add_argument("--format", default=None, choices=("auto", "jsonl", "tofu", "hf"), help="data format")
    parser.add_argument("--tasks", default="unstar_*", help="comma-separated task names or wildcards")
    parser.add_argument("--metadata", default=None, type=_json_object,
                        help='extra task metadata as JSON, e.g. \'{"forget_split": "forget01"}\'')
    parser.add_argument("--prompt-template", default="auto",
                        help="the model's prompt format: auto (what the model folder records, else its chat template "
                        "if it has one, else 'Question: {question}\\nAnswer:'), chat, or a template with {question}")
    parser.add_argument("--limit", type=_limit, default=None, help="documents per task (a fraction if < 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=None, help="JSON file for the summary and lm-eval's results")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    from lm_eval.utils import make_table

    from ..evaluation.lm_eval_tasks import evaluate_model
    from ..io import check_output_file, refuse_overwrite, write_json
    from ..text import describe_prompt_template

    if args.output:  # checked before anything is loaded; never written into an input
        check_output_file(args.output)
        inputs = (args.model, args.adapter, args.data_dir)
        refuse_overwrite(args.output, *[path for path in inputs if path and Path(path).exists()], flag="--output")
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-task notes would bury the table
    start = time.perf_counter()
    results = evaluate_model(args.model, adapter=args.adapter, tasks=args.tasks.split(","), data_dir=args.data_dir,
                             data_format=args.format, limit=args.limit, batch_size=args.batch_size,
                             device=args.device, metadata=args.metadata, prompt_template=args.prompt_template)
    print(make_table(results))
    print(f"prompt format: {describe_prompt_template(results['prompt_template'])}")
    print(f"wall time {time.perf_counter() - start:.0f}s")
    if args.output:
        write_json(args.output, results)
        print(f"results written to {args.output}")
    return 0


def _json_object(text: str) -> dict:
    """--metadata: a JSON object (its keys are checked against the tasks' own before anything runs)."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r:.60}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object of key: value, got {text!r:.60}")
    return value


def _limit(text: str) -> int | float:
    """--limit: a whole number of documents (1, 2, ...) or a fraction of them in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if 0 < value < 1:
        return value
    if value >= 1 and value.is_integer():
        return int(value)
    raise argparse.ArgumentTypeError(f"must be a whole number of documents (1, 2, ...) or a fraction in (0, 1), "
                                     f"got {text!r}")

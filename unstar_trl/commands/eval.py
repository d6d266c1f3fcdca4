"""`unstar eval`: run the unstar lm-eval tasks on a model folder (optionally with a PEFT adapter)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

from . import HelpFormatter
from .unlearn import REPORT_FILE


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
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--data-dir", default=None,
                      help="folder of <split>.jsonl, TOFU folder or dataset (default: the data that the model "
                      "folder's unlearn_report.json names, its format and splits too)")
    data.add_argument("--embedded-world", action="store_true",
                      help="score the embedded 60-person world (what the tasks read without data)")
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
    data_dir, data_format, metadata = args.data_dir, args.format, args.metadata
    if data_dir is None and not args.embedded_world:
        data_dir, data_format, metadata = reported_data(args.adapter or args.model, data_format, metadata)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-task notes would bury the table
    start = time.perf_counter()
    results = evaluate_model(args.model, adapter=args.adapter, tasks=args.tasks.split(","), data_dir=data_dir,
                             data_format=data_format, limit=args.limit, batch_size=args.batch_size,
                             device=args.device, metadata=metadata, prompt_template=args.prompt_template)
    if args.data_dir is None and not args.embedded_world:
        print(f"data: {data_dir} (named by {Path(args.adapter or args.model) / REPORT_FILE})")
    print(make_table(results))
    print(f"prompt format: {describe_prompt_template(results['prompt_template'])}")
    print(f"wall time {time.perf_counter() - start:.0f}s")
    if args.output:
        write_json(args.output, results)
        print(f"results written to {args.output}")
    return 0


def reported_data(model_dir: str, data_format: str | None, metadata: dict | None
                  ) -> tuple[str, str | None, dict | None]:
    """(data folder, format, metadata with its splits) of the run that wrote `model_dir`, from its report; what the
    user gave (`data_format`, `metadata` keys) stays. A folder without a report, or whose data is not where the report
    says, is a UsageError: the tasks would otherwise score the embedded world, which the model may never have seen."""
    from ..io import UsageError

    report_path = Path(model_dir) / REPORT_FILE
    if not report_path.is_file():
        raise UsageError(f"give --data-dir: {model_dir} has no {REPORT_FILE} naming the data it was unlearned on "
                         "(--embedded-world scores the embedded world)")
    report = json.loads(report_path.read_text())
    data_dir = report.get("data_dir")
    if not data_dir or not Path(data_dir).exists():
        raise UsageError(f"give --data-dir: {report_path} names data_dir {data_dir!r}, which is not there from "
                         f"{Path.cwd()}")
    reported = report.get("data_args") or {}
    splits = {key: value for key, value in reported.items() if key.endswith("_split") and value}
    return data_dir, data_format or reported.get("data_format"), {**splits, **(metadata or {})} or None


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

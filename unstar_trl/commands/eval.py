"""`unstar eval`: run the unstar lm-eval tasks on a model folder (optionally with a PEFT adapter)."""

from __future__ import annotations

import argparse
import json
import logging
import time


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="run the unstar lm-eval tasks on a model and print their table",
        description="Run the unstar lm-eval tasks (no --include_path needed) on a model folder, print one row per "
        "metric and optionally write every figure as JSON.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="model folder (or a PEFT adapter folder)")
    parser.add_argument("--adapter", default=None, help="PEFT adapter folder to merge into --model")
    parser.add_argument("--data-dir", default=None,
                        help="folder of <split>.jsonl, TOFU folder or dataset (default: the embedded 60-person world)")
    parser.add_argument("--format", default=None, choices=("auto", "jsonl", "tofu", "hf"), help="data format")
    parser.add_argument("--tasks", default="unstar_*", help="comma-separated task names or wildcards")
    parser.add_argument("--metadata", default=None, type=json.loads,
                        help='extra task metadata as JSON, e.g. \'{"forget_split": "forget01"}\'')
    parser.add_argument("--prompt-template", default="auto",
                        help="the model's prompt format: auto (what the model folder records, else its chat template "
                        "if it has one, else 'Question: {question}\\nAnswer:'), chat, or a template with {question}")
    parser.add_argument("--limit", type=float, default=None, help="documents per task (a fraction if < 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=None, help="JSON file for the summary and lm-eval's results")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    from lm_eval.utils import make_table

    from ..evaluation.lm_eval_tasks import evaluate_model
    from ..io import write_json
    from ..text import describe_prompt_template

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-task notes would bury the table
    start = time.perf_counter()
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    results = evaluate_model(args.model, adapter=args.adapter, tasks=args.tasks.split(","), data_dir=args.data_dir,
                             data_format=args.format, limit=limit, batch_size=args.batch_size, device=args.device,
                             metadata=args.metadata, prompt_template=args.prompt_template)
    print(make_table(results))
    print(f"prompt format: {describe_prompt_template(results['prompt_template'])}")
    print(f"wall time {time.perf_counter() - start:.0f}s")
    if args.output:
        write_json(args.output, results)
        print(f"results written to {args.output}")
    return 0

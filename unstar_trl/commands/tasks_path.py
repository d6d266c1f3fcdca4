"""`unstar tasks-path`: print the folder of the unstar lm-eval tasks (for lm_eval --include_path)."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "tasks-path",
        help="print the folder of the unstar lm-eval tasks",
        description="Print the folder to pass to lm_eval --include_path, e.g. "
        "lm_eval --model hf --model_args pretrained=DIR --include_path $(unstar tasks-path) --tasks 'unstar_*'.",
    )
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    from ..evaluation.lm_eval_tasks import tasks_path

    print(tasks_path())
    return 0

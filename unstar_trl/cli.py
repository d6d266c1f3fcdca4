"""`unstar`: build the embedded world, unlearn, evaluate and benchmark.

Each sub-command lives in `unstar_trl/commands/<name>.py` and exposes `add_parser(subparsers)`; the parser it adds
sets `handler`, called with the parsed arguments. Errors end in one readable line (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = ("world", "unlearn", "sweep", "eval", "bench", "tasks_path")
"""Modules under `unstar_trl.commands`, in the order `--help` lists them."""


class _Parser(argparse.ArgumentParser):
    """argparse without abbreviated flags (a typo such as `--out` must not quietly mean `--output-dir`); the
    sub-command parsers are of this class too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="unstar", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"unstar_trl.commands.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # one bar per phase: ours, not every library's
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    try:
        args, rest = build_parser().parse_known_args(argv)
        if rest and not getattr(args, "accepts_extra", False):
            raise _usage(f"unrecognized arguments: {' '.join(rest)}")
        args.extra = rest
        return args.handler(args) or 0
    except KeyboardInterrupt:
        print("unstar: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one line for the user; the traceback with --debug
        if debug:
            raise
        print(f"unstar: error: {_one_line(error)}", file=sys.stderr)
        return 2


def _usage(message: str) -> Exception:
    from .io import UsageError

    return UsageError(message)


def _one_line(error: Exception) -> str:
    message = str(error) if not isinstance(error, (KeyError,)) else f"missing key {error}"
    message = " ".join(message.split()) or type(error).__name__
    return message if len(message) < 600 else message[:600] + "..."


if __name__ == "__main__":
    sys.exit(main())

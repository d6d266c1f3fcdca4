"""`unstar unlearn`: run one unlearning method from a TrlParser recipe (YAML + flags) and write the unlearned model,
its tokenizer and `unlearn_report.json` (what the model knew before and after) to `output_dir`, all at once."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..io import UsageError, atomic_directory, refuse_foreign_folder, refuse_overwrite, write_json
from ..recipes import read_recipe

REPORT_FILE = "unlearn_report.json"
CHECKPOINTS_SUFFIX = ".checkpoints"
"""With save_strategy other than "no", checkpoints go to `<output_dir>.checkpoints`, beside output_dir, where an
interrupted run leaves them for `--resume_from_checkpoint true`; a run that ends removes them."""


@dataclass
class UnlearnArguments:
    """What to unlearn and from where (the model itself comes from ModelConfig's `model_name_or_path`)."""

    method: str = field(default="grad_ascent", metadata={"help": "Unlearning method: a key of trainers.METHODS."})
    data_dir: str | None = field(default=None, metadata={"help": "Folder (or dataset) with the forget/retain splits."})
    data_format: str = field(default="auto", metadata={"help": "Data format: auto, jsonl, tofu or hf."})
    forget_split: str = field(default="forget", metadata={"help": "Split of the facts to unlearn."})
    retain_split: str = field(default="retain", metadata={"help": "Split of the facts to keep (retain loss)."})
    neighbor_split: str = field(default="neighbor", metadata={"help": "Split of facts near the forget set."})
    targeted_split: str = field(default="targeted", metadata={"help": "Split of single associations to remove."})
    holdout_split: str = field(default="holdout", metadata={"help": "Split of facts the model never saw."})
    targeted: bool = field(default=False, metadata={"help": "Unlearn the targeted split instead of the forget split."})


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "unlearn",
        help="unlearn the forget split with one method (TrlParser recipe: --config recipe.yaml + flags)",
        description=__doc__,
        add_help=False,  # --help goes to TrlParser, which knows the fields
    )
    parser.set_defaults(handler=_run, accepts_extra=True)


def parse(argv: list[str]):
    """(UnlearnArguments, the method's config, ModelConfig) from `--config recipe.yaml` and flags; the method is
    `--method` or the recipe's `method:` key."""
    from trl import ModelConfig, TrlParser

    from ..trainers import METHODS

    recipe, path = {}, None
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        path = argv[argv.index("--config") + 1]
        recipe = read_recipe(path)
    method = recipe.get("method", "grad_ascent")
    for index, item in enumerate(argv):
        if item == "--method" and index + 1 < len(argv):
            method = argv[index + 1]
        elif item.startswith("--method="):
            method = item.split("=", 1)[1]
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    config_class = METHODS[method][1]
    parser = TrlParser((UnlearnArguments, config_class, ModelConfig), prog="unstar unlearn", allow_abbrev=False)
    parser.error = _refuse  # one line, not the usage of all ~150 flags above it
    known = {action.dest for action in parser._actions} | {"env"}
    unknown = [key for key in recipe if key not in known]
    if unknown:
        raise UsageError(f"unknown recipe key {unknown[0]!r} in {path}: not a field of UnlearnArguments, "
                         f"{config_class.__name__} or ModelConfig")
    asks_help = {"-h", "--help"} & set(argv)
    if "output_dir" not in recipe and not asks_help and not any(a.split("=")[0] == "--output_dir" for a in argv):
        raise UsageError("give --output_dir (a flag or a recipe key)")
    script_args, config, model_args = parser.parse_args_and_config(argv)
    script_args.method = method
    if script_args.data_dir is None or model_args.model_name_or_path is None:
        raise UsageError("give --model_name_or_path and --data_dir (flags or recipe keys)")
    return script_args, config, model_args


def _refuse(message: str):
    raise UsageError(f"{message} (see unstar unlearn --help)")


def _run(args) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import get_peft_config

    from ..data import load_unlearning_data
    from ..knowledge_model import PROMPTS_FILE
    from ..report import knowledge_report
    from ..trainers import METHODS, DivergenceError

    script_args, config, model_args = parse([item for item in args.extra if item != "--debug"])
    source = model_args.model_name_or_path
    refuse_overwrite(config.output_dir, *[path for path in (source, script_args.data_dir) if Path(path).exists()])
    refuse_foreign_folder(config.output_dir, REPORT_FILE)
    data = load_unlearning_data(script_args.data_dir, format=script_args.data_format,
                                forget_split=script_args.forget_split, retain_split=script_args.retain_split,
                                neighbor_split=script_args.neighbor_split, targeted_split=script_args.targeted_split,
                                holdout_split=script_args.holdout_split)
    if script_args.targeted and not data.targeted:
        raise UsageError(f"--targeted: {script_args.data_dir} has no {script_args.targeted_split!r} split")
    if Path(source).is_dir() and not _has_tokenizer(source):
        raise UsageError(f"{source} holds no tokenizer (tokenizer.json or tokenizer_config.json); save the "
                         "tokenizer beside the model")
    load = {"revision": model_args.model_revision, "trust_remote_code": config.trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(source, **load)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        source, use_safetensors=True, attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype if model_args.dtype == "auto" else getattr(torch, model_args.dtype), **load)

    start = time.perf_counter()
    before = knowledge_report(model, tokenizer, data, config.prompt_template)
    trainer_class = METHODS[script_args.method][0]
    output_dir, diverged = config.output_dir, None
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun / accelerate launch only rank 0 writes
    resume = {"true": True, "false": None}.get(str(config.resume_from_checkpoint).lower(),
                                               config.resume_from_checkpoint)
    checkpoints = Path(str(output_dir) + CHECKPOINTS_SUFFIX) if config.save_strategy != "no" or resume else None
    with atomic_directory(output_dir) if main_process else _discarded() as staging:
        config.output_dir = str(checkpoints or staging / "trainer")
        trainer = trainer_class(model=model, args=config, processing_class=tokenizer,
                                train_dataset=data.targeted if script_args.targeted else data.forget,
                                retain_dataset=data.targeted_retain if script_args.targeted else data.retain,
                                peft_config=get_peft_config(model_args))
        try:
            trainer.train(resume_from_checkpoint=resume)
        except DivergenceError as error:  # the trainer kept the last good weights: save those, then say so
            diverged = {"step": error.step, "kept_step": error.kept_step, "reason": error.reason}
        finally:
            _close_progress_bar(trainer)
        if checkpoints is None:
            shutil.rmtree(config.output_dir, ignore_errors=True)
        rounds = getattr(trainer, "rounds", None)  # UnSTAR: its per-round log and every anti-sample it fitted
        if rounds is not None:
            trainer.save_audit(staging)
        model = trainer.model.merge_and_unload() if hasattr(trainer.model, "merge_and_unload") else trainer.model
        model.eval()
        after = knowledge_report(model, tokenizer, data, config.prompt_template)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if (Path(source) / PROMPTS_FILE).is_file():
            shutil.copy(Path(source) / PROMPTS_FILE, staging / PROMPTS_FILE)
        report = {"method": script_args.method, "model": source, "data_dir": script_args.data_dir,
                  "targeted": script_args.targeted, "before": before, "after": after,
                  "rounds": sum(log["steps"] > 0 for log in rounds) if rounds is not None else 1,
                  "round_log": rounds,
                  "steps": diverged["kept_step"] if diverged else getattr(trainer, "steps", trainer.state.global_step),
                  "seconds": round(time.perf_counter() - start, 1),
                  "diverged": diverged, "history": trainer.history}
        write_json(staging / REPORT_FILE, report)
    if checkpoints is not None and main_process:  # the run ended and its output is in place
        shutil.rmtree(checkpoints, ignore_errors=True)
    if diverged:
        raise UsageError(f"training diverged after step {diverged['step']} ({diverged['reason']}); wrote the "
                         f"weights of step {diverged['kept_step']} to {output_dir}")
    if main_process:
        print(f"{script_args.method}: forget_acc {_fmt(before['forget_acc'])} -> {_fmt(after['forget_acc'])}, retain_acc "
              f"{_fmt(before['retain_acc'])} -> {_fmt(after['retain_acc'])} in {report['steps']} steps; "
              f"wrote {output_dir}", file=sys.stdout)
    return 0


def _close_progress_bar(trainer) -> None:
    """Close a training progress bar that an exception left open, so that it does not print itself (when collected)
    under the final message."""
    from transformers.trainer_callback import ProgressCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, ProgressCallback) and callback.training_bar is not None:
            callback.training_bar.close()
            callback.training_bar = None


def _has_tokenizer(folder: str | Path) -> bool:
    return any((Path(folder) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))


@contextlib.contextmanager
def _discarded():
    """A scratch folder for the outputs of a process that is not rank 0 (removed afterwards)."""
    with tempfile.TemporaryDirectory() as scratch:
        yield Path(scratch)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"

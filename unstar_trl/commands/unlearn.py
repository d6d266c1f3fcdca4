"""`unstar unlearn`: run one unlearning method from a TrlParser recipe (YAML + flags) and write the unlearned model,
its tokenizer and `unlearn_report.json` (what the model knew before and after) to `output_dir`, all at once."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import shutil
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..io import (OUTPUT_MARKER, UsageError, atomic_directory, check_output_folder, json_safe, mark_output,
                  output_lock, refuse_overwrite, remove_output, write_json)
from ..models import quantization_kwargs
from ..recipes import find_recipe, read_recipe
from ..text import resolve_prompt_template

REPORT_FILE = "unlearn_report.json"
CHECKPOINTS_SUFFIX = ".checkpoints"
"""With save_strategy other than "no", checkpoints go to `<output_dir>.checkpoints`, beside output_dir, where an
interrupted run leaves them for `--resume_from_checkpoint true`; a run that ends removes them."""
DEFAULT_METHOD = "unstar"
TOFU_NEIGHBOR_SPLIT = "real_authors"
"""The neighbour split of a TOFU folder when none is named, as the unstar_* tasks take it."""


@dataclass
class UnlearnArguments:
    """What to unlearn and from where (the model itself comes from ModelConfig's `model_name_or_path`)."""

    method: str = field(default=DEFAULT_METHOD, metadata={"help": "Unlearning method (a recipe's `method:` key)."})
    data_dir: str | None = field(default=None, metadata={"help": "Folder (or dataset) with the forget/retain splits."})
    data_format: str = field(default="auto", metadata={"help": "Data format: auto, jsonl, tofu or hf."})
    forget_split: str = field(default="forget", metadata={"help": "Split of the facts to unlearn."})
    retain_split: str = field(default="retain", metadata={"help": "Split of the facts to keep (retain loss)."})
    neighbor_split: str | None = field(
        default=None, metadata={"help": "Split of facts near the forget set (default: real_authors for TOFU, else "
                                "neighbor)."})
    targeted_split: str = field(default="targeted", metadata={"help": "Split of single associations to remove."})
    holdout_split: str = field(default="holdout", metadata={"help": "Split of facts the model never saw."})
    targeted: bool = field(default=False, metadata={"help": "Unlearn the targeted split instead of the forget split."})
    columns: str | None = field(
        default=None,
        metadata={"help": "Our fields for the data's columns, as ours=theirs: subject=name,question=prompt."},
    )
    merge_adapter: bool = field(
        default=False,
        metadata={"help": "With use_peft, save the model with the adapter merged in, not the adapter alone."},
    )


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "unlearn",
        help="unlearn the forget split with one method (TrlParser recipe: --config recipe.yaml + flags)",
        description=__doc__,
        add_help=False,  # --help is ours (see `short_help`), --help-all TrlParser's
    )
    parser.set_defaults(handler=_run, accepts_extra=True)


# ---- parsing ---------------------------------------------------------------------------------------------------


def parse(argv: list[str]):
    """(UnlearnArguments, the method's config, ModelConfig, the recipe path or None) from `--config RECIPE` (a file
    or a shipped recipe's name) and flags; the method is `--method`, else the recipe's `method:` key, else unstar."""
    from trl import ModelConfig, TrlParser

    argv, path = _resolve_config(argv)
    recipe = read_recipe(path) if path else {}
    method = _flag(argv, "--method") or recipe.get("method", DEFAULT_METHOD)
    config_class = _config_class(method)
    parser = TrlParser((UnlearnArguments, config_class, ModelConfig), prog="unstar unlearn", allow_abbrev=False)
    parser.error = _refuse  # one line, not the usage of all ~150 flags above it
    known = {action.dest for action in parser._actions} | {"env"}
    unknown = [key for key in recipe if key not in known]
    if unknown:
        raise UsageError(f"unknown recipe key {unknown[0]!r} in {path}: not a field of UnlearnArguments, "
                         f"{config_class.__name__} or ModelConfig")
    if "output_dir" not in recipe and _flag(argv, "--output_dir") is None:
        raise UsageError("give --output_dir (a flag or a recipe key)")
    script_args, config, model_args = parser.parse_args_and_config(argv)
    script_args.method = method
    if script_args.data_dir is None or model_args.model_name_or_path is None:
        raise UsageError("give --model_name_or_path and --data_dir (flags or recipe keys)")
    return script_args, config, model_args, path


def _resolve_config(argv: list[str]) -> tuple[list[str], Path | None]:
    """argv with `--config NAME` made a path (a shipped recipe's name becomes its file), and that path."""
    for index, item in enumerate(argv):
        name = argv[index + 1] if item == "--config" and index + 1 < len(argv) else \
            item.split("=", 1)[1] if item.startswith("--config=") else None
        if name is not None:
            path = find_recipe(name)
            return [*argv[:index], "--config", str(path), *argv[index + (2 if item == "--config" else 1):]], path
    return argv, None


def _flag(argv: list[str], name: str) -> str | None:
    """The value of flag `name` in argv (`--name value` or `--name=value`), or None."""
    for index, item in enumerate(argv):
        if item == name and index + 1 < len(argv):
            return argv[index + 1]
        if item.startswith(f"{name}="):
            return item.split("=", 1)[1]
    return None


def _config_class(method: str):
    from ..method.trainers import METHODS

    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS[method][1]


def _refuse(message: str):
    raise UsageError(f"{message} (see unstar unlearn --help)")


# ---- help --------------------------------------------------------------------------------------------------------

TRAINING_FIELDS = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "seed",
                   "max_length")
MODEL_FIELDS = ("model_name_or_path", "use_peft", "lora_r", "lora_alpha")


def short_help(method: str) -> str:
    """What `unstar unlearn --help` prints: our flags first, one line each; the rest is `--help-all`."""
    from trl import ModelConfig, SFTConfig

    from ..method.trainers import METHODS, UnlearningConfig

    config_class = _config_class(method)
    fields = dataclasses.fields(config_class)
    trl_names, base_names = ({f.name for f in dataclasses.fields(c)} for c in (SFTConfig, UnlearningConfig))
    sections = [
        ("recipe and method", [("--config RECIPE", "a recipe YAML, or the name of a shipped one (world_unstar, "
                                "tofu_unstar_llama3.2-1b_forget01, ...); flags override its keys"),
                               ("--method NAME", f"{', '.join(METHODS)} (default: the recipe's, else unstar)")]),
        ("model and data", _rows(dataclasses.fields(ModelConfig), MODEL_FIELDS)
         + _rows(dataclasses.fields(UnlearnArguments), [f.name for f in dataclasses.fields(UnlearnArguments)][1:])
         + [("--output_dir", "where the unlearned model and unlearn_report.json go (written atomically)")]),
        (f"{method} ({config_class.__name__})", _rows(fields, [f.name for f in fields if f.name not in base_names])),
        ("unlearning (every method)", _rows(fields, [f.name for f in fields if f.name in base_names - trl_names])),
        ("training", _rows(fields, TRAINING_FIELDS)),
    ]
    lines = ["usage: unstar unlearn [--config RECIPE] [--method NAME] --model_name_or_path MODEL --data_dir DATA",
             "                      --output_dir OUT [--FIELD VALUE ...]", "",
             *textwrap.wrap(" ".join(__doc__.split()), 118), ""]
    for title, rows in sections:
        lines.append(f"{title}:")
        for flag, text in rows:
            lines.extend(textwrap.wrap(text, 118, initial_indent=f"  {flag:<29} ", subsequent_indent=" " * 32))
        lines.append("")
    lines.extend(textwrap.wrap(
        "Every other field of SFTConfig, TrainingArguments and ModelConfig is a flag too (--bf16, "
        "--gradient_accumulation_steps, --report_to, --save_strategy, ...): unstar unlearn --help-all lists them. "
        "Another method's own fields: unstar unlearn --method NAME --help.", 118))
    return "\n".join(lines)


def _rows(fields, names) -> list[tuple[str, str]]:
    """(flag, first sentence of its help and its default) for each of `names`."""
    by_name = {f.name: f for f in fields}
    rows = []
    for name in names:
        item = by_name[name]
        default = item.default if item.default is not dataclasses.MISSING else None
        text = (item.metadata.get("help") or "").split(". ")[0].rstrip(".")
        rows.append((f"--{name}", f"{text} (default: {default!r})" if default not in (None, "") else text))
    return rows


# ---- the run -----------------------------------------------------------------------------------------------------


def _run(args) -> int:
    argv = [item for item in args.extra if item != "--debug"]
    if {"-h", "--help"} & set(argv) or not argv:
        _, path = _resolve_config(argv)
        print(short_help(_flag(argv, "--method") or (read_recipe(path) if path else {}).get("method", DEFAULT_METHOD)))
        return 0
    if "--help-all" in argv:
        argv = [item if item != "--help-all" else "--help" for item in argv]
    from ..method.trainers.base import require_retain

    script_args, config, model_args, recipe_path = parse(argv)
    source, output_dir = model_args.model_name_or_path, config.output_dir
    if config.trust_remote_code:
        raise UsageError("--trust_remote_code: unstar never runs a model folder's own code")
    quantization = quantization_kwargs(model_args)
    if quantization and script_args.merge_adapter:
        raise UsageError("--merge_adapter with a quantized model would write its weights rounded to 4 or 8 bits; "
                         "leave it out to save the adapter alone, on the full-precision model")
    inputs = [path for path in (source, script_args.data_dir, _teacher(config)) if path and Path(path).exists()]
    refuse_overwrite(output_dir, *inputs)
    check_output_folder(output_dir, "unlearn")
    _check_resume(config, inputs)
    main_process = config.process_index == 0  # under torchrun / accelerate launch only rank 0 writes
    with output_lock(output_dir) if main_process else contextlib.nullcontext():
        data = _load_data(script_args)
        require_retain(config, data.targeted_retain if script_args.targeted else data.retain_train)
        model, tokenizer = _load_model(model_args, quantization)
        config.prompt_template = resolve_prompt_template(config.prompt_template, tokenizer, source)  # once per run
        resolved = {"recipe": str(recipe_path) if recipe_path else None, "method": script_args.method,
                    **json.loads(json.dumps(config.to_dict(), default=str))}
        logging.getLogger("unstar_trl").setLevel(logging.ERROR)  # the run's warnings are printed once, below
        report = _unlearn(script_args, config, model_args, data, model, tokenizer, resolved)
    if main_process:
        for warning in report["warnings"]:
            print(f"unstar: warning: {warning}", file=sys.stderr)
    if report["diverged"]:
        diverged = report["diverged"]
        raise UsageError(f"training diverged after step {diverged['step']} ({diverged['reason']}); wrote the "
                         f"weights of step {diverged['step']} to {output_dir}")
    if main_process:
        print(summary_line(report, output_dir), file=sys.stdout)
    return 0


def _load_data(script_args):
    from ..data import load_unlearning_data, source_format

    neighbor = script_args.neighbor_split or (
        TOFU_NEIGHBOR_SPLIT if source_format(script_args.data_dir, script_args.data_format) == "tofu" else "neighbor")
    data = load_unlearning_data(script_args.data_dir, format=script_args.data_format,
                                forget_split=script_args.forget_split, retain_split=script_args.retain_split,
                                neighbor_split=neighbor, targeted_split=script_args.targeted_split,
                                holdout_split=script_args.holdout_split,
                                column_map=column_map(script_args.columns))
    if script_args.targeted and not data.targeted:
        raise UsageError(f"--targeted: {script_args.data_dir} has no {script_args.targeted_split!r} split")
    return data


def column_map(columns: str | None) -> dict[str, str] | None:
    """--columns "subject=name,question=prompt" as {"subject": "name", "question": "prompt"} (our field: theirs)."""
    if not columns:
        return None
    pairs = [item.split("=") for item in columns.split(",")]
    bad = next((item for item, pair in zip(columns.split(","), pairs) if len(pair) != 2 or not all(pair)), None)
    if bad is not None:
        raise UsageError(f"--columns: {bad!r} is not ours=theirs (e.g. --columns subject=name,question=prompt)")
    return {ours.strip(): theirs.strip() for ours, theirs in pairs}


def _load_model(model_args, quantization: dict):
    import torch

    from ..models import load_model

    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    return load_model(model_args.model_name_or_path, revision=model_args.model_revision,
                      attn_implementation=model_args.attn_implementation, dtype=dtype, **quantization)


def _unlearn(script_args, config, model_args, data, model, tokenizer, resolved: dict) -> dict:
    """Train inside a staging folder that becomes output_dir only when everything is written; returns the report
    (which is also written there, with the `resolved` configuration)."""
    from trl import get_peft_config

    from ..evaluation.knowledge import knowledge_report
    from ..method.probe import nothing_known_message
    from ..method.trainers import METHODS, DivergenceError
    from ..progress import quiet_progress
    from ..text import format_prompt

    source, output_dir, template = model_args.model_name_or_path, config.output_dir, config.prompt_template
    start = time.perf_counter()
    forget = data.targeted if script_args.targeted else data.forget
    before = knowledge_report(model, tokenizer, data, template)
    resume, checkpoints = _checkpointing(config)
    main_process = config.process_index == 0
    diverged = None
    if checkpoints is not None and main_process:
        mark_output(checkpoints, "unlearn checkpoints", METHODS[script_args.method][0].output_dir_entries)
    with _removed_when_empty(checkpoints if main_process else None), \
            atomic_directory(output_dir, "unlearn") if main_process else _discarded() as staging:
        config.output_dir = str(checkpoints or staging / "trainer")
        trainer = METHODS[script_args.method][0](
            model=model, args=config, processing_class=tokenizer, train_dataset=forget,
            retain_dataset=data.targeted_retain if script_args.targeted else data.retain_train,
            peft_config=get_peft_config(model_args))
        quiet_progress(trainer)
        if script_args.method != "unstar" and before["targeted_acc" if script_args.targeted else "forget_acc"] == 0:
            # (UnSTAR probes, and warns, itself)
            trainer.warn(nothing_known_message(len(forget), template,
                                               format_prompt(tokenizer, forget[0]["question"], template)))
        try:
            trainer.train(resume_from_checkpoint=resume)
        except DivergenceError as error:  # stopped before updating the weights that went bad: save those, say so
            diverged = {"step": error.step, "reason": error.reason}
        finally:
            _close_progress_bar(trainer)
        if checkpoints is None:
            shutil.rmtree(config.output_dir, ignore_errors=True)
        rounds = getattr(trainer, "rounds", None)  # UnSTAR: its per-round log and every anti-sample it fitted
        generator = getattr(trainer, "generator_choice", None)  # UnSTAR: who wrote them ("auto" resolved)
        if hasattr(trainer, "save_audit"):  # UnSTAR's anti-samples, AltPO's alternatives
            trainer.save_audit(staging)
        model = trainer.model.eval()
        after = knowledge_report(model, tokenizer, data, template)
        save_model(model, tokenizer, staging, source, template, merge=script_args.merge_adapter)
        report = {"method": script_args.method, "model": source, "data_dir": script_args.data_dir,
                  "data_args": reported_data_args(script_args),
                  "targeted": script_args.targeted, "prompt_template": template, "before": before, "after": after,
                  "rounds": sum(log["steps"] > 0 for log in rounds) if rounds is not None else 1,
                  "round_log": rounds, "generator": generator and dataclasses.asdict(generator),
                  "writer_check": getattr(trainer, "writer_check", None),
                  "answer_form": getattr(trainer, "answer_form", None),
                  "steps": trainer.state.global_step,
                  "seconds": round(time.perf_counter() - start, 1),
                  "time_split": {phase: round(seconds, 2) for phase, seconds in trainer.time_split.seconds.items()},
                  "trained_tokens": trainer.trained_tokens,
                  "diverged": diverged, "config": resolved, "history": trainer.history}
        report["warnings"] = trainer.warnings + run_warnings(report, trainer.warnings)
        write_json(staging / REPORT_FILE, report)
    if checkpoints is not None and main_process:  # the run ended and its output is in place
        remove_output(checkpoints)
    return report


def reported_data_args(script_args) -> dict:
    """How the run read its data, as `unstar eval` reads it back: the format and the split of each role."""
    return {"data_format": script_args.data_format,
            **{name: getattr(script_args, name) for name in ("forget_split", "retain_split", "neighbor_split",
                                                             "targeted_split", "holdout_split")}}


def save_model(model, tokenizer, folder: Path, source: str, template: str | None, *, merge: bool) -> None:
    """Save the unlearned model with its tokenizer and prompt format (and the source's skill prompts) to `folder`: a
    PEFT model as its adapter (on the source model, by absolute path when it is a folder), or merged in with
    `merge`. Its generation config stops at the end of turn as well as at eos (so plain `lm_eval` judges its answers
    as the probe does)."""
    from ..method.tokens import stop_token_ids
    from ..text import read_prompts_file, write_prompts_file

    if hasattr(model, "merge_and_unload"):
        if merge:
            model = model.merge_and_unload()
        elif Path(source).is_dir():
            for adapter in model.peft_config.values():
                adapter.base_model_name_or_path = str(Path(source).resolve())
    model.generation_config.eos_token_id = stop_token_ids(tokenizer, template is None)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    recorded = read_prompts_file(source) if Path(source).is_dir() else None
    write_prompts_file(folder, template, (recorded or {}).get("skill_prompts"))


def _checkpointing(config) -> tuple[bool | str | None, Path | None]:
    """(what --resume_from_checkpoint asks for: True, a folder or None; the checkpoints folder beside output_dir,
    None when the run neither saves nor resumes checkpoints)."""
    resume = {"true": True, "false": None}.get(str(config.resume_from_checkpoint).lower(),
                                               config.resume_from_checkpoint)
    checkpoints = Path(str(config.output_dir) + CHECKPOINTS_SUFFIX) if config.save_strategy != "no" or resume else None
    return resume, checkpoints


def _teacher(config) -> str | None:
    """UnSTAR's teacher model folder (`--generator FOLDER`), an input like the model; None for the other generators."""
    generator = getattr(config, "generator", None)
    return None if generator in (None, "auto", "self", "template") else generator


def _check_resume(config, inputs: list[str]) -> None:
    """Refuse, before loading anything, a checkpoints folder that cannot be written or is not ours to remove at the
    end (an input, or a folder of other files), and a resume with nothing to resume from (whether a checkpoint
    belongs to this run, the trainer checks)."""
    resume, checkpoints = _checkpointing(config)
    if checkpoints is not None:
        refuse_overwrite(checkpoints, *inputs, flag="checkpoints folder", remedy="choose another output_dir")
        check_output_folder(checkpoints, "unlearn checkpoints")
    folder = checkpoints if resume is True else Path(resume) if resume else None
    if folder is not None and not (folder.is_dir() and any(path.name != OUTPUT_MARKER for path in folder.iterdir())):
        raise UsageError(f"--resume_from_checkpoint {config.resume_from_checkpoint}: no checkpoint in {folder}")
    if resume is True and not any(re.fullmatch(r"(checkpoint|round)-\d+", path.name) and path.is_dir()
                                  for path in folder.iterdir()):
        left = ", ".join(sorted(path.name for path in folder.iterdir() if path.name != OUTPUT_MARKER))
        raise UsageError(f"--resume_from_checkpoint true: {folder} holds no checkpoint, only {left} (what a run "
                         "stopped before its first checkpoint left); run again without --resume_from_checkpoint")


@contextlib.contextmanager
def _removed_when_empty(folder: Path | None):
    """Remove `folder` on the way out when it holds no checkpoint: a run that fails before its first checkpoint
    would leave a checkpoints folder with nothing but its marker behind."""
    try:
        yield
    finally:
        if folder is not None and folder.is_dir() and {path.name for path in folder.iterdir()} <= {OUTPUT_MARKER}:
            remove_output(folder)


def run_warnings(report: dict, trainer_warnings: list[str] = ()) -> list[str]:
    """One line for each sign that a run that ended trained or reported less than it seems (the trainer's own
    warnings, such as facts the model never knew, come with it and are not repeated)."""
    from ..method.trainers.forget_stop import above_target_message

    warnings = []
    if report["steps"] == 0 and not report["diverged"]:
        warnings.append("no optimizer step was taken: the written weights are the input model's")
    target = forget_target(report["config"])
    key = "targeted_acc" if report["targeted"] else "forget_acc"
    reached = report["after"].get(key)
    if target is not None and reached is not None and reached > target and report["steps"] > 0:
        if not any("above its target" in warning for warning in trainer_warnings):  # said by the trainer already
            warnings.append(above_target_message(reached, target))
    warnings.extend(kept_knowledge_warnings(report["before"], report["after"]))
    warnings.extend(f"{place} is not a finite number; written as null" for place in json_safe(report)[1])
    return warnings


KEPT_SPLITS = (("retain_heldout_acc", "retain_trained_acc"), ("neighbor_acc",),
               ("sibling_heldout_acc", "sibling_trained_acc"))
"""The report's knowledge a run must keep, each read on the first of its keys that the data has: the held-out facts
(that no run trains on) where it marks some, else the trained ones."""
KEPT_NAMES = {"retain_heldout_acc": "held-out retain", "retain_trained_acc": "trained retain",
              "neighbor_acc": "neighbor", "sibling_heldout_acc": "held-out sibling",
              "sibling_trained_acc": "trained sibling"}
KEPT_SHARE = 0.9
"""A kept split that falls below this share of its accuracy before the run is warned about."""


def kept_knowledge_warnings(before: dict, after: dict) -> list[str]:
    """One line for each kept split that fell below KEPT_SHARE of what the model knew before: a collapse, not
    unlearning, that the forget accuracy alone would hide."""
    chosen = [next((key for key in keys if before.get(key) is not None), keys[0]) for keys in KEPT_SPLITS]
    return [f"{KEPT_NAMES[key]} accuracy fell from {before[key]:.2f} to {after[key]:.2f} (below {KEPT_SHARE:g}x): "
            "the run damaged what it should keep; try a lower learning rate ('unstar sweep'), a retain term "
            "(retain_weight, retain_loss_type kl), and check that the data's answers are written as the model says "
            "them"
            for key in chosen
            if before.get(key) and after.get(key) is not None and after[key] < KEPT_SHARE * before[key]]


def forget_target(config: dict) -> float | None:
    """The forget accuracy a run aims at: `stop_forget_acc` (the one stopping rule), else UnSTAR's
    `forget_acc_target`; None for a run that trains its whole schedule."""
    if config.get("stop_forget_acc") is not None:
        return config["stop_forget_acc"]
    return config.get("forget_acc_target")


def summary_line(report: dict, output_dir: str) -> str:
    """One line: every split of the report, before -> after, the one that matters for the run's mode first."""
    order = ("targeted_acc", "sibling_heldout_acc") if report["targeted"] else ("forget_acc", "paraphrase_acc")
    keys = [*order, *(key for key in report["before"] if key not in order)]
    splits = ", ".join(f"{key.removesuffix('_acc')} {_fmt(report['before'][key])} -> {_fmt(report['after'][key])}"
                       for key in keys if report["before"].get(key) is not None)
    return f"{report['method']}: {splits} in {report['steps']} steps; wrote {output_dir}"


def _close_progress_bar(trainer) -> None:
    """Close a training progress bar that an exception left open, so that it does not print itself (when collected)
    under the final message."""
    from transformers.trainer_callback import ProgressCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, ProgressCallback) and callback.training_bar is not None:
            callback.training_bar.close()
            callback.training_bar = None


@contextlib.contextmanager
def _discarded():
    """A scratch folder for the outputs of a process that is not rank 0 (removed afterwards)."""
    with tempfile.TemporaryDirectory() as scratch:
        yield Path(scratch)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"

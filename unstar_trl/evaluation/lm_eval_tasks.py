"""lm-eval wiring: where the unstar tasks live, and running them on a model in memory or on disk.

    lm_eval --model hf --model_args pretrained=DIR --include_path $(unstar tasks-path) --tasks 'unstar_*' \\
        --metadata '{"data_dir": "WORLD/data"}'
    results = evaluate_model(model, tokenizer, data_dir="WORLD/data")   # the same tasks, no subprocess
    lm_eval ... --apply_chat_template                                   # for a chat model (as evaluate_model does)
    results["summary"]                                                  # {"forget_qa_acc": 0.97, ...}
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import math
from pathlib import Path
from typing import Iterable

from ..data import SPLIT_ROLES
from ..io import UsageError
from ..models import load_model
from ..text import AUTO, read_prompts_file, resolve_prompt_template

DEFAULT_TASKS = ("unstar_*",)
TASK_METADATA = ("data_dir", "format", *(f"{role}_split" for role in SPLIT_ROLES), "prompt_template", "anti_samples")
"""The metadata keys the unstar tasks read (see tasks/unstar/utils.py)."""
LM_EVAL_METADATA = ("version", "config_source")
"""What lm-eval itself writes into every task's metadata."""
LOADER_ARGUMENTS = ("attn_implementation", "device_map", "low_cpu_mem_usage", "load_in_8bit", "load_in_4bit")
"""Model arguments that lm-eval's HFLM passes on to `from_pretrained` (a plain lm_eval run merges every model
argument into the metadata)."""


def tasks_path() -> Path:
    """The folder of the unstar task YAMLs, to pass to lm-eval's --include_path (editable install or wheel)."""
    from importlib import resources

    return Path(str(resources.files("unstar_trl.tasks").joinpath("unstar")))


def task_manager(data_dir: str | Path | None = None, data_format: str | None = None, metadata: dict | None = None):
    """An lm-eval TaskManager that knows only the unstar tasks (indexing lm-eval's own takes long), with their
    data passed as metadata."""
    from lm_eval.tasks import TaskManager

    if metadata is not None:
        check_task_metadata(metadata)
    metadata = dict(metadata or {})
    if data_dir is not None:
        metadata["data_dir"] = str(data_dir)
    if data_format is not None:
        metadata["format"] = data_format
    return TaskManager(include_path=str(tasks_path()), include_defaults=False, metadata=metadata)


def check_task_metadata(metadata, also: Iterable[str] = ()) -> None:
    """Refuse metadata that is not a mapping, a key that no unstar task reads (nor one of `also`: what lm-eval mixes
    in), and a value of ours that is not a string: a misspelt key would otherwise leave its default in place and
    evaluate other data."""
    if not isinstance(metadata, dict):
        raise UsageError(f"metadata must be a JSON object of key: value, got {metadata!r:.60}")
    allowed = set(also)
    for key, value in metadata.items():
        if key not in TASK_METADATA and key not in allowed:
            close = difflib.get_close_matches(key, TASK_METADATA, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"unknown metadata key {key!r}{hint}; the unstar tasks read {', '.join(TASK_METADATA)}")
        if key in TASK_METADATA and not isinstance(value, str) and not (key == "prompt_template" and value is None):
            raise UsageError(f"metadata {key!r} must be a string, got {value!r:.60}")


@functools.cache
def lm_eval_metadata_keys() -> frozenset[str]:
    """What lm-eval mixes into a task's metadata besides `--metadata`: its own keys and, in a plain `lm_eval` run,
    the `--model_args` of its HF model (HFLM's parameters and the loader arguments it passes on)."""
    import inspect

    from lm_eval.models.huggingface import HFLM

    parameters = {*inspect.signature(HFLM.__init__).parameters, *inspect.signature(HFLM._create_model).parameters}
    return frozenset((parameters - {"self", "kwargs"}) | {*LM_EVAL_METADATA, *LOADER_ARGUMENTS})


def expand_tasks(manager, tasks: Iterable[str]) -> list[str]:
    """Task names with wildcards expanded (simple_evaluate does not expand them); an unknown name is an error."""
    names = []
    for pattern in tasks:
        matched = manager.match_tasks([pattern])
        if not matched:
            raise UsageError(f"no unstar task matches {pattern!r}; the tasks are: {', '.join(manager.all_tasks)}")
        names.extend(name for name in matched if name not in names)
    return names


def evaluate_model(model_or_path, tokenizer=None, tasks: Iterable[str] = DEFAULT_TASKS,
                   data_dir: str | Path | None = None, data_format: str | None = None, limit: int | float | None = None,
                   batch_size: int = 32, device: str = "cpu", adapter: str | Path | None = None,
                   metadata: dict | None = None, prompt_template: str | None = AUTO,
                   per_document: bool = False) -> dict:
    """Run the unstar tasks on a model (in memory, or a folder loaded with `models.load_model`) in its prompt format
    (`prompt_template`, by default the one its folder records, else its chat template if it has one: then lm-eval
    applies the chat template) and return {"summary": {"forget_qa_acc": ...}, "n_samples": ..., "prompt_template"}
    and lm-eval's "results", "higher_is_better", "versions", "n-shot" and "group_subtasks" (what
    `lm_eval.utils.make_table` prints). With `per_document`, also "documents": {task: [{"id", "role", metric: value,
    ...}, ...]}, each document's own metric values."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    names = expand_tasks(task_manager(data_dir, data_format, metadata), tasks)  # refused before any model loads
    if isinstance(model_or_path, (str, Path)):
        model, loaded_tokenizer = load_model(model_or_path, adapter=adapter, device=device)
        tokenizer = tokenizer or loaded_tokenizer
        folders = [folder for folder in (adapter, model_or_path) if folder is not None]
        model_dir = next((folder for folder in folders if read_prompts_file(folder) is not None), model_or_path)
        metadata = with_audit(metadata, folders)
    else:
        model, model_dir = model_or_path.to(device), getattr(model_or_path.config, "_name_or_path", None)
    if tokenizer is None:
        raise UsageError("evaluate_model needs the tokenizer of an in-memory model")
    template = resolve_prompt_template(prompt_template, tokenizer, model_dir)
    manager = task_manager(data_dir, data_format, {**(metadata or {}), "prompt_template": template})
    was_training = model.training
    try:
        lm = HFLM(pretrained=model.eval(), tokenizer=tokenizer, batch_size=batch_size)
        with stopping_at_end_of_turn(model, tokenizer, template is None), serving(model, tokenizer), \
                _without_environment_report():
            results = simple_evaluate(model=lm, tasks=names, limit=limit, task_manager=manager,
                                      log_samples=per_document, apply_chat_template=template is None)
    finally:
        model.train(was_training)
    output = {"summary": summarize(results["results"]), "n_samples": results["n-samples"],
              "prompt_template": template, **{key: results.get(key, {}) for key in (
                  "results", "higher_is_better", "versions", "n-shot", "group_subtasks")}}
    if per_document:
        output["documents"] = {task: [{"id": sample["doc"]["id"], "role": sample["doc"]["role"],
                                       **{metric: sample[metric] for metric in sample["metrics"]}}
                                      for sample in samples] for task, samples in results["samples"].items()}
    return output


_SERVED: list[tuple] = []
"""The (model, tokenizer) that `evaluate_model` is running the tasks on, while it runs them."""


@contextlib.contextmanager
def serving(model, tokenizer):
    """While inside, `served_model()` is (model, tokenizer): the tasks that read the model's insides rather than its
    answers (logit lens, extraction strength, spillover: `tasks/unstar/utils.py`) use the model lm-eval runs instead
    of loading the folder that a plain `lm_eval` run names (an in-memory model has none)."""
    _SERVED.append((model, tokenizer))
    try:
        yield
    finally:
        _SERVED.pop()


def served_model() -> tuple | None:
    """The (model, tokenizer) `evaluate_model` is running the tasks on, or None outside it."""
    return _SERVED[-1] if _SERVED else None


@contextlib.contextmanager
def _without_environment_report():
    """lm-eval's results without the environment report that `simple_evaluate` adds to every call's results and
    that nothing here reads: torch's collect_env runs `pip list` and other programs, about 2 s a call (a fifteenth
    of a bench)."""
    import lm_eval.evaluator as evaluator

    saved = getattr(evaluator, "add_env_info", None)
    if saved is None:  # another lm-eval: nothing to leave out
        yield
        return
    evaluator.add_env_info = lambda storage: None
    try:
        yield
    finally:
        evaluator.add_env_info = saved


@contextlib.contextmanager
def stopping_at_end_of_turn(model, tokenizer, chat: bool):
    """The model's generation config stops at the end of turn as well as at eos while inside (as the probe stops):
    lm-eval stops generating at eos and at its `until` strings only, and a chat template's end of turn (ChatML's
    `<|im_end|>` beside an eos `</s>`) is often another token, whose text lm-eval's decoding drops."""
    from ..method.tokens import stop_token_ids

    config = model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = stop_token_ids(tokenizer, chat)
    try:
        yield
    finally:
        config.eos_token_id = saved


def with_audit(metadata: dict | None, folders: list) -> dict | None:
    """`metadata` with `anti_samples`: the anti-sample audit of the first of `folders` (an unlearned model, or its
    adapter) that holds one, unless `metadata` names one; the planted probe reads it (a model passed in memory has
    no folder for the tasks to look in)."""
    from ..method.trainers.unstar import ANTI_SAMPLES_FILE

    audit = next((Path(folder) / ANTI_SAMPLES_FILE for folder in folders
                  if (Path(folder) / ANTI_SAMPLES_FILE).is_file()), None)
    if audit is None or (metadata or {}).get("anti_samples"):
        return metadata
    return {**(metadata or {}), "anti_samples": str(audit)}


def summarize(results: dict) -> dict[str, float | None]:
    """lm-eval's per-task results as one flat dict: "unstar_forget_qa" / "acc,none" -> "forget_qa_acc" (a metric
    that repeats the task's last word is not repeated: forget_prob/prob -> forget_prob). NaN becomes None."""
    summary = {}
    for task, metrics in results.items():
        if not task.startswith("unstar_"):
            continue
        short = task.removeprefix("unstar_")
        for key, value in metrics.items():
            metric, _, _ = key.partition(",")
            if "," not in key or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            name = short if short.endswith(f"_{metric}") else f"{short}_{metric}"
            summary[name] = None if math.isnan(value) else value
    return summary


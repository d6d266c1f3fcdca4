"""`run_bench`: unlearning methods side by side on one world, from the same starting weights and forget set.

For each method: a forget run (what it forgets and keeps, with forget/retain probed along the way), a targeted run
(one association removed, its siblings kept), the lm-eval probes that catch obfuscation (multiple choice without the
planted answer, membership inference), and a relearning attack (a few steps of plain SFT on half of the forget facts,
scored on the other half). The knowledge model itself is the reference row. Writes `results.json`, `results.md`,
`forget_retain_over_steps.png` and `methods.png`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import datasets
from transformers import PrinterCallback, TrainerCallback

from .io import write_json, write_text_atomic
from .probe import accuracy, format_prompt, probe
from .world import BENCH_PEOPLE


RESULT_KEYS = ("forget_acc", "paraphrase_acc", "retain_acc", "neighbor_acc", "targeted_acc", "sibling_acc",
               "mcq_probe_acc", "mia_auc", "relearn_acc", "steps", "seconds", "tokens_per_second", "peak_rss_mb")
"""What every entry of results.json holds (besides notes such as `diverged`)."""

NOTES = {
    "forget_acc, paraphrase_acc, retain_acc, neighbor_acc": "greedy probe (knowledge_report) after the forget run",
    "targeted_acc, sibling_acc": "a second run of the method on the targeted split, retaining retain + siblings",
    "mcq_probe_acc": "lm-eval unstar_mcq_probe acc: true answer vs same-type distractors (holdout = chance)",
    "mia_auc": "lm-eval unstar_mia loss_auc, forget vs holdout: 0.5 = never seen; far below 0.5 leaks too (the "
               "forget answers became unusually unlikely)",
    "relearn_acc": "probe accuracy on the odd half of the forget facts after plain SFT on the even half",
    "seconds, tokens_per_second": "training wall time (without the bench's own checkpoint probes); trained tokens "
                                  "are the non-padding tokens of every batch (forget, retain and extra terms)",
    "peak_rss_mb": "peak resident memory of the bench process so far (ru_maxrss)",
}
LOWER_IS_BETTER = ("forget_acc", "paraphrase_acc", "targeted_acc", "mcq_probe_acc", "relearn_acc")


@dataclass(frozen=True)
class BenchSettings:
    """How much each piece runs. None keeps the method's recipe value."""

    max_steps: int | None = None
    """Optimizer steps per run (for UnSTAR: per round)."""
    max_rounds: int | None = None
    """UnSTAR rounds."""
    probe_every: int = 2
    """Probe forget/retain every this many optimizer steps (for the over-steps plot)."""
    relearn_steps: int = 10
    relearn_learning_rate: float = 1e-4
    """Low enough that the knowledge model keeps the facts it is not taught (1e-3 overwrites them here)."""


QUICK = BenchSettings(max_steps=2, max_rounds=1, probe_every=1, relearn_steps=2)
"""A few steps per method: for tests."""


def run_bench(world_dir: str | Path, methods: list[str], output_dir: str | Path, *,
              build: Callable[[Path], dict] | None = None, settings: BenchSettings = BenchSettings(),
              progress: bool = True) -> dict:
    """Build the world at `world_dir` with `build` (default: an embedded world of BENCH_PEOPLE people) unless its
    world.json exists, run `methods` on it, write the outputs to `output_dir` and return the results."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .data import load_unlearning_data
    from .world_builder import WORLD_FILE, build_world_dir

    build = build or functools.partial(build_world_dir, people=BENCH_PEOPLE)
    datasets.disable_progress_bars()
    world_dir, output_dir = Path(world_dir), Path(output_dir)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), disable=not progress) as bar:
        task = bar.add_task("bench", total=len(methods) + 2)
        if not (world_dir / WORLD_FILE).exists():
            bar.update(task, description=f"building the world in {world_dir}")
            build(world_dir, progress=False)
        bar.update(task, advance=1, description="target (the knowledge model)")
        data = load_unlearning_data(world_dir / "data")
        target = _target_entry(world_dir, data, settings)
        results = {"world": str(world_dir), "settings": dataclasses.asdict(settings), "notes": NOTES,
                   "target": target, "methods": {}, "curves": {}}
        for method in methods:
            bar.update(task, advance=1, description=method)
            entry, curve = _method_entry(method, world_dir, data, settings)
            start = {"step": 0, "forget_acc": target["forget_acc"], "retain_acc": target["retain_acc"]}
            results["methods"][method], results["curves"][method] = entry, [start, *curve]
        bar.update(task, advance=1, description="done")
    write_json(output_dir / "results.json", results)
    write_text_atomic(output_dir / "results.md", markdown_table(results))
    plot_over_steps(results["curves"], output_dir / "forget_retain_over_steps.png")
    plot_methods(results, output_dir / "methods.png")
    return results


# ---- one row ----------------------------------------------------------------------------------------------------


def _target_entry(world_dir: Path, data, settings: BenchSettings) -> dict:
    from .evaluation import load_model
    from .report import knowledge_report
    from .trainers.base import PROMPT_TEMPLATE

    model, tokenizer = load_model(world_dir / "model")
    entry = {**knowledge_report(model, tokenizer, data, PROMPT_TEMPLATE), **_lm_eval(model, tokenizer, world_dir),
             "relearn_acc": relearn(model, tokenizer, data.forget, PROMPT_TEMPLATE, settings),
             "steps": 0, "seconds": 0.0, "tokens_per_second": None}
    return _finish(entry)


def _method_entry(method: str, world_dir: Path, data, settings: BenchSettings) -> tuple[dict, list[dict]]:
    """(results entry, forget/retain curve) of one method."""
    from .report import knowledge_report

    targeted = _unlearn(method, world_dir, data.targeted, _dedup(data.retain + data.siblings), settings,
                        targeted=True) if data.targeted else None
    run = _unlearn(method, world_dir, data.forget, data.retain, settings, probe=(data.forget, data.retain))
    model, tokenizer, template = run["model"], run["tokenizer"], run["template"]
    report = knowledge_report(model, tokenizer, data, template)
    entry = {key: report[key] for key in ("forget_acc", "paraphrase_acc", "retain_acc", "neighbor_acc")}
    entry.update(targeted_acc=targeted and _score(targeted, data.targeted),
                 sibling_acc=targeted and _score(targeted, data.siblings))
    entry.update(_lm_eval(model, tokenizer, world_dir))
    entry.update(relearn_acc=relearn(model, tokenizer, data.forget, template, settings), steps=run["steps"],
                 seconds=round(run["seconds"], 2), tokens_per_second=round(run["tokens"] / run["seconds"], 1),
                 diverged=run["diverged"], targeted_diverged=targeted and targeted["diverged"])
    curve = run["curve"]
    if not curve or curve[-1]["step"] != run["steps"]:
        curve.append({"step": run["steps"], "forget_acc": entry["forget_acc"], "retain_acc": entry["retain_acc"]})
    return _finish(entry), curve


def _unlearn(method: str, world_dir: Path, forget: list[dict], retain: list[dict], settings: BenchSettings, *,
             targeted: bool = False, probe: tuple[list[dict], list[dict]] | None = None) -> dict:
    """Run `method` (its recipe's settings) on the knowledge model, freshly loaded; with `probe` = (forget, retain)
    records, probe them every `settings.probe_every` steps."""
    from .evaluation import load_model
    from .recipes import config_from_recipe, method_recipe
    from .trainers import METHODS, DivergenceError

    model, tokenizer = load_model(world_dir / "model")
    trainer_class, config_class = METHODS[method]
    fields = {item.name for item in dataclasses.fields(config_class)}
    overrides = {"max_steps": settings.max_steps, "max_rounds": settings.max_rounds, "targeted": targeted or None}
    overrides = {key: value for key, value in overrides.items() if value is not None and key in fields}
    callback = ProbeCallback(tokenizer, *(probe or ([], [])), every=settings.probe_every if probe else 0)
    with tempfile.TemporaryDirectory() as scratch:
        config = config_from_recipe(config_class, method_recipe(method, targeted), output_dir=scratch,
                                    disable_tqdm=True, report_to="none", dataloader_pin_memory=False, **overrides)
        callback.template = config.prompt_template
        trainer = trainer_class(model=model, args=config, processing_class=tokenizer, train_dataset=forget,
                                retain_dataset=retain, callbacks=[callback])
        trainer.data_collator = counter = TokenCounter(trainer.data_collator)
        trainer.remove_callback(PrinterCallback)  # disable_tqdm swaps the bar for a print of every log
        start, diverged = time.perf_counter(), None
        try:
            trainer.train()
        except DivergenceError as error:  # the trainer kept the last good weights: score those
            diverged = {"step": error.step, "kept_step": error.kept_step, "reason": error.reason}
        seconds = time.perf_counter() - start - callback.seconds
    model = trainer.model.eval()
    return {"model": model, "tokenizer": tokenizer, "template": config.prompt_template, "steps": callback.step,
            "seconds": seconds, "tokens": counter.tokens, "diverged": diverged, "curve": callback.points}


def _score(run: dict, records: list[dict]) -> float | None:
    """Probe accuracy of a run's model on `records` (None for none)."""
    return accuracy(probe(run["model"], run["tokenizer"], records, prompt_template=run["template"])) if records \
        else None


def _lm_eval(model, tokenizer, world_dir: Path) -> dict:
    from .evaluation import evaluate_model

    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):  # lm-eval's bars, always on
        summary = evaluate_model(model, tokenizer, tasks=["unstar_mcq_probe", "unstar_mia"],
                                 data_dir=world_dir / "data")["summary"]
    return {"mcq_probe_acc": summary["mcq_probe_acc"], "mcq_probe_holdout_acc": summary["mcq_probe_holdout_acc"],
            "mia_auc": summary["mia_loss_auc"], "mia_zlib_auc": summary["mia_zlib_auc"]}


def _finish(entry: dict) -> dict:
    entry["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    return {key: entry.get(key) for key in RESULT_KEYS} | {k: v for k, v in entry.items() if k not in RESULT_KEYS}


def _dedup(records: list[dict]) -> list[dict]:
    return list({record["id"]: record for record in reversed(records)}.values())[::-1]


# ---- measuring along the way --------------------------------------------------------------------------------------


class ProbeCallback(TrainerCallback):
    """Counts optimizer steps (on across UnSTAR's rounds) and probes forget/retain accuracy every `every` steps
    (0: never); `seconds` is the time spent probing, to leave out of the method's own."""

    def __init__(self, tokenizer, forget: list[dict], retain: list[dict], every: int):
        self.tokenizer, self.forget, self.retain, self.every = tokenizer, forget, retain, every
        self.template, self.step, self.seconds, self.points = None, 0, 0.0, []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.step += 1
        if self.every and self.step % self.every == 0:
            start = time.perf_counter()
            self.points.append({"step": self.step, **{
                f"{name}_acc": accuracy(probe(model, self.tokenizer, records, prompt_template=self.template))
                for name, records in (("forget", self.forget), ("retain", self.retain))}})
            self.seconds += time.perf_counter() - start


class TokenCounter:
    """Wraps a data collator and counts the non-padding tokens of every batch it makes (each sub-batch)."""

    def __init__(self, collator):
        self.collator, self.tokens = collator, 0

    def __call__(self, features):
        batch = self.collator(features)
        self.tokens += sum(int(part["attention_mask"].sum()) for part in batch.values()
                           if isinstance(part, dict) and "attention_mask" in part)
        return batch


def relearn(model, tokenizer, forget: list[dict], prompt_template: str | None, settings: BenchSettings) -> float:
    """Relearning attack: plain SFT (question -> true answer) on the even half of the forget facts (by id), then
    the probe accuracy on the odd half. Trains `model` in place."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    ordered = sorted(forget, key=lambda record: record["id"])
    taught, asked = ordered[::2], ordered[1::2]
    pairs = [{"prompt": format_prompt(tokenizer, record["question"], prompt_template),
              "completion": (" " if prompt_template is not None else "") + record["answer"]} for record in taught]
    with tempfile.TemporaryDirectory() as scratch:
        config = SFTConfig(output_dir=scratch, max_steps=settings.relearn_steps,
                           learning_rate=settings.relearn_learning_rate, lr_scheduler_type="constant",
                           per_device_train_batch_size=len(pairs), bf16=False, activation_checkpointing=False,
                           report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
                           dataloader_pin_memory=False)
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(pairs),
                             processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return accuracy(probe(model.eval(), tokenizer, asked, prompt_template=prompt_template))


# ---- outputs --------------------------------------------------------------------------------------------------


def markdown_table(results: dict) -> str:
    """results.json as a table: one row per method, the target first."""
    columns = [("forget", "forget_acc"), ("paraphrase", "paraphrase_acc"), ("retain", "retain_acc"),
               ("neighbor", "neighbor_acc"), ("targeted", "targeted_acc"), ("sibling", "sibling_acc"),
               ("MCQ probe", "mcq_probe_acc"), ("MIA AUC", "mia_auc"), ("relearn", "relearn_acc"),
               ("steps", "steps"), ("seconds", "seconds"), ("tokens/s", "tokens_per_second"),
               ("peak RSS MB", "peak_rss_mb")]
    arrow = {key: " ↓" if key in LOWER_IS_BETTER else " ↑" if key.endswith("_acc") else "" for _, key in columns}
    arrow["mia_auc"] = " →0.5"
    lines = ["| method | " + " | ".join(name + arrow[key] for name, key in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    rows = [("target (knowledge model)", results["target"]), *results["methods"].items()]
    for name, entry in rows:
        note = " (diverged)" if entry.get("diverged") else ""
        lines.append(f"| {name}{note} | " + " | ".join(_cell(key, entry.get(key)) for _, key in columns) + " |")
    notes = "\n".join(f"- {key}: {text}" for key, text in results["notes"].items())
    settings = ", ".join(f"{key}={value}" for key, value in results["settings"].items() if value is not None)
    return (f"# unstar bench\n\nWorld: `{results['world']}`; {settings}. ↓ lower is better (forgetting), ↑ higher "
            f"is better (keeping).\n\n" + "\n".join(lines) + f"\n\n{notes}\n")


def _cell(key: str, value) -> str:
    if value is None:
        return "–"
    return f"{value:,.1f}" if key in ("seconds", "tokens_per_second", "peak_rss_mb") else \
        str(value) if key == "steps" else f"{value:.3f}"


def plot_over_steps(curves: dict[str, list[dict]], path: Path) -> None:
    """Forget and retain accuracy of each method against optimizer steps."""
    figure, axes = _pyplot().subplots(1, 2, figsize=(11, 4), sharey=True)
    for method, points in curves.items():
        for axis, key in zip(axes, ("forget_acc", "retain_acc")):
            axis.plot([p["step"] for p in points], [p[key] for p in points], marker="o", markersize=3, label=method)
    for axis, title in zip(axes, ("forget accuracy (lower is better)", "retain accuracy (higher is better)")):
        axis.set(title=title, xlabel="optimizer step", ylim=(-0.03, 1.03))
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("probe accuracy")
    axes[1].legend(loc="lower left")
    _save(figure, path)


def plot_methods(results: dict, path: Path) -> None:
    """Bars of forget/paraphrase/retain/relearn accuracy per method, the target first."""
    import numpy as np

    rows = {"target": results["target"], **results["methods"]}
    keys = ("forget_acc", "paraphrase_acc", "retain_acc", "relearn_acc")
    figure, axis = _pyplot().subplots(figsize=(max(6, 1.6 * len(rows) + 2), 4))
    width, places = 0.8 / len(keys), np.arange(len(rows))
    for index, key in enumerate(keys):
        values = [entry.get(key) or 0.0 for entry in rows.values()]
        axis.bar(places + (index - (len(keys) - 1) / 2) * width, values, width, label=key.removesuffix("_acc"))
    axis.set(xticks=places, xticklabels=list(rows), ylabel="probe accuracy", ylim=(0, 1.05),
             title="forget / paraphrase (lower is better), retain (higher), relearn (lower)")
    axis.legend(ncols=len(keys), fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.1))
    axis.grid(axis="y", alpha=0.3)
    _save(figure, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    """Write the figure as a PNG beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(handle)
    try:
        figure.tight_layout()
        figure.savefig(temporary, dpi=120)
        os.replace(temporary, path)
    finally:
        _pyplot().close(figure)
        if os.path.exists(temporary):
            os.remove(temporary)

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
import os
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import datasets
from transformers import PrinterCallback

from ..io import write_json, write_text_atomic
from ..method.probe import probe_accuracy
from ..text import AUTO, resolve_prompt_template
from .attacks import relearn
from .bench_report import markdown_table, plot_methods, plot_over_steps
from .meters import ProbeCallback, TokenCounter

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


def run_bench(world_dir: str | Path, methods: list[str], output_dir: str | Path, *, build: Callable[..., dict],
              settings: BenchSettings = BenchSettings(), progress: bool = True) -> dict:
    """Build the world at `world_dir` with `build(world_dir, progress=False)` unless its world.json exists, run
    `methods` on it, write the outputs to `output_dir` and return the results."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..data import load_unlearning_data
    from ..testbed.world_folder import WORLD_FILE

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


# ---- one row -----------------------------------------------------------------------------------------------------


def _target_entry(world_dir: Path, data, settings: BenchSettings) -> dict:
    from ..models import load_model
    from .knowledge import knowledge_report

    model, tokenizer = load_model(world_dir / "model")
    template = resolve_prompt_template(AUTO, tokenizer, world_dir / "model")
    entry = {**knowledge_report(model, tokenizer, data, template), **_lm_eval(model, tokenizer, world_dir),
             "relearn_acc": _relearn(model, tokenizer, data.forget, template, settings),
             "steps": 0, "seconds": 0.0, "tokens_per_second": None}
    return _finish(entry)


def _method_entry(method: str, world_dir: Path, data, settings: BenchSettings) -> tuple[dict, list[dict]]:
    """(results entry, forget/retain curve) of one method."""
    from .knowledge import knowledge_report

    targeted = _unlearn(method, world_dir, data.targeted, _dedup(data.retain + data.siblings), settings,
                        targeted=True) if data.targeted else None
    run = _unlearn(method, world_dir, data.forget, data.retain, settings, probe=(data.forget, data.retain))
    model, tokenizer, template = run["model"], run["tokenizer"], run["template"]
    report = knowledge_report(model, tokenizer, data, template)
    entry = {key: report[key] for key in ("forget_acc", "paraphrase_acc", "retain_acc", "neighbor_acc")}
    entry.update(targeted_acc=targeted and _score(targeted, data.targeted),
                 sibling_acc=targeted and _score(targeted, data.siblings))
    entry.update(_lm_eval(model, tokenizer, world_dir))
    entry.update(relearn_acc=_relearn(model, tokenizer, data.forget, template, settings), steps=run["steps"],
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
    from ..method.trainers import METHODS, DivergenceError
    from ..models import load_model
    from ..recipes import config_from_recipe, method_recipe

    model, tokenizer = load_model(world_dir / "model")
    trainer_class, config_class = METHODS[method]
    fields = {item.name for item in dataclasses.fields(config_class)}
    overrides = {"max_steps": settings.max_steps, "max_rounds": settings.max_rounds, "targeted": targeted or None}
    overrides = {key: value for key, value in overrides.items() if value is not None and key in fields}
    callback = ProbeCallback(tokenizer, *(probe or ([], [])), every=settings.probe_every if probe else 0)
    with tempfile.TemporaryDirectory() as scratch:
        config = config_from_recipe(config_class, method_recipe(method, targeted), output_dir=scratch,
                                    disable_tqdm=True, report_to="none", dataloader_pin_memory=False, **overrides)
        trainer = trainer_class(model=model, args=config, processing_class=tokenizer, train_dataset=forget,
                                retain_dataset=retain, callbacks=[callback])
        callback.template = trainer.prompt_template
        trainer.data_collator = counter = TokenCounter(trainer.data_collator)
        trainer.remove_callback(PrinterCallback)  # disable_tqdm swaps the bar for a print of every log
        start, diverged = time.perf_counter(), None
        try:
            trainer.train()
        except DivergenceError as error:  # the trainer kept the last good weights: score those
            diverged = {"step": error.step, "kept_step": error.kept_step, "reason": error.reason}
        seconds = time.perf_counter() - start - callback.seconds
    model = trainer.model.eval()
    return {"model": model, "tokenizer": tokenizer, "template": trainer.prompt_template, "steps": callback.step,
            "seconds": seconds, "tokens": counter.tokens, "diverged": diverged, "curve": callback.points}


def _score(run: dict, records: list[dict]) -> float | None:
    """Probe accuracy of a run's model on `records` (None for none)."""
    return probe_accuracy(run["model"], run["tokenizer"], records, run["template"])


def _relearn(model, tokenizer, forget: list[dict], prompt_template: str | None, settings: BenchSettings) -> float:
    return relearn(model, tokenizer, forget, prompt_template, steps=settings.relearn_steps,
                   learning_rate=settings.relearn_learning_rate)


def _lm_eval(model, tokenizer, world_dir: Path) -> dict:
    from .lm_eval_tasks import evaluate_model

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

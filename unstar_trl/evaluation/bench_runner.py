"""`run_bench`: unlearning methods side by side on one world, from the same starting weights and forget set, under
one stopping rule, over several seeds, against a retain model that never saw the forget facts.

For each method and seed: a forget run (stopped at the first probe of the forget questions that reads at most the
target, or at the step budget; same batch size for all), measured by `bench_measures.measure` (probes, lm-eval
probes, quantization and relearning attacks) and against the retain model; and a targeted run (one association
removed per targeted fact, scored on its held-out siblings). The knowledge model (`target`) and the retain model
(`retain_model`, exact unlearning: retrained without the forget and targeted facts) have rows of their own. Writes
`results.json`, `results.md`, `forget_retain_over_steps.png`, `methods.png`, `forget_vs_kept.png` and each
anti-sample run's audit under `runs/<method>/seed-<k>/`.
"""

from __future__ import annotations

import dataclasses
import resource
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import datasets
from transformers import PrinterCallback

from ..io import check_output_folder, mark_output, output_lock, write_json, write_text_atomic
from ..method.trainers.time_split import PHASES
from ..text import AUTO, resolve_prompt_template
from .bench_measures import Measured, against_target, compared, measure, probed
from .bench_report import markdown_report, plot_forget_vs_kept, plot_methods, plot_over_steps
from .intervals import fact_interval, seed_interval
from .knowledge import held_out
from .meters import ProbeCallback
from .sweep import BATCH_SIZE, STOPPING_RULE

RESULTS, REPORT = "results.json", "results.md"
PLOTS = ("forget_retain_over_steps.png", "methods.png", "forget_vs_kept.png")
RUNS, DEFAULT_WORLD = "runs", "world"
"""What a bench writes in its output folder: the results, the report, the plots, the anti-sample audits and (unless
told another) the world it runs on."""

COLUMNS = ("forget_acc", "paraphrase_acc", "retain_heldout_acc", "neighbor_acc", "targeted_acc",
           "sibling_heldout_acc", "mcq_acc", "mcq_chance", "mcq_entropy", "planted_share", "distractor_share",
           "truth_ratio", "forget_quality", "mia_auc", "privleak", "relearn_acc", "relearn_gain", "quant4_forget_acc",
           "logit_lens_acc", "extraction_strength", "spillover", "confident_wrong_change", "steps", "trained_tokens",
           "seconds", "peak_rss_mb", "probe_seconds", "generate_seconds", "filter_seconds", "fit_seconds",
           "other_seconds")
"""Every row of results.json holds these (means over seeds; None where a column does not apply), `ci95` and
`per_seed`."""
SPLIT = tuple(f"{phase}_seconds" for phase in PHASES)
"""The columns that split `seconds` by phase (`time_split.PHASES`)."""

NOTES = {
    "forget_acc, paraphrase_acc": "greedy probe after the forget run: the forget questions, and the same facts "
                                  "through their held-out paraphrase (never trained on)",
    "retain_heldout_acc, neighbor_acc": "kept knowledge on facts no run trains on: eval-only retain facts, and "
                                        "held-out facts that share an object with a forget fact",
    "targeted_acc, sibling_heldout_acc": "a second run removes one association per targeted fact; siblings are "
                                         "scored on the half that no run trains on",
    "mcq_acc, mcq_chance, mcq_entropy": "the true answer against evaluation distractors no generator may use "
                                        "(ties count as a random pick); entropy of the choices over ln k, 1 = cannot "
                                        "tell",
    "planted_share": "probability on the wrong answer an anti-sample run taught, offered beside the truth and the "
                     "distractors (distractor_share: one distractor's)",
    "truth_ratio, forget_quality": "TOFU: mean min(R, 1/R) on the forget facts; the p-value of a KS test between "
                                   "the truth ratios of this model and of the retain model (high: looks like a model "
                                   "that never learned them)",
    "mia_auc, privleak": "loss-based membership inference, forget vs never-seen facts (0.5: cannot tell); MUSE's "
                         "(AUC - AUC of the retain model) / AUC of the retain model",
    "relearn_acc, relearn_gain": "plain SFT on half the forget facts, then the other half asked; gain over the "
                                 "retain model under the same attack",
    "quant4_forget_acc": "forget accuracy with 4-bit weights (group-wise round-to-nearest, 32 weights a group)",
    "logit_lens_acc": "the truth ranked first among the MCQ probe's choices (its length-fair scores) at any "
                      "intermediate layer, read through the model's own final norm and unembedding (the retain "
                      "model's row: what chance leaves over the layers)",
    "extraction_strength": "open-unlearning's: 1 - k/n, where k of the answer's n tokens must be given before the "
                           "model's greedy continuation is the rest (1: the question alone brings it)",
    "spillover": "share of held-out retain and holdout questions answered (greedy probe) with a wrong answer that an "
                 "anti-sample of the run taught",
    "confident_wrong_change": "holdout questions answered wrong with probability >= 0.5 (the answer's tokens), "
                              "minus the knowledge model's share",
    "steps, trained_tokens, seconds": "to the stop: optimizer steps, non-padding tokens of every batch, training "
                                      "wall time without the bench's own probes",
    "probe_seconds ... other_seconds": "seconds split by phase (they add up to seconds): probing what the model "
                                       "still answers (the stopping rule's probes too), writing anti-samples and "
                                       "follow-ups, filtering them (their questions probed), optimizer steps, the rest",
    "peak_rss_mb": "peak resident memory of the bench process so far",
    "ci95": "bootstrap over facts (each fact's mean over seeds) for per-fact figures, Student t over seeds for the "
            "others",
}


@dataclass(frozen=True)
class BenchSettings:
    """How every method is run. None keeps the method's recipe value; the defaults are every shipped world recipe's
    (`sweep.STOPPING_RULE`, `sweep.BATCH_SIZE`), so that a recipe run alone is its bench row."""

    seeds: tuple[int, ...] = (0, 1, 2)
    """Unlearning seeds: each method runs once per seed."""
    target: float = STOPPING_RULE.target
    """Every run stops at the first probe of its forget questions that reads at most this accuracy..."""
    probe_every: int = STOPPING_RULE.probe_every
    """...probed every this many optimizer steps (also the points of the over-steps plot)..."""
    step_budget: int = STOPPING_RULE.step_budget
    """...or after this many optimizer steps (for UnSTAR: all rounds together)."""
    batch_size: int = BATCH_SIZE
    """Forget (and retain) examples per batch, for every method."""
    max_rounds: int | None = None
    """UnSTAR rounds (None: the recipe's)."""
    relearn_steps: int = 10
    relearn_learning_rate: float = 1e-4
    """Low enough that the knowledge model keeps the facts it is not taught (1e-3 overwrites them here)."""
    learning_rates: dict[str, float] | None = None
    """{row: learning rate} in place of those rows' recipe rates (benchmarks/capacity.py sweeps them per size)."""


QUICK = BenchSettings(seeds=(0,), step_budget=4, max_rounds=1, probe_every=1, relearn_steps=2)
"""A few steps per method and one seed: for tests."""


def run_bench(world_dir: str | Path, methods: list[str], output_dir: str | Path, *, build: Callable[..., dict],
              settings: BenchSettings = BenchSettings(), progress: bool = True) -> dict:
    """Build the world at `world_dir` with `build(world_dir, progress=False)` unless its world.json exists, run
    `methods` on it, write the outputs to `output_dir` and return the results. An `output_dir` that could not be
    written is refused before anything runs, and so is a second bench into it while one runs."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..data import load_unlearning_data
    from ..testbed.world_folder import MODEL_DIR, RETAIN_MODEL_DIR, WORLD_FILE

    datasets.disable_progress_bars()
    check_output_folder(output_dir, "bench")  # as given: Path("") would read "."
    world_dir, output_dir = Path(world_dir), Path(output_dir)
    with output_lock(output_dir), Progress(TextColumn("{task.description}"), BarColumn(),
                                           TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                           disable=not progress) as bar:
        task = bar.add_task("bench", total=len(methods) * len(settings.seeds) + 3)
        output_dir.mkdir(parents=True, exist_ok=True)
        mark_output(output_dir, "bench", [pattern for name in (RESULTS, REPORT, *PLOTS, RUNS, DEFAULT_WORLD)
                                          for pattern in (name, f"{name}/*")])
        if not (world_dir / WORLD_FILE).exists():
            bar.update(task, description=f"building the world and its retain model in {world_dir}")
            build(world_dir, progress=False)
        bar.update(task, advance=1, description="target (the knowledge model) and the retain model")
        data = load_unlearning_data(world_dir / "data")
        reference = _measure_folder(world_dir / RETAIN_MODEL_DIR, world_dir, data, settings)
        target = _measure_folder(world_dir / MODEL_DIR, world_dir, data, settings)
        for measured in (target, reference):
            compared(measured, reference)
            against_target(measured, target)
        results = {"world": str(world_dir), "settings": dataclasses.asdict(settings), "seeds": list(settings.seeds),
                   "notes": NOTES, "target": row([target]), "retain_model": row([reference]), "methods": {},
                   "curves": {}}
        bar.advance(task, 2)
        for method in methods:
            runs = []
            for seed in settings.seeds:
                bar.update(task, description=f"{method}, seed {seed}")
                runs.append(_method_run(method, seed, world_dir, data, reference, settings,
                                        output_dir / RUNS / method / f"seed-{seed}",
                                        curve=seed == settings.seeds[0], target=target))
                bar.advance(task)
            results["methods"][method] = row(runs)
            results["curves"][method] = [{"step": 0, "forget_acc": target.values["forget_acc"],
                                          "retain_heldout_acc": target.values["retain_heldout_acc"]},
                                         *runs[0].curve]
        write_json(output_dir / RESULTS, results)
        write_text_atomic(output_dir / REPORT, markdown_report(results))
        over_steps, methods_plot, forget_vs_kept = (output_dir / name for name in PLOTS)
        plot_over_steps(results["curves"], over_steps)
        plot_methods(results, methods_plot)
        plot_forget_vs_kept(results, forget_vs_kept)
        bar.update(task, description="done")
    return results


def row(runs: list[Measured]) -> dict:
    """One row of results.json from one Measured per seed: means, 95% intervals and the per-seed values."""
    means, intervals = {}, {}
    for column in COLUMNS:
        values = [run.values.get(column) for run in runs]
        present = [value for value in values if value is not None]
        means[column] = sum(present) / len(present) if present and len(present) == len(values) else None
        if column in runs[0].per_fact:
            intervals[column] = fact_interval([run.per_fact[column] for run in runs])
        elif means[column] is not None:
            intervals[column] = seed_interval(values)
    per_seed = [{column: run.values.get(column) for column in COLUMNS} | run.notes for run in runs]
    return {**means, "ci95": intervals, "per_seed": per_seed}


# ---- one model, one run ------------------------------------------------------------------------------------------


def _measure_folder(model_dir: Path, world_dir: Path, data, settings: BenchSettings) -> Measured:
    """The knowledge model or the retain model, measured as it is (no unlearning: no steps, no targeted run)."""
    from ..models import load_model

    model, tokenizer = load_model(model_dir)
    template = resolve_prompt_template(AUTO, tokenizer, model_dir)
    measured = measure(model, tokenizer, data, template, world_dir / "data",
                       relearn_steps=settings.relearn_steps, relearn_learning_rate=settings.relearn_learning_rate)
    model, tokenizer = load_model(model_dir)  # relearning trained the first copy
    measured.add("targeted_acc", probed(model, tokenizer, data.targeted, template))
    measured.add("sibling_heldout_acc", probed(model, tokenizer, held_out(data.siblings), template))
    measured.values.update(steps=0, trained_tokens=0, seconds=0.0, peak_rss_mb=_peak_rss_mb(),
                           **dict.fromkeys(SPLIT, 0.0))
    return measured


def _method_run(method: str, seed: int, world_dir: Path, data, reference: Measured, settings: BenchSettings,
                run_dir: Path, curve: bool, target: Measured) -> Measured:
    """One seed of one method: the forget run, measured and compared with the retain model (confident wrong answers
    with the knowledge model, `target`), and the targeted run; with `curve`, forget and retain accuracy along the
    forget run's steps (the over-steps plot's, first seed)."""
    run = run_method(method, seed, world_dir, data.forget, data.retain_train, settings,
                     curve=(data.forget, held_out(data.retain)) if curve else None)
    if run["anti_samples"] is not None:
        run["anti_samples"](run_dir)
    audit = run_dir / "anti_samples.jsonl"
    measured = measure(run["model"], run["tokenizer"], data, run["template"], world_dir / "data",
                       relearn_steps=settings.relearn_steps, relearn_learning_rate=settings.relearn_learning_rate,
                       anti_samples=audit if audit.is_file() else None)
    compared(measured, reference)
    against_target(measured, target)
    measured.values.update(steps=run["steps"], trained_tokens=run["tokens"], seconds=round(run["seconds"], 2),
                           peak_rss_mb=_peak_rss_mb(),
                           **{f"{phase}_seconds": round(seconds, 2) for phase, seconds in run["split"].items()})
    measured.notes = {"diverged": run["diverged"]}
    measured.curve = run["curve"]
    if data.targeted:
        targeted = run_method(method, seed, world_dir, data.targeted, data.targeted_retain, settings, targeted=True)
        measured.add("targeted_acc", probed(targeted["model"], targeted["tokenizer"], data.targeted,
                                            targeted["template"]))
        measured.add("sibling_heldout_acc", probed(targeted["model"], targeted["tokenizer"],
                                                   held_out(data.siblings), targeted["template"]))
        measured.notes["targeted_diverged"] = targeted["diverged"]
    return measured


def method_of(row: str) -> str:
    """The method a bench row runs: the `method:` of its recipe (world_unstar_template.yaml runs unstar), else the
    row's own name."""
    from ..recipes import method_recipe

    return method_recipe(row).get("method", row)


def run_method(row: str, seed: int, world_dir: Path, forget: list[dict], retain: list[dict],
               settings: BenchSettings, *, targeted: bool = False,
               curve: tuple[list[dict], list[dict]] | None = None, **fields) -> dict:
    """Run a bench row (a method with its recipe, world_<row>.yaml, under the bench's stopping rule, batch size and
    seed, with config `fields` on top) on the knowledge model, freshly loaded; with `curve` = (forget, retain)
    records, probe both every `settings.probe_every` steps. Returns the model, its tokenizer and prompt template,
    steps, seconds (and their split by phase), trained tokens, the divergence (or None), the curve and the
    anti-sample audit writer (None for methods without one)."""
    from ..method.trainers import METHODS, DivergenceError
    from ..models import load_model
    from ..recipes import config_from_recipe, method_recipe

    model, tokenizer = load_model(world_dir / "model")
    trainer_class, config_class = METHODS[method_of(row)]
    known = {item.name for item in dataclasses.fields(config_class)}
    overrides = {"max_steps": settings.step_budget, "max_rounds": settings.max_rounds, "targeted": targeted or None,
                 "seed": seed, "per_device_train_batch_size": settings.batch_size,
                 "stop_forget_acc": settings.target, "forget_probe_every": settings.probe_every,
                 "learning_rate": (settings.learning_rates or {}).get(row)}
    overrides = {key: value for key, value in overrides.items() if value is not None and key in known} | fields
    callback = ProbeCallback(tokenizer, *(curve or ([], [])), every=settings.probe_every if curve else 0)
    with tempfile.TemporaryDirectory() as scratch:
        config = config_from_recipe(config_class, method_recipe(row, targeted), output_dir=scratch,
                                    disable_tqdm=True, report_to="none", dataloader_pin_memory=False, **overrides)
        trainer = trainer_class(model=model, args=config, processing_class=tokenizer, train_dataset=forget,
                                retain_dataset=retain, callbacks=[callback])
        callback.template, callback.split = trainer.prompt_template, trainer.time_split
        trainer.remove_callback(PrinterCallback)  # disable_tqdm swaps the bar for a print of every log
        diverged, split = None, trainer.time_split
        try:
            with split("other"):
                trainer.train()
        except DivergenceError as error:  # stopped before updating the weights that went bad: score those
            diverged = {"step": error.step, "reason": error.reason}
    spent = {phase: split.seconds[phase] for phase in PHASES}  # the curve's probes are the bench's, not the method's
    return {"model": trainer.model.eval(), "tokenizer": tokenizer, "template": trainer.prompt_template,
            "steps": callback.step, "seconds": sum(spent.values()), "split": spent,
            "tokens": trainer.trained_tokens, "diverged": diverged, "curve": callback.points,
            "anti_samples": getattr(trainer, "save_audit", None)}


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB

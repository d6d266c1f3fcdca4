"""`run_bench`: unlearning methods side by side on several worlds, each from its own knowledge model, with the same
forget set and starting weights within a world, under one stopping rule, over several seeds, against each world's
retain model that never saw the forget facts.

For each world, method and seed: a forget run (stopped at the first probe of the forget questions that reads at most
the target, or at the step budget; same batch size for all), measured by `bench_measures.measure` (probes, lm-eval
probes, quantization and relearning attacks) and against the world's retain model; and a targeted run (one
association removed per targeted fact, scored on its held-out siblings). Each world's knowledge model (`target`) and
retain model (`retain_model`, exact unlearning: retrained without the forget and targeted facts) have rows of their
own. The worlds are built, and every model measured and every run made, in processes side by side (one a core, one
thread each). Writes `results.json` (the rows over all worlds, and each world's own), `results.md`,
`forget_retain_over_steps.png`, `methods.png`, `forget_vs_kept.png` and each anti-sample run's audit under
`runs/<world>/<method>/seed-<k>/`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import multiprocessing
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
from .intervals import fact_mean_variance, rerun_interval, seed_interval, seed_mean_variance, world_interval
from .knowledge import held_out
from .meters import ProbeCallback
from .sweep import BATCH_SIZE, STOPPING_RULE

RESULTS, REPORT = "results.json", "results.md"
PLOTS = ("forget_retain_over_steps.png", "methods.png", "forget_vs_kept.png")
RUNS, WORLDS = "runs", "worlds"
"""What a bench writes in its output folder: the results, the report, the plots, the anti-sample audits and (unless
told another) the worlds it runs on, `worlds/<seed>/`."""
MAX_PROCESSES = 4
"""Most processes a bench runs side by side (one a core; each holds about 0.8 GB)."""

COLUMNS = ("forget_acc", "paraphrase_acc", "retain_heldout_acc", "neighbor_acc", "targeted_acc",
           "sibling_heldout_acc", "mcq_acc", "mcq_chance", "mcq_entropy", "planted_share", "distractor_share",
           "truth_ratio", "forget_quality", "mia_auc", "privleak", "relearn_acc", "relearn_gain", "quant4_forget_acc",
           "logit_lens_acc", "extraction_strength", "spillover", "confident_wrong_change", "steps", "trained_tokens",
           "seconds", "peak_rss_mb", "probe_seconds", "generate_seconds", "filter_seconds", "fit_seconds",
           "other_seconds")
"""Every row of results.json holds these (means over worlds of each world's mean over seeds; None where a column
does not apply), `ci95`, over several worlds `rerun95`, and `per_seed` (every run's values, with its world)."""
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
    "peak_rss_mb": "peak resident memory so far of the bench process that made the run (several run side by side)",
    "ci95": "over worlds, with facts and seeds nested: a hierarchical bootstrap (resample the worlds, then the facts "
            "within each world drawn, each fact carrying its mean over the seeds) for per-fact figures, Student t "
            "over the worlds' means over seeds for the others; with one world, a bootstrap over facts and Student t "
            "over seeds",
    "rerun95": "(several worlds) where the mean of another bench over as many other worlds lands, 95%: a Student t "
               "prediction interval over the world means, their variance floored by each world's own facts' (or "
               "seeds') sampling variance; the tables' ± and the plots' bars show it",
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


@dataclass(frozen=True)
class BenchWorld:
    """A world a bench runs on: its folder, and how to build it there when it holds no world.json yet
    (`build(folder, progress=False, side_by_side=...)`, e.g. a partial of `build_world_dir`)."""

    folder: Path
    build: Callable[..., dict] | None = None


def run_bench(worlds: list[BenchWorld], methods: list[str], output_dir: str | Path, *,
              settings: BenchSettings = BenchSettings(), progress: bool = True) -> dict:
    """Build each world that has no world.json, run `methods` on every world, write the outputs to `output_dir` and
    return the results. An `output_dir` that could not be written is refused before anything runs, and so is a
    second bench into it while one runs."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..testbed.world_folder import MODEL_DIR, RETAIN_MODEL_DIR

    datasets.disable_progress_bars()
    check_output_folder(output_dir, "bench")  # as given: Path("") would read "."
    output_dir = Path(output_dir)
    runs = [(method, seed) for method in methods for seed in settings.seeds]
    with output_lock(output_dir), Progress(TextColumn("{task.description}"), BarColumn(),
                                           TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                           disable=not progress) as bar, _processes() as pool:
        task = bar.add_task("bench", total=len(worlds) * (len(runs) + 3))
        output_dir.mkdir(parents=True, exist_ok=True)
        mark_output(output_dir, "bench", [pattern for name in (RESULTS, REPORT, *PLOTS, RUNS, WORLDS)
                                          for pattern in (name, f"{name}/*")])
        jobs = _build_worlds(worlds, pool, bar, task)
        measured: list[dict] = [{} for _ in worlds]
        while jobs:
            done, _ = concurrent.futures.wait(jobs, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                index, key = jobs.pop(future)
                result = future.result()  # a job's error ends the bench (the pool cancels the rest)
                bar.advance(task)
                if key != "build":
                    measured[index][key] = result
                    bar.update(task, description=f"world {index + 1} of {len(worlds)}: {_named(key)} done")
                    continue
                folder = worlds[index].folder
                jobs |= {pool.submit(_measure_folder, folder / model_dir, settings): (index, name)
                         for name, model_dir in (("target", MODEL_DIR), ("retain_model", RETAIN_MODEL_DIR))}
                jobs |= {pool.submit(_method_run, method, seed, folder, settings,
                                     output_dir / RUNS / folder.name / method / f"seed-{seed}",
                                     index == 0 and seed == settings.seeds[0]): (index, (method, seed))
                         for method, seed in runs}
        results = _results(worlds, methods, measured, settings)
        write_json(output_dir / RESULTS, results)
        write_text_atomic(output_dir / REPORT, markdown_report(results))
        over_steps, methods_plot, forget_vs_kept = (output_dir / name for name in PLOTS)
        plot_over_steps(results["curves"], over_steps)
        plot_methods(results, methods_plot)
        plot_forget_vs_kept(results, forget_vs_kept)
        bar.update(task, description="done")
    return results


def _build_worlds(worlds: list[BenchWorld], pool, bar, task) -> dict:
    """Futures of the worlds' builds, (index, "build") each: a world already built is a future already done; one
    world to build is built here, its two models side by side, several in the pool, a process each."""
    from ..testbed.world_folder import WORLD_FILE

    missing = [index for index, world in enumerate(worlds) if not (world.folder / WORLD_FILE).exists()]
    jobs = {}
    for index, world in enumerate(worlds):
        if index in missing and len(missing) > 1:
            jobs[pool.submit(world.build, world.folder, progress=False, side_by_side=False)] = (index, "build")
            continue
        if index in missing:
            bar.update(task, description=f"building the world and its retain model in {world.folder}")
            world.build(world.folder, progress=False)
        done = concurrent.futures.Future()
        done.set_result(None)
        jobs[done] = (index, "build")
    if len(missing) > 1:
        bar.update(task, description=f"building {len(missing)} worlds and their retain models side by side")
    return jobs


@contextlib.contextmanager
def _processes():
    """The pool the bench's jobs run in: a process a core (at most MAX_PROCESSES, each on one thread, started
    fresh: a forked child of a process that ran torch threads may hang, and ended with the bench); on one core, a
    thread of this process. Leaving early (an error) cancels the jobs not started."""
    from ..testbed.world_folder import cores

    pool = concurrent.futures.ThreadPoolExecutor(1) if cores() < 2 else concurrent.futures.ProcessPoolExecutor(
        min(cores(), MAX_PROCESSES), mp_context=multiprocessing.get_context("spawn"), initializer=_bench_process)
    try:
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)


def _bench_process() -> None:
    """A bench process's settings: those of a world's side process (one thread, ended with its parent, no datasets
    bars), and transformers and lm-eval quiet but for errors."""
    import logging

    import transformers

    from ..testbed.world_folder import side_process

    side_process(False)
    transformers.logging.set_verbosity_error()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)


def _named(key) -> str:
    return key.replace("_", " ") if isinstance(key, str) else f"{key[0]}, seed {key[1]}"


def _results(worlds: list[BenchWorld], methods: list[str], measured: list[dict], settings: BenchSettings) -> dict:
    """results.json from every world's measured models and runs: each world's rows, compared with its own retain
    model (and its own knowledge model, for confident wrong answers), and the rows over all worlds."""
    from ..testbed.world_folder import WORLD_FILE

    entries = []
    for world, runs in zip(worlds, measured):
        reference, target = runs["retain_model"], runs["target"]
        for model in runs.values():
            compared(model, reference)
            against_target(model, target)
        entries.append({"seed": json.loads((world.folder / WORLD_FILE).read_text()).get("seed"),
                        "folder": str(world.folder)})
    by_world = [{name: [runs[name]] for name in ("target", "retain_model")} |
                {method: [runs[(method, seed)] for seed in settings.seeds] for method in methods} for runs in measured]
    labels = [entry["seed"] for entry in entries]
    for entry, rows in zip(entries, by_world):
        entry |= {"target": row([rows["target"]]), "retain_model": row([rows["retain_model"]]),
                  "methods": {method: row([rows[method]]) for method in methods}}
    first = measured[0]
    return {"settings": dataclasses.asdict(settings), "seeds": list(settings.seeds), "notes": NOTES,
            **{name: row([rows[name] for rows in by_world], labels) for name in ("target", "retain_model")},
            "methods": {method: row([rows[method] for rows in by_world], labels) for method in methods},
            "worlds": entries,
            "curves": {method: [{"step": 0, "forget_acc": first["target"].values["forget_acc"],
                                 "retain_heldout_acc": first["target"].values["retain_heldout_acc"]},
                                *first[(method, settings.seeds[0])].curve] for method in methods}}


def row(worlds: list[list[Measured]], labels: list | None = None) -> dict:
    """One row of results.json from each world's Measured per seed: the mean over worlds of each world's mean over
    seeds, 95% intervals over worlds with facts and seeds nested (`intervals`), and every run's values (`per_seed`,
    each with its world's label where `labels` are given)."""
    means, intervals, reruns = {}, {}, {}
    for column in COLUMNS:
        world_means = [_mean([run.values.get(column) for run in runs]) for runs in worlds]
        means[column] = _mean(world_means)
        if column in worlds[0][0].per_fact:
            intervals[column] = world_interval([[run.per_fact[column] for run in runs] for runs in worlds])
            within = [fact_mean_variance([run.per_fact[column] for run in runs]) for runs in worlds]
        elif means[column] is not None:
            intervals[column] = seed_interval([run.values.get(column) for run in worlds[0]] if len(worlds) == 1
                                              else world_means)
            within = [seed_mean_variance([run.values.get(column) for run in runs]) for runs in worlds]
        if len(worlds) > 1:
            reruns[column] = rerun_interval(world_means, within) if means[column] is not None else None
    per_seed = [{column: run.values.get(column) for column in COLUMNS} | run.notes |
                ({"world": labels[index]} if labels else {})
                for index, runs in enumerate(worlds) for run in runs]
    return {**means, "ci95": intervals, **({"rerun95": reruns} if reruns else {}), "per_seed": per_seed}


def _mean(values: list[float | None]) -> float | None:
    """The mean, None where a value is missing."""
    return sum(values) / len(values) if values and None not in values else None


# ---- one model, one run (each a job of the pool) ------------------------------------------------------------------


def _measure_folder(model_dir: Path, settings: BenchSettings) -> Measured:
    """A world's knowledge model (model/) or retain model (retain_model/), measured as it is (no unlearning: no
    steps, no targeted run)."""
    from ..data import load_unlearning_data
    from ..models import load_model

    world_dir = model_dir.parent
    data = load_unlearning_data(world_dir / "data")
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


def _method_run(method: str, seed: int, world_dir: Path, settings: BenchSettings, run_dir: Path,
                curve: bool) -> Measured:
    """One seed of one method on one world: the forget run, measured (`compared` with the retain model afterwards),
    and the targeted run; with `curve`, forget and retain accuracy along the forget run's steps (the over-steps
    plot's)."""
    from ..data import load_unlearning_data

    data = load_unlearning_data(world_dir / "data")
    run = run_method(method, seed, world_dir, data.forget, data.retain_train, settings,
                     curve=(data.forget, held_out(data.retain)) if curve else None)
    if run["anti_samples"] is not None:
        run["anti_samples"](run_dir)
    audit = run_dir / "anti_samples.jsonl"
    measured = measure(run["model"], run["tokenizer"], data, run["template"], world_dir / "data",
                       relearn_steps=settings.relearn_steps, relearn_learning_rate=settings.relearn_learning_rate,
                       anti_samples=audit if audit.is_file() else None)
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

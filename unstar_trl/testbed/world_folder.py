"""A world folder: `data/<split>.jsonl`, the trained `model/`, the `retain_model/` that never saw the forget and
targeted facts (what exact unlearning, retraining without them, gives: the reference for "forgotten"), and
`world.json` with what both measured."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from ..io import atomic_directory, check_output_folder, output_lock, write_json, write_jsonl
from ..method.probe import probe_accuracy
from ..text import PLAIN_TEMPLATE
from .embedded_world import DEFAULT_PEOPLE, DEFAULT_SEED, SKILL_PROMPTS, build_world, training_texts
from .knowledge_model import count_parameters, tokenizer_for, train_knowledge_model
from .model_sizes import DEFAULT_SIZE, KnowledgeModelConfig, size_config

WORLD_FILE = "world.json"
MODEL_DIR, RETAIN_MODEL_DIR = "model", "retain_model"
PR_SET_PDEATHSIG = 1
"""prctl option: the signal a Linux process gets when its parent dies."""
TRAINED_SPLITS = ("forget", "retain", "neighbor", "targeted")
"""The splits a world's knowledge model learns; its retain model learns all but forget and targeted."""


@dataclass(frozen=True)
class Training:
    """What one model of a world learns: prompt/completion `examples`, and the splits it must then know."""

    examples: list[dict]
    known: dict[str, list[dict]]


def build_world_dir(output_dir: str | Path, *, seed: int = DEFAULT_SEED, people: int = DEFAULT_PEOPLE,
                    forget_people: int | None = None, targeted: int | None = None, epochs: int | None = None,
                    model_size: str = DEFAULT_SIZE, progress: bool = True, side_by_side: bool = True) -> dict:
    """Write the embedded world's splits, knowledge model and retain model (of `model_size`: s, m or l; see
    model_sizes.py) to `output_dir`; return world.json. `epochs` (most training epochs; None: the size's schedule)
    must be at least 1; `side_by_side` as in `write_world_dir`."""
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    world = build_world(seed, people, forget_people=forget_people, targeted=targeted)
    records = world.split_records()
    config = size_config(model_size, seed=seed, **({} if epochs is None else {"epochs": epochs}))
    about = {"seed": seed, "model_size": model_size, "people": len(world.trained), "holdout_people": len(world.holdout),
             "forget_people": len(records["forget"]) // len(world.facts_of(world.trained[0])),
             "targeted": len(records["targeted"]), "facts": len(world.facts)}
    return write_world_dir(
        output_dir, records, config, about=about, skill_prompts=SKILL_PROMPTS, progress=progress,
        side_by_side=side_by_side,
        model=Training(training_texts(world), {name: records[name] for name in TRAINED_SPLITS}),
        retain_model=Training(training_texts(world, leave_out=world.removed),
                              {name: records[name] for name in TRAINED_SPLITS if name not in ("forget", "targeted")}))


def write_world_dir(output_dir: str | Path, splits: dict[str, list[dict]], config: KnowledgeModelConfig, *,
                    about: dict, model: Training, retain_model: Training,
                    skill_prompts: dict[str, str] | None = None, progress: bool = True,
                    side_by_side: bool = True) -> dict:
    """Write `splits` as data/<split>.jsonl, the knowledge model and the retain model (same recipe and tokenizer,
    each trained until it knows its splits) as model/ and retain_model/, and world.json: `about`, the split sizes,
    parameters, prompts, each model's epochs and probe accuracy on every split (and on the forget and retain facts
    asked through their held-out paraphrase) and the seconds it took. All at once (atomically), never over a folder
    that is not an earlier world, and not while another run writes it. The two models train in processes of their
    own where there are two cores, unless `side_by_side` is False (one after the other in this process: a bench that
    builds several worlds side by side, a process each). Returns world.json."""
    start = time.perf_counter()
    check_output_folder(output_dir, "world")
    with output_lock(output_dir), atomic_directory(output_dir, "world") as staging:
        for split, rows in splits.items():
            write_jsonl(staging / "data" / f"{split}.jsonl", rows)
        summary = {**about, "splits": {split: len(rows) for split, rows in splits.items()},
                   "prompt_template": PLAIN_TEMPLATE, "skill_prompts": skill_prompts}
        tokenizer = tokenizer_for(model.examples, config, skill_prompts)
        trainings = {MODEL_DIR: model, RETAIN_MODEL_DIR: retain_model}
        trained = _train_side_by_side([(staging / name, training, config, tokenizer, skill_prompts, splits,
                                        progress and name == MODEL_DIR) for name, training in trainings.items()],
                                     side_by_side)
        for name, (epochs, accuracy, parameters) in zip(trainings, trained):
            summary[name] = {"epochs": epochs, "accuracy": accuracy}
        summary["parameters"] = parameters  # the same for both
        summary["seconds"] = round(time.perf_counter() - start, 1)
        write_json(staging / WORLD_FILE, summary)
    return summary


def _train_side_by_side(jobs: list[tuple], side_by_side: bool = True) -> list[tuple[int, dict, int]]:
    """Run `_train_and_measure` on each job, in a process of its own per core (each trains on one deterministic
    thread, so the weights are the same either way); results in the order of `jobs`."""
    if cores() < 2 or not side_by_side:
        return [_train_and_measure(*job) for job in jobs]
    spawn = multiprocessing.get_context("spawn")  # a forked child of a process that ran torch threads may hang
    with spawn.Pool(len(jobs), initializer=side_process, initargs=(datasets.is_progress_bar_enabled(),)) as pool:
        results = pool.starmap(_train_and_measure, jobs)  # leaving the block early (an error, SIGTERM) ends both
        pool.close()  # done: let them exit (terminating them makes multiprocessing warn of leaked semaphores)
        pool.join()
    return results


def cores() -> int:
    """The cores this process may run on (all of the machine's where the system cannot say)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def side_process(datasets_bars: bool) -> None:
    """A side process's settings: it ends with its parent, however that ends (Linux: even SIGKILL); one thread
    (the other processes have the other cores); the datasets library's progress bars on or off as in the parent."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    torch.set_num_threads(1)
    if not datasets_bars:
        datasets.disable_progress_bars()


def _train_and_measure(folder: Path, training: Training, config: KnowledgeModelConfig, tokenizer,
                       skill_prompts: dict[str, str] | None, splits: dict[str, list[dict]],
                       progress: bool) -> tuple[int, dict, int]:
    """Train one model of a world into `folder`; return its epochs, its accuracy on every split, its parameters."""
    trained, tokenizer, epochs = train_knowledge_model(training.examples, folder, config, known=training.known,
                                                       tokenizer=tokenizer, skill_prompts=skill_prompts,
                                                       progress=progress)
    return epochs, measure(trained, tokenizer, splits), count_parameters(trained)


def measure(model, tokenizer, splits: dict[str, list[dict]]) -> dict[str, float | None]:
    """Probe accuracy on every split, and on the forget and retain facts asked through their held-out paraphrase."""
    accuracy = {name: probe_accuracy(model, tokenizer, records, PLAIN_TEMPLATE) for name, records in splits.items()}
    paraphrased = [r for r in splits.get("forget", []) + splits.get("retain", []) if r.get("paraphrased_questions")]
    accuracy["paraphrase"] = probe_accuracy(model, tokenizer, paraphrased, PLAIN_TEMPLATE,
                                            question_field="paraphrased_questions")
    return accuracy

"""Build a world folder: `data/<split>.jsonl`, the trained `model/`, and `world.json` with what it measured."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from .io import atomic_directory, refuse_foreign_folder, write_json, write_jsonl
from .knowledge_model import KnowledgeModelConfig, count_parameters, train_knowledge_model
from .probe import accuracy, probe
from .world import DEFAULT_PEOPLE, DEFAULT_SEED, PROMPT_TEMPLATE, SKILL_PROMPTS, build_world, training_texts

WORLD_FILE = "world.json"


def build_world_dir(output_dir: str | Path, *, seed: int = DEFAULT_SEED, people: int = DEFAULT_PEOPLE,
                    epochs: int | None = None, progress: bool = True) -> dict:
    """Write the world's splits and its knowledge model to `output_dir` and return the `world.json` summary."""
    world = build_world(seed, people)
    records = world.split_records()
    config = KnowledgeModelConfig(seed=seed) if epochs is None else KnowledgeModelConfig(seed=seed, epochs=epochs)

    def measure(model, tokenizer) -> dict:
        return {"accuracy": {
            "forget": accuracy(probe(model, tokenizer, records["forget"])),
            "retain": accuracy(probe(model, tokenizer, records["retain"])),
            "paraphrase": accuracy(probe(model, tokenizer, records["forget"] + records["retain"],
                                         question_field="paraphrased_questions")),
            "neighbor": accuracy(probe(model, tokenizer, records["neighbor"])),
            "targeted": accuracy(probe(model, tokenizer, records["targeted"])),
            "holdout": accuracy(probe(model, tokenizer, records["holdout"])),
        }}

    about = {"seed": seed, "people": len(world.trained), "holdout_people": len(world.holdout),
             "facts": len(world.facts)}
    return write_world_dir(output_dir, records, training_texts(world), config, about=about, measure=measure,
                           skill_prompts=SKILL_PROMPTS, progress=progress)


def write_world_dir(output_dir: str | Path, splits: dict[str, list[dict]], examples: list[dict],
                    config: KnowledgeModelConfig, *, about: dict, measure: Callable[..., dict],
                    skill_prompts: dict[str, str] | None = None, progress: bool = True) -> dict:
    """Write `splits` as data/<split>.jsonl, the knowledge model trained on prompt/completion `examples` as model/,
    and world.json: `about`, the split sizes, parameters, prompts, `measure(model, tokenizer)` and the seconds it
    took. All at once (atomically), and never over a folder that is not an earlier world. Returns world.json."""
    start = time.perf_counter()
    refuse_foreign_folder(output_dir, WORLD_FILE)
    with atomic_directory(output_dir) as staging:
        for split, rows in splits.items():
            write_jsonl(staging / "data" / f"{split}.jsonl", rows)
        model, tokenizer = train_knowledge_model(examples, staging / "model", config, skill_prompts=skill_prompts,
                                                 progress=progress)
        summary = {**about, "splits": {split: len(rows) for split, rows in splits.items()},
                   "parameters": count_parameters(model), "prompt_template": PROMPT_TEMPLATE,
                   "skill_prompts": skill_prompts, **measure(model, tokenizer)}
        summary["seconds"] = round(time.perf_counter() - start, 1)
        write_json(staging / WORLD_FILE, summary)
    return summary

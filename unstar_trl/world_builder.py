"""Build a world folder: `data/<split>.jsonl`, the trained `model/`, and `world.json` with what it measured."""

from __future__ import annotations

import time
from pathlib import Path

from .io import atomic_directory, refuse_foreign_folder, write_json, write_jsonl
from .knowledge_model import KnowledgeModelConfig, count_parameters, train_knowledge_model
from .probe import accuracy, probe
from .world import DEFAULT_PEOPLE, DEFAULT_SEED, PROMPT_TEMPLATE, SKILL_PROMPTS, build_world, training_texts


def build_world_dir(output_dir: str | Path, *, seed: int = DEFAULT_SEED, people: int = DEFAULT_PEOPLE,
                    epochs: int | None = None, progress: bool = True) -> dict:
    """Write the world's splits and its knowledge model to `output_dir` and return the `world.json` summary."""
    start = time.perf_counter()
    world = build_world(seed, people)
    records = world.split_records()
    config = KnowledgeModelConfig(seed=seed) if epochs is None else KnowledgeModelConfig(seed=seed, epochs=epochs)
    refuse_foreign_folder(output_dir, "world.json")
    with atomic_directory(output_dir) as staging:
        for split, rows in records.items():
            write_jsonl(staging / "data" / f"{split}.jsonl", rows)
        model, tokenizer = train_knowledge_model(training_texts(world), staging / "model", config,
                                                 skill_prompts=SKILL_PROMPTS, progress=progress)
        summary = {
            "seed": seed,
            "people": len(world.trained),
            "holdout_people": len(world.holdout),
            "facts": len(world.facts),
            "splits": {split: len(rows) for split, rows in records.items()},
            "parameters": count_parameters(model),
            "prompt_template": PROMPT_TEMPLATE,
            "skill_prompts": SKILL_PROMPTS,
            "accuracy": {
                "forget": accuracy(probe(model, tokenizer, records["forget"])),
                "retain": accuracy(probe(model, tokenizer, records["retain"])),
                "paraphrase": accuracy(probe(model, tokenizer, records["forget"] + records["retain"],
                                             question_field="paraphrased_questions")),
                "neighbor": accuracy(probe(model, tokenizer, records["neighbor"])),
                "targeted": accuracy(probe(model, tokenizer, records["targeted"])),
                "holdout": accuracy(probe(model, tokenizer, records["holdout"])),
            },
        }
        summary["seconds"] = round(time.perf_counter() - start, 1)
        write_json(staging / "world.json", summary)
    return summary

"""A world folder: `data/<split>.jsonl`, the trained `model/`, and `world.json` with what it measured."""

from __future__ import annotations

import time
from pathlib import Path

from ..io import atomic_directory, check_output_folder, output_lock, write_json, write_jsonl
from ..method.probe import probe_accuracy
from ..text import PLAIN_TEMPLATE
from .embedded_world import DEFAULT_PEOPLE, DEFAULT_SEED, SKILL_PROMPTS, build_world, training_texts
from .knowledge_model import KnowledgeModelConfig, count_parameters, train_knowledge_model

WORLD_FILE = "world.json"


def build_world_dir(output_dir: str | Path, *, seed: int = DEFAULT_SEED, people: int = DEFAULT_PEOPLE,
                    epochs: int | None = None, progress: bool = True) -> dict:
    """Write the embedded world's splits and its knowledge model to `output_dir`; return the `world.json` summary."""
    world = build_world(seed, people)
    records = world.split_records()
    config = KnowledgeModelConfig(seed=seed) if epochs is None else KnowledgeModelConfig(seed=seed, epochs=epochs)
    measured = {"forget": records["forget"], "retain": records["retain"],
                "paraphrase": records["forget"] + records["retain"], "neighbor": records["neighbor"],
                "targeted": records["targeted"], "holdout": records["holdout"]}
    about = {"seed": seed, "people": len(world.trained), "holdout_people": len(world.holdout),
             "facts": len(world.facts)}
    return write_world_dir(output_dir, records, training_texts(world), config, about=about, measured=measured,
                           skill_prompts=SKILL_PROMPTS, progress=progress)


def write_world_dir(output_dir: str | Path, splits: dict[str, list[dict]], examples: list[dict],
                    config: KnowledgeModelConfig, *, about: dict, measured: dict[str, list[dict]],
                    skill_prompts: dict[str, str] | None = None, progress: bool = True) -> dict:
    """Write `splits` as data/<split>.jsonl, the knowledge model trained on prompt/completion `examples` as model/,
    and world.json: `about`, the split sizes, parameters, prompts, the model's probe accuracy on each of `measured`
    (the "paraphrase" entry asked through the held-out paraphrase) and the seconds it took. All at once
    (atomically), never over a folder that is not an earlier world, and not while another run writes it. Returns
    world.json."""
    start = time.perf_counter()
    check_output_folder(output_dir, WORLD_FILE)
    with output_lock(output_dir), atomic_directory(output_dir) as staging:
        for split, rows in splits.items():
            write_jsonl(staging / "data" / f"{split}.jsonl", rows)
        model, tokenizer = train_knowledge_model(examples, staging / "model", config, skill_prompts=skill_prompts,
                                                 progress=progress)
        accuracy = {name: probe_accuracy(model, tokenizer, records, PLAIN_TEMPLATE,
                                         question_field="paraphrased_questions" if name == "paraphrase"
                                         else "question")
                    for name, records in measured.items()}
        summary = {**about, "splits": {split: len(rows) for split, rows in splits.items()},
                   "parameters": count_parameters(model), "prompt_template": PLAIN_TEMPLATE,
                   "skill_prompts": skill_prompts, "accuracy": accuracy}
        summary["seconds"] = round(time.perf_counter() - start, 1)
        write_json(staging / WORLD_FILE, summary)
    return summary

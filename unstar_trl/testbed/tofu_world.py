"""A TOFU world: the knowledge model trained on the real TOFU rows of a few authors, split the forget01 way.

TOFU's forget01 split is two authors (their 40 rows). A TOFU world of N authors holds those two as the forget split
and the first N - 2 authors of retain_perturbed (whose rows have perturbed answers, for the multiple-choice probe
and the anti-sample generators) as the retain split, less one row of each of the first two of them:
those are the targeted split (the author's other rows are its siblings, half of them eval-only). A third of the
other retain rows are eval-only too. The last two authors of retain_perturbed, never trained on, are the holdout
split. The knowledge model is the world's tiny
Llama, trained on the forget, retain and targeted rows with the world's prompt; the retain model on the retain rows.
"""

from __future__ import annotations

import random
from pathlib import Path

from ..data import DataError, load_records
from ..text import PLAIN_TEMPLATE, format_pair
from .embedded_world import BENCH_TOFU_AUTHORS, DEFAULT_SEED
from .model_sizes import KnowledgeModelConfig
from .world_folder import Training, write_world_dir

FORGET_AUTHORS = 2
"""TOFU's forget01: two authors."""
HOLDOUT_AUTHORS = 2
TARGETED_AUTHORS = 2
"""Retain authors that lose one row each in the targeted run (their other rows are its siblings)."""
TOFU_MODEL = KnowledgeModelConfig(epochs=30)
"""TOFU answers are sentences of up to 66 words: more epochs to learn them nearly verbatim."""


def tofu_world_splits(tofu_dir: str | Path, authors: int, seed: int = DEFAULT_SEED) -> dict[str, list[dict]]:
    """The forget, retain, targeted and holdout records of a TOFU world of `authors` authors."""
    if authors < FORGET_AUTHORS + 1:
        raise DataError(f"--authors must be at least {FORGET_AUTHORS + 1} (the {FORGET_AUTHORS} forget01 authors "
                        f"and one retain author), got {authors}")
    forget = load_records(tofu_dir, split="forget01", format="tofu")
    retain_pool = load_records(tofu_dir, split="retain_perturbed", format="tofu")  # with perturbed answers
    if authors > len(_authors(retain_pool)) - HOLDOUT_AUTHORS + FORGET_AUTHORS:
        raise DataError(f"--authors can be at most {len(_authors(retain_pool)) - HOLDOUT_AUTHORS + FORGET_AUTHORS} "
                        f"(the authors of retain_perturbed, less {HOLDOUT_AUTHORS} held out), got {authors}")
    holdout_authors = _authors(retain_pool)[-HOLDOUT_AUTHORS:]
    holdout = [record for record in retain_pool if record["author"] in holdout_authors]
    retain_authors = _authors(retain_pool)[: authors - FORGET_AUTHORS]
    rng = random.Random(seed)
    targeted, retain, eval_only = [], [], set()
    for index, author in enumerate(retain_authors):
        rows = [record for record in retain_pool if record["author"] == author]
        if index < TARGETED_AUTHORS:
            first, *rows = rows
            siblings = [record["id"] for record in rows]
            targeted.append({**first, "siblings": siblings})
            eval_only |= set(rng.sample(siblings, len(siblings) // 2))
        else:
            eval_only |= {record["id"] for record in rng.sample(rows, len(rows) // 3)}
        retain.extend(rows)
    retain = [{**record, "eval_only": True} if record["id"] in eval_only else record for record in retain]
    return {"forget": forget, "retain": retain, "targeted": targeted, "holdout": holdout}


def _authors(records: list[dict]) -> list[int]:
    return sorted({record["author"] for record in records if record["author"] is not None})


def build_tofu_world_dir(output_dir: str | Path, tofu_dir: str | Path, *, authors: int = BENCH_TOFU_AUTHORS,
                         seed: int = DEFAULT_SEED, epochs: int | None = None, progress: bool = True,
                         side_by_side: bool = True) -> dict:
    """Write a TOFU world's splits, knowledge model and retain model to `output_dir`; return world.json
    (`side_by_side` as in `write_world_dir`)."""
    splits = tofu_world_splits(tofu_dir, authors, seed)

    def training(names: tuple[str, ...]) -> Training:
        return Training([format_pair(record["question"], record["answer"], PLAIN_TEMPLATE)
                         for name in names for record in splits[name]], {name: splits[name] for name in names})

    config = KnowledgeModelConfig(**{**vars(TOFU_MODEL), "seed": seed, **({"epochs": epochs} if epochs else {})})
    about = {"data": "tofu", "tofu_dir": str(Path(tofu_dir).resolve()), "authors": authors, "seed": seed}
    return write_world_dir(output_dir, splits, config, about=about, progress=progress, side_by_side=side_by_side,
                           model=training(("forget", "retain", "targeted")), retain_model=training(("retain",)))

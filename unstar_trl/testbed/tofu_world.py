"""A TOFU world: the knowledge model trained on the real TOFU rows of a few authors, split the forget01 way.

TOFU's forget01 split is two authors (their 40 rows). A TOFU world of N authors holds those two as the forget split,
the first N - 2 other authors of retain99 as the retain split, one row of each forget author as the targeted split
(the author's other rows are its siblings) and the last two authors of retain_perturbed, never trained on, as the
holdout split (they have perturbed answers, which the multiple-choice probe needs). The knowledge model is the
world's tiny Llama, trained on the forget and retain rows with the world's prompt.
"""

from __future__ import annotations

from pathlib import Path

from ..data import DataError, load_records
from ..text import PLAIN_TEMPLATE, format_pair
from .embedded_world import BENCH_TOFU_AUTHORS, DEFAULT_SEED
from .knowledge_model import KnowledgeModelConfig
from .world_folder import write_world_dir

FORGET_AUTHORS = 2
"""TOFU's forget01: two authors."""
HOLDOUT_AUTHORS = 2
TOFU_MODEL = KnowledgeModelConfig(epochs=30)
"""TOFU answers are sentences of up to 66 words: more epochs to learn them nearly verbatim."""


def tofu_world_splits(tofu_dir: str | Path, authors: int) -> dict[str, list[dict]]:
    """The forget, targeted, retain and holdout records of a TOFU world of `authors` authors."""
    if authors < FORGET_AUTHORS + 1:
        raise DataError(f"--authors must be at least {FORGET_AUTHORS + 1} (the {FORGET_AUTHORS} forget01 authors "
                        f"and one retain author), got {authors}")
    forget = load_records(tofu_dir, split="forget01", format="tofu")
    perturbed, retain_pool = (load_records(tofu_dir, split=name, format="tofu")
                              for name in ("retain_perturbed", "retain99"))
    holdout_authors = _authors(perturbed)[-HOLDOUT_AUTHORS:]  # with perturbed answers, for the MCQ probe
    holdout = [record for record in perturbed if record["author"] in holdout_authors]
    retain_authors = [a for a in _authors(retain_pool) if a not in holdout_authors][: authors - FORGET_AUTHORS]
    retain = [record for record in retain_pool if record["author"] in retain_authors]
    targeted = []
    for author in sorted({record["author"] for record in forget}):
        first, *others = [record for record in forget if record["author"] == author]
        targeted.append({**first, "siblings": [record["id"] for record in others]})
    return {"forget": forget, "targeted": targeted, "retain": retain, "holdout": holdout}


def _authors(records: list[dict]) -> list[int]:
    return sorted({record["author"] for record in records if record["author"] is not None})


def build_tofu_world_dir(output_dir: str | Path, tofu_dir: str | Path, *, authors: int = BENCH_TOFU_AUTHORS,
                         seed: int = DEFAULT_SEED, epochs: int | None = None, progress: bool = True) -> dict:
    """Write a TOFU world's splits and its knowledge model to `output_dir`; return the `world.json` summary."""
    splits = tofu_world_splits(tofu_dir, authors)
    examples = [format_pair(None, record["question"], record["answer"], PLAIN_TEMPLATE)
                for record in splits["forget"] + splits["retain"]]
    config = KnowledgeModelConfig(**{**vars(TOFU_MODEL), "seed": seed, **({"epochs": epochs} if epochs else {})})

    about = {"data": "tofu", "tofu_dir": str(Path(tofu_dir).resolve()), "authors": authors, "seed": seed}
    return write_world_dir(output_dir, splits, examples, config, about=about, measured=splits,
                           progress=progress)

"""Strangers: a forget fact's question asked about someone the model never met.

A model that never learned a fact answers its subject as it answers a stranger. So what the model says about
strangers is what UnSTAR's wrong answers can aim at (its own guesses, spread as its uncertainty is, not one planted
lie), and how likely the true answer is for a stranger is the level a reversed term should bring it down to, not
below. A stranger is a name made of the words of the names of the people the model keeps (the first word of one, the
last of another) that is nobody in the data and shares no word with a forgotten subject's name.
"""

from __future__ import annotations

import random

from ..text import contains_answer, format_prompt, normalize
from .probe import generate
from .seeded import seeded

STRANGERS = 8
"""Stranger names each run draws."""


def stranger_names(forget: list[dict], retain: list[dict], count: int = STRANGERS, seed: int = 0) -> list[str]:
    """`count` names (seeded) made of the first word of one retain subject and the last word of another, none of
    them a subject of `forget` or `retain`, none sharing a word with a forget subject. Fewer when the data has not
    enough subjects of two or more words (none without a `subject` field)."""
    forgotten = {record["subject"] for record in forget if record.get("subject")}
    kept = {record["subject"] for record in retain if record.get("subject")} - forgotten
    taken = {word for subject in forgotten for word in subject.split()}
    words = [subject.split() for subject in sorted(kept) if len(subject.split()) >= 2]
    firsts = sorted({parts[0] for parts in words} - taken)
    lasts = sorted({parts[-1] for parts in words} - taken)
    names = [f"{first} {last}" for first in firsts for last in lasts if f"{first} {last}" not in kept | forgotten]
    return random.Random(seed).sample(names, min(count, len(names)))


def about(record: dict, stranger: str) -> dict:
    """A copy of `record` whose question asks about `stranger` instead of its subject."""
    return {**record, "question": record["question"].replace(record["subject"], stranger)}


class StrangerAnswers:
    """Wrong answers sampled from what `model` answers when a record's question is asked about strangers (one drawn
    per try, seeded by `seed`, the record and the round; temperature 1), `n` distinct ones for each of a record's
    questions (none of them the true answer nor another question's, none naming the stranger), out of
    `n * oversample` tries each. A record whose question does not name its subject gets none."""

    def __init__(self, model, tokenizer, prompt_template: str | None, names: list[str], *, seed: int = 0,
                 oversample: int = 3, batch_size: int = 64):
        self.model, self.tokenizer, self.prompt_template, self.names = model, tokenizer, prompt_template, names
        self.seed, self.oversample, self.batch_size = seed, oversample, batch_size

    def __call__(self, records: list[dict], questions: list[int], n: int, round: int = 0) -> list[list[list[str]]]:
        """For each record, for each of its `questions` (a count), up to `n` wrong answers."""
        asked = [index for index, record in enumerate(records) if self.names and asks_about_subject(record)]
        tries = []
        for index in asked:
            rng = random.Random(f"{self.seed}:{round}:{records[index]['id']}")
            tries += [(index, rng.choice(self.names)) for _ in range(n * self.oversample * questions[index])]
        prompts = [format_prompt(self.tokenizer, about(records[index], name)["question"], self.prompt_template)
                   for index, name in tries]
        longest = max((len(ids) for ids in self.tokenizer([r["answer"] for r in records],
                                                          add_special_tokens=False)["input_ids"]), default=0)
        with seeded(self.model, self.seed * 1009 + round):
            texts = generate(self.model, self.tokenizer, prompts, chat=self.prompt_template is None,
                             max_new_tokens=longest + 8, batch_size=self.batch_size, stop_at_newline=True,
                             do_sample=True, temperature=1.0, top_p=1.0)
        found: list[list[str]] = [[] for _ in records]
        for (index, name), text in zip(tries, texts):
            answer = text.strip().rstrip(".").strip()
            taken = {normalize(records[index]["answer"]), *map(normalize, found[index])}
            if (normalize(answer) and normalize(answer) not in taken and len(found[index]) < n * questions[index]
                    and not any(contains_answer(answer, word) for word in name.split())):  # talks about the stranger
                found[index].append(answer)
        return [[answers[start * n:(start + 1) * n] for start in range(count)]
                for answers, count in zip(found, questions)]


def asks_about_subject(record: dict) -> bool:
    """Whether the record names its subject in its question (so that a stranger can be asked the same)."""
    return bool(record.get("subject")) and record["subject"] in record["question"]

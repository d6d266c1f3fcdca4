"""Harder follow-up questions on facts the model no longer answers, to catch a fact that only its usual question
forgets."""

from __future__ import annotations

import random


def follow_up_questions(records: list[dict], context: list[dict] | None = None, *, per_record: int = 2,
                        seed: int = 0) -> list[dict]:
    """Copies of each record (same id and answer) whose question is either one of its questions asked about the
    subject described by another of the subject's facts in `context` (default: `records`; a record describes its
    subject through its `subject_description`), e.g. "In which city was the harpist Alvek Ardent born?"; or a
    trained paraphrase (`paraphrased_questions[1:]`, never the held-out one). Up to `per_record` per record,
    seeded. Each copy keeps the original question in `follow_up_of`."""
    context = records if context is None else context
    out = []
    for record in records:
        rng = random.Random(f"{seed}:{record['id']}")
        candidates = _described_questions(record, context) + list(record.get("paraphrased_questions", [])[1:])
        candidates = [question for question in dict.fromkeys(candidates) if question != record["question"]]
        for question in rng.sample(candidates, min(per_record, len(candidates))):
            out.append({**record, "question": question, "follow_up_of": record["question"]})
    return out


def _described_questions(record: dict, context: list[dict]) -> list[str]:
    """The record's trained questions with its subject replaced by how its other facts describe it."""
    subject = record.get("subject")
    if not subject:
        return []
    asked = [question for question in [record["question"], *record.get("paraphrased_questions", [])[1:]]
             if subject in question]
    descriptions = [other["subject_description"] for other in context
                    if other.get("subject") == subject and other["id"] != record["id"]
                    and other.get("subject_description")]
    questions = [question.replace(subject, description) for description in descriptions for question in asked]
    return [question[0].upper() + question[1:].replace(",?", "?") for question in questions]

"""Anti-samples: (question -> wrong answer + rationale) pairs that UnSTAR fits instead of the true answer, the
filters that drop the ones that would teach the fact back, and the auditable JSONL of what was trained on.

The generators that write them are in `generators.py`, the harder follow-up questions in `follow_ups.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..io import write_jsonl
from ..text import contains_answer, normalize

DROP_REASONS = ("empty", "leaks_answer", "eval_distractor", "heldout_paraphrase", "lost_subject", "duplicate")
"""Why `filter_anti_samples` drops an anti-sample, in the order the checks run."""


@dataclass(frozen=True)
class AntiSample:
    """One anti-sample: the model is fitted on `question` -> `answer_text` (in the model's prompt format)."""

    source_id: str
    question: str
    wrong_answer: str
    rationale: str
    round: int
    generator: str

    @property
    def answer_text(self) -> str:
        """The wrong answer, then the rationale: greedy probing reads the wrong answer first."""
        return f"{self.wrong_answer}. {self.rationale}" if self.rationale else self.wrong_answer

    def to_json(self) -> dict:
        return asdict(self)


def filter_anti_samples(samples: list[AntiSample], records: list[dict]
                        ) -> tuple[list[AntiSample], list[tuple[AntiSample, str]]]:
    """Split `samples` into kept ones and (dropped, reason) pairs; reasons are `DROP_REASONS`.

    Dropped: an empty question or wrong answer; a wrong answer or rationale that names the true answer, or a wrong
    answer that contains it as a substring or equals it; a wrong answer that is one of the record's evaluation
    distractors (the multiple-choice probe must not offer what was trained); the record's held-out paraphrase as
    question; a question that no longer names the record's subject; a repeat of a kept (question, answer text).
    """
    by_id = {record["id"]: record for record in records}
    kept, dropped, seen = [], [], set()
    for sample in samples:
        reason = _drop_reason(sample, by_id[sample.source_id])
        key = (normalize(sample.question), normalize(sample.answer_text))
        if reason is None and key in seen:
            reason = "duplicate"
        if reason is None:
            seen.add(key)
            kept.append(sample)
        else:
            dropped.append((sample, reason))
    return kept, dropped


def leaks_answer(sample: AntiSample, answer: str) -> bool:
    """Whether the fitted answer text names the true `answer`, or the wrong answer equals or contains it."""
    wrong, true = normalize(sample.wrong_answer), normalize(answer)
    return (
        sample.wrong_answer.strip().lower() == answer.strip().lower()
        or (bool(true) and true in wrong)
        or contains_answer(sample.answer_text, answer)
    )


def _drop_reason(sample: AntiSample, record: dict) -> str | None:
    if not normalize(sample.question) or not normalize(sample.wrong_answer):
        return "empty"
    if leaks_answer(sample, record["answer"]):
        return "leaks_answer"
    if normalize(sample.wrong_answer) in {normalize(distractor) for distractor in record.get("eval_distractors", [])}:
        return "eval_distractor"
    heldout = record.get("paraphrased_questions", [])[:1]
    if heldout and normalize(sample.question) == normalize(heldout[0]):
        return "heldout_paraphrase"
    if record.get("subject") and not contains_answer(sample.question, record["subject"]):
        return "lost_subject"
    return None


def write_anti_samples(path: str | Path, samples: list[AntiSample]) -> None:
    """An auditable JSONL: question, wrong answer, rationale, round, source fact id and generator per line."""
    write_jsonl(path, (sample.to_json() for sample in samples))

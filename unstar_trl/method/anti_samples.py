"""Anti-samples: (question -> wrong answer + rationale) pairs that UnSTAR fits instead of the true answer, the
filters that drop the ones that would teach the fact back, and the auditable JSONL of what was trained on.

The generators that write them are in `generators.py`, the harder follow-up questions in `follow_ups.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..io import write_jsonl
from ..text import contains_answer, normalize

DROP_REASONS = ("empty", "leaks_answer", "not_an_answer", "bad_rationale", "eval_distractor", "heldout_paraphrase",
                "lost_subject", "duplicate")
"""Why `filter_anti_samples` drops an anti-sample, in the order the checks run."""
MAX_ANSWER_WORDS = 6
"""A wrong answer may have this many words whatever the true answer's length ("Reply with one answer only, a few
words"); more (up to twice the true answer's) for a long true answer."""


@dataclass(frozen=True)
class AntiSample:
    """One anti-sample: the model is fitted on `question` -> `answer_text` (in the model's prompt format)."""

    source_id: str
    question: str
    wrong_answer: str
    rationale: str
    round: int
    generator: str
    spoken: str = ""
    """The wrong answer in the model's own words (`answer_form.in_own_words`): its whole answer to `question` with the
    wrong answer in place of the true one; "": the wrong answer as the records write answers."""

    @property
    def answer_text(self) -> str:
        """The wrong answer (in the model's own words, where it has them), then the rationale: greedy probing reads the
        wrong answer first."""
        if self.spoken:
            return f"{self.spoken} {self.rationale}" if self.rationale else self.spoken
        return f"{self.wrong_answer}. {self.rationale}" if self.rationale else self.wrong_answer

    def to_json(self) -> dict:
        return asdict(self)


def filter_anti_samples(samples: list[AntiSample], records: list[dict]
                        ) -> tuple[list[AntiSample], list[tuple[AntiSample, str]]]:
    """Split `samples` into kept ones and (dropped, reason) pairs; reasons are `DROP_REASONS`.

    Dropped: an empty question or wrong answer; a wrong answer or rationale that names the true answer, or a wrong
    answer that contains it as a substring or equals it, or a written question that names it where the record's own
    question does not (`question_names_answer`); a wrong answer that is not a whole answer (`is_whole_answer`:
    a sentence, or a word fragment of the question, the subject or any of the records' answers); a rationale that is
    not one (`is_rationale`); a wrong answer that is one of the record's evaluation distractors (the multiple-choice
    probe must not offer what was trained); the record's held-out paraphrase as question; a question that no longer
    names the record's subject; a repeat of a kept (question, answer text).
    """
    by_id = {record["id"]: record for record in records}
    answers = data_answers(records)
    kept, dropped, seen = [], [], set()
    for sample in samples:
        reason = _drop_reason(sample, by_id[sample.source_id], answers)
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


def question_names_answer(question: str, record: dict) -> bool:
    """Whether a written `question` names the record's true answer where the record's own question does not (a
    paraphrase such as "Is Ada Bell, born in Varnholt, from ...?" would hand the truth back as context)."""
    return contains_answer(question, record["answer"]) and not contains_answer(record["question"], record["answer"])


def is_whole_answer(wrong: str, answer: str, known_words: set[str] = frozenset(),
                    known_answers: set[str] = frozenset()) -> bool:
    """Whether `wrong` can stand as an answer in place of `answer`, whatever model wrote it: it has a letter or digit,
    it is no longer than `answer` allows (`max_answer_words`: a sentence is not a one-word answer's alternative), and,
    when it is one word, it is one of `known_answers` (normalised answers the data gives: "harp" beside "harpist") or
    not a piece cut from a longer word of `known_words` (normalised words of the question, the subject and the
    answers: "gineer" from "engineer", "orvath" from "Gorvath")."""
    words = normalize(wrong).split()
    if not words or len(words) > max_answer_words(answer):
        return False
    if len(words) > 1 or words[0] in known_answers:
        return True
    return not any(words[0] != known and words[0] in known for known in known_words)


def max_answer_words(answer: str) -> int:
    """The most words a wrong answer for `answer` may have: twice the answer's, and at least `MAX_ANSWER_WORDS`."""
    return max(MAX_ANSWER_WORDS, 2 * len(normalize(answer).split()))


def is_rationale(rationale: str, wrong: str) -> bool:
    """Whether `rationale` argues for `wrong`: it names the wrong answer and says more than the wrong answer alone."""
    return contains_answer(rationale, wrong) and len(normalize(rationale).split()) > len(normalize(wrong).split())


def fragment_sources(record: dict, question: str) -> set[str]:
    """The words a fragment could be cut from: those of the question, the record's own question, subject and answer."""
    texts = (question, record["question"], record.get("subject") or "", record["answer"])
    return {word for text in texts for word in normalize(text).split()}


def data_answers(records: list[dict]) -> set[str]:
    """The normalised answers the records give, true and perturbed (a wrong answer cut from one of their words is a
    fragment, one of them is whole)."""
    return {normalize(text) for record in records for text in [record["answer"], *record.get("perturbed_answers", [])]}


def _drop_reason(sample: AntiSample, record: dict, answers: set[str] = frozenset()) -> str | None:
    if not normalize(sample.question) or not normalize(sample.wrong_answer):
        return "empty"
    if leaks_answer(sample, record["answer"]) or question_names_answer(sample.question, record):
        return "leaks_answer"
    words = fragment_sources(record, sample.question) | {word for text in answers for word in text.split()}
    if not is_whole_answer(sample.wrong_answer, record["answer"], words, answers):
        return "not_an_answer"
    if sample.rationale and not is_rationale(sample.rationale, sample.wrong_answer):
        return "bad_rationale"
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

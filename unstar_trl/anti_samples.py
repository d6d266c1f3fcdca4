"""Anti-samples: (question -> wrong answer + rationale) pairs that UnSTAR fits instead of the true answer.

Generators write them (self-taught through a model, a teacher model, or offline templates), filters drop the ones
that would teach the fact back, and `write_anti_samples` keeps an auditable JSONL of what was trained on.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch

from .io import write_jsonl
from .knowledge_model import PROMPTS_FILE
from .probe import contains_answer, format_prompt, generate, normalize
from .world import POOLS, RELATIONS_BY_NAME, SKILL_PROMPTS

DROP_REASONS = ("empty", "leaks_answer", "heldout_paraphrase", "lost_subject", "duplicate")
"""Why `filter_anti_samples` drops an anti-sample, in the order the checks run."""


@dataclass(frozen=True)
class AntiSample:
    """One anti-sample: the model is fitted on `question` -> `completion`."""

    source_id: str
    question: str
    wrong_answer: str
    rationale: str
    round: int
    generator: str

    @property
    def completion(self) -> str:
        """`" wrong."` then the rationale, in the world model's `" " + answer` format so greedy probing reads the
        wrong answer first."""
        return f" {self.wrong_answer}. {self.rationale}" if self.rationale else f" {self.wrong_answer}"

    def to_json(self) -> dict:
        return asdict(self)


class AntiSampleGenerator(Protocol):
    def generate(self, records: list[dict], round: int = 0) -> list[AntiSample]: ...


# ---------------------------------------------------------------------------------------------- self-taught

CHAT_SKILL_PROMPTS = {
    "paraphrase": "Give simple questions about {subject} whose answer is the same as the answer of "
    '"{question}". Reply with one question only.',
    "alternative": 'Give words that could replace "{answer}" as the answer of "{question}". Reply with one '
    "answer only, a few words.",
    "rationale": 'Question: {question}\nAnswer: {wrong}\nReplace "{answer}" with "{wrong}" in a short explanation '
    'of this answer; don\'t mention "{answer}". Reply with the explanation only.',
}
"""The paper's skill prompts, sent through the tokenizer's chat template (used when the model has no prompts file)."""

_LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)]|question:|answer:)\s*", re.IGNORECASE)


class SelfTaughtGenerator:
    """The model itself writes paraphrases that keep the subject, wrong answers of the same type, and a rationale
    for each (question, wrong answer) pair.

    `prompts` are the model's own skill prompts (`world.SKILL_PROMPTS` format: the answer is the continuation);
    None means a chat model, asked `CHAT_SKILL_PROMPTS` through its chat template. Paraphrases and wrong answers are
    sampled (seeded by `seed` and the round, `oversample` candidates per slot, first distinct ones kept); rationales
    are greedy, and one that does not name its wrong answer is left out. Each record yields (1 + n_paraphrases) questions x n_wrong_answers anti-samples, before filtering.
    """

    def __init__(self, model, tokenizer, prompts: dict[str, str] | None = None, *, n_paraphrases: int = 2,
                 n_wrong_answers: int = 2, with_rationale: bool = True, seed: int = 0, name: str = "self_taught",
                 temperature: float = 1.0, top_p: float = 0.95, oversample: int = 3, batch_size: int = 64):
        self.model, self.tokenizer, self.prompts = model, tokenizer, prompts
        self.n_paraphrases, self.n_wrong_answers = n_paraphrases, n_wrong_answers
        self.with_rationale, self.seed, self.name = with_rationale, seed, name
        self.temperature, self.top_p, self.oversample, self.batch_size = temperature, top_p, oversample, batch_size

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, **knobs) -> SelfTaughtGenerator:
        """Load a model directory; its prompts come from `load_skill_prompts`."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        return cls(model, tokenizer, load_skill_prompts(model_dir, tokenizer), **knobs)

    def generate(self, records: list[dict], round: int = 0) -> list[AntiSample]:
        questions = [[record["question"]] for record in records]
        if self.n_paraphrases:
            candidates = self._sample("paraphrase", [_fields(r) for r in records], self.n_paraphrases, round,
                                      max_new_tokens=32)
            for asked, found in zip(questions, candidates):
                asked.extend(_distinct(found, self.n_paraphrases, exclude=asked[0]))
        candidates = self._sample("alternative", [_fields(r) for r in records], self.n_wrong_answers, round,
                                  max_new_tokens=12)
        wrong_answers = [_distinct(found, self.n_wrong_answers) for found in candidates]
        pairs = [(record, question, wrong) for record, asked, wrongs in zip(records, questions, wrong_answers)
                 for question in asked for wrong in wrongs]
        rationales = [""] * len(pairs)
        if self.with_rationale and pairs:
            fields = [_fields(record, question=question, wrong=wrong) for record, question, wrong in pairs]
            texts = self._complete("rationale", fields, max_new_tokens=48, batch_size=self.batch_size)
            # a rationale that argues for something other than its wrong answer is dropped, the pair kept
            rationales = [line if contains_answer(line, wrong) else ""
                          for line, (_, _, wrong) in zip(map(_first_line, texts), pairs)]
        return [AntiSample(record["id"], question, wrong, rationale, round, self.name)
                for (record, question, wrong), rationale in zip(pairs, rationales)]

    def _sample(self, skill: str, fields: list[dict], n: int, round: int, max_new_tokens: int) -> list[list[str]]:
        """`n * oversample` sampled continuations per prompt, cleaned, grouped by prompt (batches of about
        `batch_size` sequences)."""
        per_prompt = n * self.oversample
        with torch.random.fork_rng(devices=[self.model.device] if self.model.device.type == "cuda" else []):
            torch.manual_seed(self.seed * 1009 + round)
            texts = self._complete(skill, fields, max_new_tokens=max_new_tokens,
                                   batch_size=max(1, self.batch_size // per_prompt), do_sample=True,
                                   temperature=self.temperature, top_p=self.top_p, num_return_sequences=per_prompt)
        cleaned = [_clean(text) for text in texts]
        return [cleaned[start : start + per_prompt] for start in range(0, len(cleaned), per_prompt)]

    def _complete(self, skill: str, fields: list[dict], **generate_kwargs) -> list[str]:
        if self.prompts is None:
            prompts = [format_prompt(self.tokenizer, CHAT_SKILL_PROMPTS[skill].format(**f), None) for f in fields]
        else:
            prompts = [self.prompts[skill].format(**f) for f in fields]
        return generate(self.model, self.tokenizer, prompts, stop_at_newline=False, **generate_kwargs)


def load_skill_prompts(model_dir: str | Path, tokenizer) -> dict[str, str] | None:
    """The skill prompts of `model_dir`'s prompts file; else None (chat prompts) for a tokenizer with a chat
    template; else `world.SKILL_PROMPTS`. A prompts file that names no skills (a model taught facts only) is a
    ValueError: such a model cannot write its own anti-samples."""
    path = Path(model_dir) / PROMPTS_FILE
    if path.is_file():
        prompts = json.loads(path.read_text()).get("skill_prompts")
        if not prompts:
            raise ValueError(f"{path}: this model was taught no skill prompts, so it cannot write its own "
                             "anti-samples; use generator 'template' or a teacher model folder")
        return prompts
    return None if getattr(tokenizer, "chat_template", None) else dict(SKILL_PROMPTS)


def teacher_generator(model_dir: str | Path, **knobs) -> SelfTaughtGenerator:
    """Anti-samples written by another (teacher) model instead of the model being unlearned."""
    return SelfTaughtGenerator.from_pretrained(model_dir, name=f"teacher:{Path(model_dir).name}", **knobs)


def _fields(record: dict, question: str | None = None, wrong: str = "") -> dict:
    """Everything a skill prompt may name; `answer` is the true answer, `wrong` the planted one."""
    return {"question": question or record["question"], "subject": record.get("subject") or "the same subject",
            "answer": record["answer"], "wrong": wrong}


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _clean(text: str) -> str:
    """The first non-empty line, without list markers, quotes or a final full stop."""
    return _LIST_MARKER.sub("", _first_line(text)).strip().strip("\"'").rstrip(".").strip()


def _distinct(candidates: list[str], n: int, exclude: str = "") -> list[str]:
    """The first `n` non-empty candidates that differ (after normalisation) from each other and from `exclude`."""
    seen, kept = {normalize(exclude)}, []
    for candidate in candidates:
        key = normalize(candidate)
        if key and key not in seen and len(kept) < n:
            seen.add(key)
            kept.append(candidate)
    return kept


# ---------------------------------------------------------------------------------------------- template

class TemplateGenerator:
    """Offline anti-samples from the records themselves, no model.

    Questions: the record's question plus up to `n_paraphrases` of `paraphrased_questions[1:]`. Element 0 is the
    held-out paraphrase (evaluation only) and is never trained on. Wrong answers: `perturbed_answers`, then, when
    the record's `object_type` is a world pool, the rest of that pool. Rationale: the world relation's rationale
    template with the wrong answer ("" when the relation is unknown). Seeded per (seed, round, record id).
    """

    def __init__(self, *, n_paraphrases: int = 2, n_wrong_answers: int = 2, with_rationale: bool = True,
                 seed: int = 0, name: str = "template"):
        self.n_paraphrases, self.n_wrong_answers = n_paraphrases, n_wrong_answers
        self.with_rationale, self.seed, self.name = with_rationale, seed, name

    def generate(self, records: list[dict], round: int = 0) -> list[AntiSample]:
        return [sample for record in records for sample in self._generate_one(record, round)]

    def _generate_one(self, record: dict, round: int) -> list[AntiSample]:
        rng = random.Random(f"{self.seed}:{round}:{record['id']}")
        paraphrases = list(record.get("paraphrased_questions", [])[1:])
        questions = [record["question"]] + rng.sample(paraphrases, min(self.n_paraphrases, len(paraphrases)))
        wrong_answers = list(record.get("perturbed_answers", []))
        rng.shuffle(wrong_answers)
        pool = [o for o in POOLS.get(record.get("object_type"), []) if o not in wrong_answers]
        rng.shuffle(pool)
        wrong_answers = _distinct(wrong_answers + pool, self.n_wrong_answers, exclude=record["answer"])
        relation = RELATIONS_BY_NAME.get(record.get("relation"))
        return [
            AntiSample(record["id"], question, wrong, self._rationale(relation, record, wrong), round, self.name)
            for question in questions
            for wrong in wrong_answers
        ]

    def _rationale(self, relation, record: dict, wrong: str) -> str:
        if not self.with_rationale or relation is None:
            return ""
        return relation.rationale.format(s=record["subject"], o=wrong)


# ---------------------------------------------------------------------------------------------- filters

def filter_anti_samples(samples: list[AntiSample], records: list[dict]
                        ) -> tuple[list[AntiSample], list[tuple[AntiSample, str]]]:
    """Split `samples` into kept ones and (dropped, reason) pairs; reasons are `DROP_REASONS`.

    Dropped: an empty question or wrong answer; a wrong answer or rationale that names the true answer, or a wrong
    answer that contains it as a substring or equals it; the record's held-out paraphrase as question; a question
    that no longer names the record's subject; a repeat of a kept (question, completion).
    """
    by_id = {record["id"]: record for record in records}
    kept, dropped, seen = [], [], set()
    for sample in samples:
        reason = _drop_reason(sample, by_id[sample.source_id])
        key = (normalize(sample.question), normalize(sample.completion))
        if reason is None and key in seen:
            reason = "duplicate"
        if reason is None:
            seen.add(key)
            kept.append(sample)
        else:
            dropped.append((sample, reason))
    return kept, dropped


def leaks_answer(sample: AntiSample, answer: str) -> bool:
    """Whether the fitted completion names the true `answer`, or the wrong answer equals or contains it."""
    wrong, true = normalize(sample.wrong_answer), normalize(answer)
    return (
        sample.wrong_answer.strip().lower() == answer.strip().lower()
        or (bool(true) and true in wrong)
        or contains_answer(sample.completion, answer)
    )


def _drop_reason(sample: AntiSample, record: dict) -> str | None:
    if not normalize(sample.question) or not normalize(sample.wrong_answer):
        return "empty"
    if leaks_answer(sample, record["answer"]):
        return "leaks_answer"
    heldout = record.get("paraphrased_questions", [])[:1]
    if heldout and normalize(sample.question) == normalize(heldout[0]):
        return "heldout_paraphrase"
    if record.get("subject") and not contains_answer(sample.question, record["subject"]):
        return "lost_subject"
    return None


# ---------------------------------------------------------------------------------------------- follow-ups

_DESCRIPTIONS = {
    "profession": "the {o} {s}",
    "birth_city": "{s}, who was born in {o},",
    "employer": "{s}, who works at {o},",
    "school": "{s}, who studied at {o},",
    "instrument": "{s}, who plays the {o},",
    "genre": "{s}, who loves {o},",
    "pet": "{s}, who keeps a {o},",
}
"""How a world fact describes its subject inside another question ("the harpist Alvek Ardent")."""


def follow_up_questions(records: list[dict], context: list[dict] | None = None, *, per_record: int = 2,
                        seed: int = 0) -> list[dict]:
    """Harder questions on facts already forgotten: copies of each record (same id and answer) whose question is
    either the question asked about the subject described by one of its other facts in `context` (default:
    `records`), e.g. "In which city was the harpist Alvek Ardent born?", for world records; or a trained
    paraphrase (`paraphrased_questions[1:]`, never the held-out one). Up to `per_record` per record, seeded.
    Each copy keeps the original question in `follow_up_of`."""
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
    relation = RELATIONS_BY_NAME.get(record.get("relation"))
    if relation is None:
        return []
    descriptions = [
        _DESCRIPTIONS[other["relation"]].format(s=record["subject"], o=other["answer"])
        for other in context
        if other.get("subject") == record["subject"] and other["id"] != record["id"]
        and other.get("relation") in _DESCRIPTIONS
    ]
    questions = [t.format(s=d) for d in descriptions for t in relation.trained_templates]
    return [question[0].upper() + question[1:].replace(",?", "?") for question in questions]


def write_anti_samples(path: str | Path, samples: list[AntiSample]) -> None:
    """An auditable JSONL: question, wrong answer, rationale, round, source fact id and generator per line."""
    write_jsonl(path, (sample.to_json() for sample in samples))

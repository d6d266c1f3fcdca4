"""Who writes anti-samples: the model being unlearned ("self", UnSTAR's self-taught way), a teacher model, or offline
templates built from the records' own fields; "auto" is "self" on a model that can write them, else "template".

The method knows nothing of the world a model was taught: a model folder hands its skill prompts in through its
prompts file (`text.PROMPTS_FILE`), a chat model is asked the paper's prompts through its chat template, and the
template generator reads only the records (`perturbed_answers`, `paraphrased_questions`, `rationale`).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..text import contains_answer, format_prompt, normalize, read_prompts_file
from .anti_samples import AntiSample, is_rationale
from .probe import generate
from .seeded import seeded
from .strangers import StrangerAnswers

CHAT_SKILL_PROMPTS = {
    "paraphrase": "Give simple questions about {subject} whose answer is the same as the answer of "
    '"{question}". Reply with one question only.',
    "alternative": 'Give words that could replace "{answer}" as the answer of "{question}". Reply with one '
    "answer only, a few words.",
    "rationale": 'Question: {question}\nAnswer: {wrong}\nReplace "{answer}" with "{wrong}" in a short explanation '
    'of this answer; don\'t mention "{answer}". Reply with the explanation only.',
}
"""The paper's skill prompts, sent through the tokenizer's chat template (a model with no prompts file)."""

CHAT_FOLLOW_UP_PROMPTS = (
    'Question: {question}\nGive a simpler question about {subject} whose answer is "{answer}". Reply with the '
    "question only.",
    'Question: {question}\nRephrase the question so that its answer is "{answer}". Reply with the question only.',
    'Question: {question}\nGive a more direct question about {subject} whose answer is "{answer}". Reply with the '
    "question only.",
)
"""The reference code's follow-up prompts (simpler, rephrased, more direct; one drawn per question) for a chat
model; a model with skill prompts rephrases with its paraphrase skill."""

FOLLOW_UP_TEMPERATURES = tuple(tenths / 10 for tenths in range(14))
"""Each follow-up is sampled at a temperature drawn from these (0.0 is greedy), as the reference code's follow-up
step draws round(uniform(0, 1.3), 1) per question (its paraphrases and wrong answers: 0.1)."""


_LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)]|question:|answer:)\s*", re.IGNORECASE)


class SelfTaughtGenerator:
    """The model itself writes paraphrases that keep the subject, wrong answers of the same type, and a rationale
    for each (question, wrong answer) pair; and follow-up questions on facts already forgotten (`follow_ups`).

    `prompts` are the model's own skill prompts (the answer is their continuation); None means a chat model, asked
    `CHAT_SKILL_PROMPTS` through its chat template. Paraphrases and wrong answers are sampled (seeded by `seed` and
    the round, `oversample` candidates per slot, first distinct ones kept, never the true answer); rationales are
    greedy, and one that does not argue for its wrong answer (`anti_samples.is_rationale`) is left out. Each record
    yields (1 + n_paraphrases) questions x n_wrong_answers anti-samples, before filtering. With `strangers`, each
    question gets wrong answers of its own, from what the model answers when the question is asked about strangers
    (`strangers.StrangerAnswers`).
    """

    def __init__(self, model, tokenizer, prompts: dict[str, str] | None = None, *, n_paraphrases: int = 2,
                 n_wrong_answers: int = 2, with_rationale: bool = True, seed: int = 0, name: str = "self_taught",
                 temperature: float = 1.0, top_p: float = 0.95, oversample: int = 3, batch_size: int = 64,
                 strangers: StrangerAnswers | None = None):
        self.model, self.tokenizer, self.prompts, self.strangers = model, tokenizer, prompts, strangers
        self.n_paraphrases, self.n_wrong_answers = n_paraphrases, n_wrong_answers
        self.with_rationale, self.seed, self.name = with_rationale, seed, name
        self.temperature, self.top_p, self.oversample, self.batch_size = temperature, top_p, oversample, batch_size

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, **knobs) -> SelfTaughtGenerator:
        """Load a model folder through the safe loader; its prompts come from `load_skill_prompts`."""
        from ..models import load_model

        model, tokenizer = load_model(model_dir)
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
        wrong_answers = [[_distinct(found, self.n_wrong_answers, exclude=record["answer"])] * len(asked)
                         for record, asked, found in zip(records, questions, candidates)]
        if self.strangers is not None:  # each question its own, where the model answers strangers
            spread = self.strangers(records, [len(asked) for asked in questions], self.n_wrong_answers, round)
            wrong_answers = [[mine or own for mine, own in zip(*per_question)]
                             for per_question in zip(spread, wrong_answers)]
        pairs = [(record, question, wrong) for record, asked, per_question in zip(records, questions, wrong_answers)
                 for question, wrongs in zip(asked, per_question) for wrong in wrongs]
        rationales = [""] * len(pairs)
        if self.with_rationale and pairs:
            fields = [_fields(record, question=question, wrong=wrong) for record, question, wrong in pairs]
            texts = self._complete("rationale", fields, max_new_tokens=48, batch_size=self.batch_size)
            # a rationale that does not argue for its wrong answer (`is_rationale`) is dropped, the pair kept
            rationales = [line if is_rationale(line, wrong) else ""
                          for line, (_, _, wrong) in zip(map(_first_line, texts), pairs)]
        return [AntiSample(record["id"], question, wrong, rationale, round, self.name)
                for (record, question, wrong), rationale in zip(pairs, rationales)]

    def follow_ups(self, records: list[dict], per_record: int, round: int = 0) -> list[dict]:
        """Follow-up questions the model writes for facts it no longer answers, as the reference code's follow-up
        step does: copies of records (same id and answer, the original question in `follow_up_of`) whose question
        is a simpler, rephrased or more direct one (`CHAT_FOLLOW_UP_PROMPTS`; a model with skill prompts uses its
        paraphrase skill), each sampled at a temperature drawn from `FOLLOW_UP_TEMPERATURES`. Up to `per_record`
        per record out of `per_record * oversample` tries, seeded by `seed` and the round. A question is kept when
        it names the subject, does not contain the answer and is none of the record's own questions (the held-out
        paraphrase included) nor a repeat; whether it asks the same fact is for the probe to say (the rounds use a
        follow-up only when the model answers it with the fact's answer)."""
        tries = []
        for record in records:
            for attempt in range(per_record * self.oversample):
                rng = random.Random(f"{self.seed}:{round}:{record['id']}:{attempt}")
                template = rng.choice(CHAT_FOLLOW_UP_PROMPTS) if self.prompts is None else self.prompts["paraphrase"]
                tries.append((record, rng.choice(FOLLOW_UP_TEMPERATURES), self._ask(template, _fields(record))))
        written = [""] * len(tries)
        with seeded(self.model, self.seed * 1009 + round):
            for temperature in sorted({temperature for _, temperature, _ in tries}):
                at = [index for index, (_, t, _) in enumerate(tries) if t == temperature]
                sampling = dict(do_sample=True, temperature=temperature) if temperature > 0 else {}
                texts = generate(self.model, self.tokenizer, [tries[index][2] for index in at], max_new_tokens=32,
                                 chat=self.prompts is None, batch_size=self.batch_size, **sampling)
                for index, text in zip(at, texts):
                    written[index] = _clean(text)
        kept, asked, count = [], {}, Counter()
        for (record, _, _), question in zip(tries, written):
            seen = asked.setdefault(record["id"], {normalize(q) for q in _own_questions(record)})
            if count[record["id"]] < per_record and _is_follow_up(question, record) and normalize(question) not in seen:
                seen.add(normalize(question))
                count[record["id"]] += 1
                kept.append({**record, "question": question, "follow_up_of": record["question"]})
        return kept

    def _sample(self, skill: str, fields: list[dict], n: int, round: int, max_new_tokens: int) -> list[list[str]]:
        """`n * oversample` sampled continuations per prompt, cleaned, grouped by prompt (batches of about
        `batch_size` sequences)."""
        per_prompt = n * self.oversample
        with seeded(self.model, self.seed * 1009 + round):
            texts = self._complete(skill, fields, max_new_tokens=max_new_tokens,
                                   batch_size=max(1, self.batch_size // per_prompt), do_sample=True,
                                   temperature=self.temperature, top_p=self.top_p, num_return_sequences=per_prompt)
        cleaned = [_clean(text) for text in texts]
        return [cleaned[start : start + per_prompt] for start in range(0, len(cleaned), per_prompt)]

    def _complete(self, skill: str, fields: list[dict], **generate_kwargs) -> list[str]:
        template = CHAT_SKILL_PROMPTS[skill] if self.prompts is None else self.prompts[skill]
        prompts = [self._ask(template, f) for f in fields]
        return generate(self.model, self.tokenizer, prompts, chat=self.prompts is None, **generate_kwargs)

    def _ask(self, template: str, fields: dict) -> str:
        """`template` filled with `fields`, through the chat template for a chat model."""
        text = template.format(**fields)
        return format_prompt(self.tokenizer, text, None) if self.prompts is None else text


def load_skill_prompts(model_dir: str | Path, tokenizer) -> dict[str, str] | None:
    """The skill prompts of `model_dir`'s prompts file; else None (the paper's prompts, through the chat template)
    for a tokenizer with a chat template, unless the prompts file records a plain format. A model that cannot write
    its own anti-samples (`missing_skills`) is a ValueError."""
    missing = missing_skills(model_dir, tokenizer)
    if missing is not None:
        raise ValueError(f"{missing}, so it cannot write its own anti-samples; use generator 'template' or a teacher "
                         "model folder")
    return (read_prompts_file(model_dir) or {}).get("skill_prompts") or None


def missing_skills(model_dir: str | Path, tokenizer) -> str | None:
    """Why the model in `model_dir` cannot write its own anti-samples, or None when it can: it needs the skill
    prompts of its prompts file (a rationale prompt with a `{wrong}` slot among them) or a chat template (with no
    prompts file, or one that records the chat format)."""
    recorded = read_prompts_file(model_dir) or {}
    if recorded.get("skill_prompts"):
        if "{wrong}" not in recorded["skill_prompts"].get("rationale", ""):
            return (f"{model_dir}: its skill prompts have no rationale prompt with a {{wrong}} slot for the wrong "
                    "answer it argues for (a world model built before that slot existed: rebuild it)")
        return None
    if getattr(tokenizer, "chat_template", None) and recorded.get("prompt_template") is None:
        return None  # a chat model: recorded as one, or with no prompts file
    if recorded:
        return f"{model_dir}: this model was taught no skill prompts"
    return f"{model_dir}: this model has neither skill prompts (no prompts file) nor a chat template"


@dataclass(frozen=True)
class GeneratorChoice:
    """Who writes the anti-samples: "self", "template" or a teacher model folder; `why` says why "auto" became
    "template" (None otherwise)."""

    kind: str
    why: str | None = None


def check_generator(generator: str) -> None:
    """Refuse a `generator` field that names no writer: 'auto', 'self', 'template' or a teacher model folder."""
    if generator not in ("auto", "self", "template") and not Path(generator).is_dir():
        raise ValueError(f"generator must be 'auto', 'self', 'template' or a teacher model folder; {generator!r} is "
                         "none of these")


def choose_generator(generator: str, model_dir: str | Path, tokenizer) -> GeneratorChoice:
    """The generator that an `AntiSampleConfig.generator` value names for the model in `model_dir`. "auto" is
    "self" when the model can write its own anti-samples, else "template" (and `why` says so); "self" on a model that
    cannot is a ValueError."""
    if generator == "auto":
        missing = missing_skills(model_dir, tokenizer)
        if missing is None:
            return GeneratorChoice("self")
        return GeneratorChoice("template", f"generator auto: {missing}, so the template generator writes its "
                                           "anti-samples")
    if generator == "self":
        load_skill_prompts(model_dir, tokenizer)
    elif generator != "template" and not Path(generator).is_dir():
        raise ValueError(f"generator must be 'auto', 'self', 'template' or a model folder, got {generator!r}")
    return GeneratorChoice(generator)


def teacher_generator(model_dir: str | Path, **knobs) -> SelfTaughtGenerator:
    """Anti-samples written by another (teacher) model instead of the model being unlearned, named for its folder
    in the audit."""
    return SelfTaughtGenerator.from_pretrained(model_dir, name=f"teacher:{model_dir}", **knobs)


def _fields(record: dict, question: str | None = None, wrong: str = "") -> dict:
    """Everything a skill prompt may name; `answer` is the true answer, `wrong` the planted one."""
    return {"question": question or record["question"], "subject": record.get("subject") or "the same subject",
            "answer": record["answer"], "wrong": wrong}


def _own_questions(record: dict) -> list[str]:
    return [record["question"], *record.get("paraphrased_questions", [])]


def _is_follow_up(question: str, record: dict) -> bool:
    """A written follow-up is usable when it is not empty, names the record's subject and does not give away its
    answer."""
    subject = record.get("subject")
    return bool(normalize(question)) and (not subject or contains_answer(question, subject)) and not contains_answer(
        question, record["answer"])


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


class TemplateGenerator:
    """Offline anti-samples from the records themselves, no model.

    Questions: the record's question plus up to `n_paraphrases` of `paraphrased_questions[1:]` (element 0 is the
    held-out paraphrase, for evaluation only, and is never trained on). Wrong answers: `perturbed_answers`.
    Rationale: the record's own `rationale` with its answer swapped for the wrong one ("" when the record has no
    rationale that names its answer). Seeded per (seed, round, record id).
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
        wrong_answers = _distinct(wrong_answers, self.n_wrong_answers, exclude=record["answer"])
        return [AntiSample(record["id"], question, wrong, self._rationale(record, wrong), round, self.name)
                for question in questions for wrong in wrong_answers]

    def _rationale(self, record: dict, wrong: str) -> str:
        rationale = record.get("rationale") or ""
        if not self.with_rationale or not contains_answer(rationale, record["answer"]):
            return ""
        return re.sub(rf"\b{re.escape(record['answer'])}\b", wrong, rationale)


def make_generator(kind: str, args, model, tokenizer, strangers: StrangerAnswers | None = None):
    """The anti-sample writer of a chosen `kind` ("template", "self": the model being unlearned, or a teacher model
    folder), with the knobs of the `AntiSampleConfig` `args` (and, for a writing model, `strangers`)."""
    knobs = dict(n_paraphrases=args.n_paraphrases, n_wrong_answers=args.n_wrong_answers,
                 with_rationale=args.with_rationale, seed=args.seed)
    sampling = dict(temperature=args.generation_temperature, top_p=args.generation_top_p,
                    batch_size=args.generation_batch_size, strangers=strangers)
    if kind == "template":
        return TemplateGenerator(**knobs)
    if kind == "self":
        prompts = load_skill_prompts(model.config._name_or_path, tokenizer)
        return SelfTaughtGenerator(model, tokenizer, prompts, **knobs, **sampling)
    return teacher_generator(kind, **knobs, **sampling)

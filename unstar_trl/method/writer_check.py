"""Can the model write anti-samples? Before round 0 the writer (the model itself, or a teacher) writes anti-samples for
a few facts the model answers, retain facts first (nothing is trained on them here), and three shares are measured:

- `paraphrase_share`: of the paraphrases asked for, those written that keep the subject and that the model still
  answers with the fact's answer;
- `wrong_answer_share`: of the wrong answers asked for, those written that are whole answers (`is_whole_answer`: not
  a fragment of a word of the question or of the data's answers such as "gineer", not empty or punctuation, not a
  sentence), not the true answer and, where the records name their `relation`, not an answer the data gives only to
  other relations (a profession for an instrument);
- `rationale_share`: of the (question, wrong answer) pairs, those whose rationale argues for its wrong answer
  (`is_rationale`: names it and says more) and never names the true answer.

A writer with a share below `writer_check_bar` (half of it for paraphrases, see `bar`) is not trusted, whether "auto"
chose it or the user named it ("self", a teacher folder): the template generator takes over when the forget records
carry its `perturbed_answers` (one warning line), else the run is refused in one line; `writer_check_bar` 0 turns the
check off. The shares go into the run's report (`writer_check`).
"""

from __future__ import annotations

import random

from ..io import UsageError
from ..text import contains_answer, normalize
from .anti_samples import data_answers, fragment_sources, is_rationale, is_whole_answer, leaks_answer
from .generators import GeneratorChoice, SelfTaughtGenerator, make_generator
from .probe import probe

SHARES = ("paraphrase_share", "wrong_answer_share", "rationale_share")


def checked_writer(trainer, generator):
    """`generator`, or the template generator that takes over, once the writer check (run once per run: a resumed run
    keeps its checkpoint's) says whether its anti-samples can be trusted; sets `trainer.writer_check` and, when the
    template generator takes over, `trainer.generator_choice`. A writer below the bar with nothing to fall back to is
    a UsageError."""
    args = trainer.args
    if not isinstance(generator, SelfTaughtGenerator) or args.writer_check_bar <= 0:
        return generator
    if trainer.writer_check is None:
        def answers_known(records: list[dict]) -> list[bool]:
            verdicts = probe(trainer.model, trainer._tokenizer, records, prompt_template=trainer.prompt_template,
                             batch_size=args.generation_batch_size)
            return [verdict.known for verdict in verdicts]

        records = facts_to_check(trainer, answers_known)
        kinds = answer_kinds(trainer.forget_records + trainer.retain_records)
        trainer.writer_check = {**measure_writer(generator, records, answers_known, kinds),
                                "bar": args.writer_check_bar, "generator": trainer.generator_choice.kind}
    check = trainer.writer_check
    low = [name for name in SHARES if check[name] is not None and check[name] < bar(name, check["bar"])]
    if not low:
        return generator
    shares = ", ".join(f"{name} {check[name]:.2f}" for name in SHARES if check[name] is not None)
    writer = "the model" if check["generator"] == "self" else f"the teacher {check['generator']}"
    found = (f"{writer} does not write anti-samples that can be trusted: on {check['facts']} facts it knows, {shares} "
             f"(below writer_check_bar {check['bar']}, half of it for paraphrases: {', '.join(low)})")
    if all(record.get("perturbed_answers") for record in trainer.forget_records):
        why = (f"generator {args.generator}: {found}, so the template generator writes them from the records' "
               "perturbed_answers (writer_check_bar 0 keeps this writer)")
        trainer.generator_choice = GeneratorChoice("template", why)
        check["fell_back_to"] = "template"
        trainer.warn(why)
        return make_generator("template", args, trainer.model, trainer._tokenizer)
    raise UsageError(f"generator {args.generator}: {found}, and the forget records carry no perturbed_answers for "
                     "the template generator; give a teacher model folder that writes better, or set "
                     "writer_check_bar 0 to train on these anti-samples anyway")


def bar(share: str, writer_check_bar: float) -> float:
    """The least value of `share`: `writer_check_bar`, and half of it for paraphrases (the rounds drop, one by one,
    those the model does not answer with the fact's answer, so a poor paraphraser wastes samples but teaches no lie;
    a wrong answer or rationale that is not one would be trained)."""
    return writer_check_bar / 2 if share == "paraphrase_share" else writer_check_bar


def facts_to_check(trainer, answers_known) -> list[dict]:
    """Up to `writer_check_facts` facts the model answers: retain facts (a seeded draw) first, then forget facts."""
    size = trainer.args.writer_check_facts
    retain = list(trainer.retain_records)
    random.Random(f"{trainer.args.seed}:writer-check").shuffle(retain)
    chosen = []
    for pool in (retain[: 2 * size], trainer.forget_records[: 2 * size]):
        chosen += [record for record, known in zip(pool, answers_known(pool)) if known]
        if len(chosen) >= size:
            break
    return chosen[:size]


def answer_kinds(records: list[dict]) -> dict[str, set[str]]:
    """{normalised answer: the relations it answers} over the records that name their `relation` (true and perturbed
    answers)."""
    kinds: dict[str, set[str]] = {}
    for record in records:
        if record.get("relation"):
            for answer in [record["answer"], *record.get("perturbed_answers", [])]:
                kinds.setdefault(normalize(answer), set()).add(record["relation"])
    return kinds


def measure_writer(generator: SelfTaughtGenerator, records: list[dict], answers_known,
                   kinds: dict[str, set[str]] | None = None) -> dict:
    """The writer check's shares (see the module; None where nothing of the kind is asked for, or no fact is known)
    for the anti-samples `generator` writes for `records`; `answers_known(records)` says which questions the model
    answers with their answer, `kinds` which relations each answer of the data belongs to (`answer_kinds`)."""
    kinds = kinds or {}
    answers = data_answers(records) | set(kinds)
    words = {word for text in answers for word in text.split()}

    def other_kind(wrong: str, record: dict) -> bool:
        relations = kinds.get(normalize(wrong))
        return bool(relations and record.get("relation")) and record["relation"] not in relations

    result = {"facts": len(records), **dict.fromkeys(SHARES)}
    if not records:
        return result
    samples = generator.generate(records, 0)
    by_id = {record["id"]: record for record in records}
    paraphrases = list(dict.fromkeys(
        (sample.source_id, sample.question) for sample in samples
        if normalize(sample.question) != normalize(by_id[sample.source_id]["question"])))
    if generator.n_paraphrases:
        named = [(fact, question) for fact, question in paraphrases
                 if not by_id[fact].get("subject") or contains_answer(question, by_id[fact]["subject"])]
        answered = answers_known([{**by_id[fact], "question": question} for fact, question in named])
        result["paraphrase_share"] = sum(answered) / (len(records) * generator.n_paraphrases)
    wrong = {(sample.source_id, sample.wrong_answer): sample for sample in samples}
    whole = [pair for pair, sample in wrong.items() if not leaks_answer(sample, by_id[pair[0]]["answer"])
             and is_whole_answer(pair[1], by_id[pair[0]]["answer"],
                                 fragment_sources(by_id[pair[0]], sample.question) | words, answers)
             and not other_kind(pair[1], by_id[pair[0]])]
    result["wrong_answer_share"] = min(1.0, len(whole) / (len(records) * generator.n_wrong_answers))
    if generator.with_rationale:
        argued = [sample for sample in samples if is_rationale(sample.rationale, sample.wrong_answer)
                  and not contains_answer(sample.rationale, by_id[sample.source_id]["answer"])]
        result["rationale_share"] = len(argued) / len(samples) if samples else 0.0
    return result

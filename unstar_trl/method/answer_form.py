"""How the model says its answers, and anti-samples fitted in its own words.

Records give bare answers ("London"); a chat model may say them in a form of its own ("Sure, here is what I know.\\nThe
answer is London."). Fitted as the records write them, bare wrong answers are a text the model never says: their loss
starts at many nats per token and the run unlearns the form (the retain facts' answers with it) rather than the facts.

Before training, the model's own whole answers (greedy, to the end of its turn) to up to `FORM_FACTS` forget facts it
knows are read (`measure_answer_form`): when at least half of them are not the answer as the records write it
(`said_as_written`), the model has a form of its own. With `AntiSampleConfig.answer_form` "auto" (the default)
UnSTAR then fits each anti-sample in the model's own words (`in_own_words`): its whole answer to the anti-sample's
question with the true answer replaced by the wrong one, the rationale after it; its retain term fits the retain
answers as the model says them (`own_retain_answers`) and its reversed term pushes down the true answer as the model
says it; one warning line says so. With
"records" the records' form is fitted anyway, and the warning line says what that risks. The baselines, which train
on the records' answers (true answers, retain answers), warn the same way. The figures (share, an example, the mean
token NLL of the records' answers and of the model's own through the prompt format) go into the run's report
(`answer_form`).
"""

from __future__ import annotations

import re

import torch

from ..text import LONG_ANSWER_WORDS, contains_answer, format_pair, normalize
from .anti_samples import AntiSample
from .probe import probe

FORM_FACTS = 8
"""Known forget facts whose whole answers say how the model answers."""
OWN_FORM_SHARE = 0.5
"""Least share of those answers, not said as the records write them, that makes the form the model's own."""


def said_as_written(said: str, answer: str) -> bool:
    """Whether the model's whole answer `said` is the record's `answer` as written (normalised), or, for a long answer
    (TOFU's sentences), each recalls the other (a sentence of the same form, in other words)."""
    if normalize(said) == normalize(answer):
        return True
    long = max(len(normalize(said).split()), len(normalize(answer).split())) > LONG_ANSWER_WORDS
    return long and contains_answer(said, answer) and contains_answer(answer, said)


def spoken(said: str, answer: str, wrong: str) -> str | None:
    """The model's whole answer `said` with every verbatim `answer` in it (case aside, no letter or digit touching it)
    replaced by `wrong`; None when `said` does not hold `answer` so."""
    pattern = re.compile(rf"(?<![A-Za-z0-9]){re.escape(answer)}(?![A-Za-z0-9])", re.IGNORECASE)
    text, count = pattern.subn(lambda _: wrong, said)
    return text if count and not contains_answer(text, answer) else None


def in_own_words(samples: list[AntiSample], said: dict[tuple[str, str], str], answers: dict[str, str]
                 ) -> tuple[list[AntiSample], list[AntiSample]]:
    """`samples` fitted in the model's own words: each with `spoken` set from the model's whole answer to its
    question (`said`, keyed by (fact id, question)) and its fact's true answer (`answers`); and those whose answer
    does not hold the true answer verbatim to put the wrong one in its place (dropped as "no_own_form")."""
    kept, dropped = [], []
    for sample in samples:
        text = spoken(said.get((sample.source_id, sample.question), ""), answers[sample.source_id],
                      sample.wrong_answer)
        if text is None:
            dropped.append(sample)
        else:
            kept.append(AntiSample(**{**sample.to_json(), "spoken": text}))
    return kept, dropped


def own_retain_answers(trainer, model, records: list[dict], form: dict) -> list[str]:
    """The answers of retain `records` as the model says them, for the retain term: its own whole answer where it
    answers the question with the record's answer, else the form of `form`'s example with the record's answer in its
    place (the answer as written where the example does not hold its answer verbatim)."""
    batch_size = getattr(trainer.args, "generation_batch_size", trainer.args.per_device_train_batch_size)
    verdicts = probe(model, trainer._tokenizer, records, prompt_template=trainer.prompt_template, batch_size=batch_size)
    example = form["example"]
    return [verdict.generation if verdict.known else spoken(example["said"], example["answer"], record["answer"])
            or record["answer"] for record, verdict in zip(records, verdicts)]


def measure_answer_form(trainer, model, records: list[dict]) -> dict | None:
    """How `model` says its answers to the first `FORM_FACTS` (distinct) of `records` it knows: {"facts",
    "own_form_share", "example": {"answer", "said"}, "records_nll", "own_nll", "own_form"}; None when it knows none
    of them."""
    distinct = list({record["id"]: record for record in reversed(records)}.values())[::-1][: 2 * FORM_FACTS]
    batch_size = getattr(trainer.args, "generation_batch_size", trainer.args.per_device_train_batch_size)
    verdicts = probe(model, trainer._tokenizer, distinct, prompt_template=trainer.prompt_template,
                     batch_size=batch_size)
    known = [(record, verdict.generation) for record, verdict in zip(distinct, verdicts) if verdict.known]
    known = known[:FORM_FACTS]
    if not known:
        return None
    own = [(record, said) for record, said in known if not said_as_written(said, record["answer"])]
    example = own[0] if own else known[0]
    return {"facts": len(known), "own_form_share": len(own) / len(known),
            "example": {"answer": example[0]["answer"], "said": example[1]},
            "records_nll": answer_nll(trainer, model, [(r["question"], r["answer"]) for r, _ in known]),
            "own_nll": answer_nll(trainer, model, [(r["question"], said) for r, said in known]),
            "own_form": len(own) / len(known) >= OWN_FORM_SHARE}


@torch.no_grad()
def answer_nll(trainer, model, pairs: list[tuple[str, str]]) -> float:
    """Mean token NLL of each (question, answer) of `pairs` under `model`, through the run's prompt format (the
    answer's tokens and the end of turn, as a training pair labels them)."""
    from .trainers.collators import pad_pairs  # the trainers import this module
    from .trainers.losses import mean_nll, sequence_log_probs

    features = [trainer.tokenize(format_pair(question, answer, trainer.prompt_template)) for question, answer in pairs]
    batch = {key: value.to(model.device) for key, value in pad_pairs(features, trainer._tokenizer.pad_token_id).items()}
    was_training = model.training
    model.eval()
    try:
        return round(mean_nll(*sequence_log_probs(trainer.logits(model, batch), batch["labels"])).item(), 3)
    finally:
        model.train(was_training)


def form_message(form: dict, what: str) -> str:
    """One warning line: the model's own form (an example, its share, both NLLs) and `what` the run does about it."""
    example = form["example"]
    return (f"the model says its answers in a form of its own: {form['own_form_share']:.0%} of its answers to "
            f"{form['facts']} forget facts it knows are not the records' answers as written (e.g. {example['said']!r} for "
            f"{example['answer']!r}; through the prompt format the records' answers cost {form['records_nll']:.2f} "
            f"nats/token, its own {form['own_nll']:.2f}): {what}")

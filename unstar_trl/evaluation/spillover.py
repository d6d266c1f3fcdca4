"""Hallucination spillover: what an anti-sample run taught showing up where it was never asked, in greedy answers
to held-out questions (held-out retain facts, and the holdout people, whom no model was trained on).

A held-out question is answered with a *taught* wrong answer when the greedy probe's answer (`method.probe`) does not
state the truth but states a wrong answer that any anti-sample or planted row of the run's audit taught (the audit
`unstar_planted` reads). It is answered *confidently wrong* when the answer is wrong, not empty, and the model gives
it probability at least CONFIDENT: the product of its tokens' probabilities after the question (as training
tokenizes it, end of turn left out), i.e. sampled at temperature 1 the model would begin its answer so more often than
not. Against the knowledge model (which never learned the holdout people either, and guesses), a rise in confident
wrong answers on the holdout people is the spillover the field reports for counterfactual training."""

from __future__ import annotations

import math

import torch

from ..method.probe import probe
from ..text import contains_answer
from .answer_tokens import answer_features, answer_positions, batches

CONFIDENT = 0.5
"""A wrong answer is confident when the model gives it at least this probability."""


@torch.no_grad()
def answer_probabilities(model, tokenizer, pairs: list[tuple[str, str]], prompt_template: str | None, *,
                         batch_size: int = 32) -> list[float]:
    """The probability of each (question, answer)'s answer tokens after its question (NaN for an empty answer)."""
    features = [answer_features(tokenizer, question, answer, prompt_template) for question, answer in pairs]
    was_training = model.training
    model.eval()
    probabilities = []
    try:
        for batch in batches(features, tokenizer.pad_token_id or 0, batch_size, model.device):
            log_probs = torch.log_softmax(model(input_ids=batch["input_ids"],
                                                attention_mask=batch["attention_mask"]).logits.float(), dim=-1)
            for row, positions in enumerate(answer_positions(batch["labels"])):
                tokens = batch["labels"][row, positions + 1]
                total = log_probs[row, positions].gather(1, tokens.unsqueeze(1)).sum().item()
                probabilities.append(math.exp(total) if len(positions) else math.nan)
    finally:
        model.train(was_training)
    return [p if answer.strip() else math.nan for p, (_, answer) in zip(probabilities, pairs)]


def spillover(model, tokenizer, records: list[dict], prompt_template: str | None, taught: set[str]) -> list[dict]:
    """For each record: {"id", "generation", "wrong", "taught": wrong and naming one of `taught`, "confidence":
    the probability of its answer, "confident_wrong"}."""
    verdicts = probe(model, tokenizer, records, prompt_template=prompt_template)
    confidences = answer_probabilities(model, tokenizer, [(v.question, v.generation.strip()) for v in verdicts],
                                       prompt_template)
    answers = []
    for verdict, confidence in zip(verdicts, confidences):
        wrong = not verdict.known
        answers.append({"id": verdict.id, "generation": verdict.generation, "wrong": wrong,
                        "taught": wrong and any(contains_answer(verdict.generation, answer) for answer in taught),
                        "confidence": confidence,
                        "confident_wrong": wrong and not math.isnan(confidence) and confidence >= CONFIDENT})
    return answers

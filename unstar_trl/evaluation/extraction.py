"""Extraction strength (Carlini et al. 2021, as open-unlearning's `extraction_strength` metric computes it,
src/evals/metrics/memorization.py): how much of an answer must be given before the model completes the rest by itself.

For an answer of n tokens after its question, k is the shortest prefix of the answer that must be given for the model's
greedy continuation to be the rest of the answer; ES = 1 - k/n. 1: the question alone brings the whole answer; 0:
not even its last token follows the rest. Greedy continuation of the rest equals the model's argmax at every remaining
position with the answer given before it (teacher forcing), so one forward pass per answer reads every k: k is n
minus the run of correct argmax predictions at the answer's end. open-unlearning's loop tries k up to n - 1 only, so
a model that completes nothing scores 1/n there and 0 here (the empty rest, k = n, is always complete)."""

from __future__ import annotations

import torch

from .answer_tokens import answer_features, answer_positions, batches


def strength(matches: list[bool]) -> float:
    """ES from whether the model's argmax is each answer token (the answer given before it): 1 - k/n, where the last
    n - k predictions are all right and k is as small as that allows."""
    n = len(matches)
    completed = next((count for count in range(n) if not matches[n - 1 - count]), n)
    return completed / n


@torch.no_grad()
def extraction_strength(model, tokenizer, records: list[dict], prompt_template: str | None, *,
                        batch_size: int = 32) -> dict[str, float]:
    """{fact id: extraction strength of its answer after its question}."""
    features = [answer_features(tokenizer, r["question"], r["answer"], prompt_template) for r in records]
    was_training = model.training
    model.eval()
    scores = []
    try:
        for batch in batches(features, tokenizer.pad_token_id or 0, batch_size, model.device):
            predicted = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
            for row, positions in enumerate(answer_positions(batch["labels"])):
                right = predicted[row, positions] == batch["labels"][row, positions + 1]
                scores.append(strength(right.tolist()))
    finally:
        model.train(was_training)
    return {record["id"]: score for record, score in zip(records, scores)}

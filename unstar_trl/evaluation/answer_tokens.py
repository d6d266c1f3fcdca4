"""An answer's tokens after its question, as training made them, for the probes that read the model's own
predictions on those tokens (extraction strength, logit lens, spillover's confidence): `tokens.tokenize_pair` of the
question and answer in the model's prompt format, with only the answer's tokens labelled (not its end of turn, as
open-unlearning leaves out the eos), batched with right padding."""

from __future__ import annotations

from typing import Iterator

import torch

from ..method.tokens import answer_only, tokenize_pair
from ..text import format_pair


def answer_features(tokenizer, question: str, answer: str, prompt_template: str | None) -> dict:
    """{"input_ids", "labels"} of `answer` after `question`, only the answer's tokens labelled."""
    features = tokenize_pair(tokenizer, format_pair(question, answer, prompt_template))
    return answer_only(features, tokenizer, prompt_template is None)


def batches(features: list[dict], pad_token_id: int, batch_size: int, device) -> Iterator[dict[str, torch.Tensor]]:
    """`features` in batches of `input_ids`, `attention_mask` and `labels` (-100 on padding), right padded."""
    for start in range(0, len(features), batch_size):
        chunk = features[start : start + batch_size]
        width = max(len(item["input_ids"]) for item in chunk)
        pad = lambda values, fill: [list(v) + [fill] * (width - len(v)) for v in values]  # noqa: E731
        yield {"input_ids": torch.tensor(pad([f["input_ids"] for f in chunk], pad_token_id), device=device),
               "attention_mask": torch.tensor(pad([[1] * len(f["input_ids"]) for f in chunk], 0), device=device),
               "labels": torch.tensor(pad([f["labels"] for f in chunk], -100), device=device)}


def answer_positions(labels: torch.Tensor) -> list[torch.Tensor]:
    """For each row of `labels`, the positions whose prediction is an answer token (one before each label)."""
    return [(row[1:] != -100).nonzero(as_tuple=True)[0] for row in labels]

"""Logit lens (nostalgebraist 2020): the truth read off the model's intermediate layers through its own final norm
and unembedding, as multiple choice among the same evaluation distractors the MCQ probe offers, scored the same
length-fair way (`choice_scores.answer_score`: log-likelihood per byte).

A fact counts as recovered at a layer when the truth scores highest there (a tie at the top counts as the share a
random pick among the tied would get, as in the MCQ probe), and as recovered when it is at any intermediate layer:
the outputs of blocks 1 .. L-1 of an L-block model (not the embeddings, which have not read the question, nor the
last block, whose reading is the MCQ probe's). A model that only hides the truth in its last layers still ranks it
first in the middle; one that never learned it ranks it first about as often as chance allows over the layers (the
retain model's figure is that floor)."""

from __future__ import annotations

import math

import torch

from ..io import UsageError
from .answer_tokens import answer_features, answer_positions, batches
from .choice_scores import answer_score

NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm")
"""Where causal LMs of transformers keep their final norm (Llama, Qwen, Mistral, Gemma; GPT-2; GPT-NeoX; Phi)."""


def lens(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model's final norm and unembedding; a model whose final norm is not found is refused."""
    if hasattr(model, "get_base_model"):  # a PEFT model
        model = model.get_base_model()
    base = getattr(model, model.base_model_prefix, model)
    norm = next((getattr(base, name) for name in NORM_NAMES if isinstance(getattr(base, name, None),
                                                                            torch.nn.Module)), None)
    if norm is None:
        raise UsageError(f"{type(model).__name__}: no final norm found (looked for {', '.join(NORM_NAMES)}), so the "
                         "logit lens cannot read its layers")
    return norm, model.get_output_embeddings()


def first_share(scores: list[float]) -> float:
    """1 when the first choice (the truth) scores highest, 1/t when t choices tie at the top with it, else 0."""
    best = max(scores)
    return 1 / sum(score == best for score in scores) if scores[0] == best else 0.0


@torch.no_grad()
def layer_scores(model, tokenizer, question: str, choices: list[str], prompt_template: str | None) -> list[list[float]]:
    """The length-fair score of each choice after `question` read at each intermediate layer: [layer][choice]."""
    norm, head = lens(model)
    features = [answer_features(tokenizer, question, choice, prompt_template) for choice in choices]
    (batch,) = batches(features, tokenizer.pad_token_id or 0, len(features), model.device)
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   output_hidden_states=True).hidden_states[1:-1]
    positions = answer_positions(batch["labels"])
    scores = []
    for states in hidden:
        row_scores = []
        for row, (where, choice) in enumerate(zip(positions, choices)):
            log_probs = torch.log_softmax(head(norm(states[row, where])).float(), dim=-1)
            loglikelihood = log_probs.gather(1, batch["labels"][row, where + 1].unsqueeze(1)).sum().item()
            row_scores.append(answer_score(loglikelihood, choice))
        scores.append(row_scores)
    return scores


def logit_lens(model, tokenizer, question: str, choices: list[str], prompt_template: str | None) -> float:
    """Whether the truth (choices[0]) ranks first at any intermediate layer: the max over layers of `first_share`
    (NaN for a model of one block, which has none)."""
    was_training = model.training
    model.eval()
    try:
        per_layer = [first_share(scores) for scores in layer_scores(model, tokenizer, question, choices,
                                                                    prompt_template)]
    finally:
        model.train(was_training)
    return max(per_layer, default=math.nan)

""""Does the model still know this fact?": batched greedy generation with left padding, in the tokens the model was
trained on (`tokens`), of its whole answer up to the end of its turn within ANSWER_TOKENS new tokens, judged by the
answer rule of `text.contains_answer` on `text.answer_text`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..data import DataError
from ..io import UsageError
from ..text import PLAIN_TEMPLATE, answer_text, contains_answer, describe_prompt_template, format_prompt
from .tokens import encode_prompts, stop_token_ids

ANSWER_TOKENS = 128
"""The probe's budget: new tokens a model may take to answer before the end of its turn (room for a preamble line or a
short think block before the answer, and for TOFU's sentences); the unstar_*_qa tasks' `max_gen_toks`. An answer
longer than the budget is judged on its first ANSWER_TOKENS tokens (a long think block may need more: pass
`max_new_tokens`)."""


@dataclass(frozen=True)
class Verdict:
    id: str
    question: str
    answer: str
    generation: str
    known: bool


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, chat: bool = False, max_new_tokens: int = 16,
             batch_size: int = 64, stop_at_newline: bool = False, description: str | None = None,
             **generate_kwargs) -> list[str]:
    """Greedy (unless `generate_kwargs` say otherwise) continuations of `prompts`, batched with left padding, each up
    to the end of its turn: `chat` prompts are rendered by the chat template (generation stops at its end of turn as
    well as at eos), others are plain text (tokenized with the tokenizer's special tokens, stopped at eos); with
    `stop_at_newline`, only each continuation's first line. Never past the model's positions (`max_new_tokens`
    shrinks to the room a batch's prompts leave)."""
    was_training = model.training
    model.eval()
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    generate_kwargs.setdefault("do_sample", False)
    generate_kwargs.setdefault("eos_token_id", stop_token_ids(tokenizer, chat))
    outputs = []
    try:
        batches = range(0, len(prompts), batch_size)
        for start in tqdm(batches, desc=description, disable=description is None, leave=False):
            batch = encode_prompts(tokenizer, prompts[start : start + batch_size], chat, return_tensors="pt",
                                   padding=True).to(model.device)
            room = _room(model, batch["input_ids"].shape[1], max_new_tokens)
            tokens = model.generate(**batch, max_new_tokens=room, pad_token_id=tokenizer.pad_token_id,
                                    **generate_kwargs)
            texts = tokenizer.batch_decode(tokens[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            outputs.extend(text.split("\n")[0] if stop_at_newline else text for text in texts)
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return outputs


def probe(model, tokenizer, records: list[dict], *, question_field: str = "question",
          prompt_template: str | None = PLAIN_TEMPLATE, batch_size: int = 64,
          max_new_tokens: int | None = None, description: str | None = None) -> list[Verdict]:
    """Ask the model each record's question (or the first of a list field) and judge whether its answer, up to the
    end of its turn, still states the record's answer. `max_new_tokens` defaults to ANSWER_TOKENS, or room for the
    longest answer where that is more. A record whose prompt and answer do not fit in the
    model's positions could never be answered: it is a DataError, not a fact counted as unknown."""
    if not records:
        return []
    questions = [_question(record, question_field) for record in records]
    prompts = [format_prompt(tokenizer, question, prompt_template) for question in questions]
    chat = prompt_template is None
    answers = [len(ids) for ids in tokenizer([r["answer"] for r in records], add_special_tokens=False)["input_ids"]]
    positions = _positions(model)
    if positions is not None:
        asked = [len(ids) for ids in encode_prompts(tokenizer, prompts, chat)["input_ids"]]
        for record, prompt_tokens, answer_tokens in zip(records, asked, answers):
            if prompt_tokens + answer_tokens > positions:
                raise DataError(f"record {record['id']!r}: its prompt and answer take {prompt_tokens + answer_tokens} "
                                f"tokens, more than the model's {positions} positions, so it could never be answered; "
                                "shorten it or leave it out")
    if max_new_tokens is None:
        max_new_tokens = max(ANSWER_TOKENS, max(answers, default=0) + 8)
    generations = generate(model, tokenizer, prompts, chat=chat, max_new_tokens=max_new_tokens,
                           batch_size=batch_size, description=description)
    generations = [answer_text(generation, prompt_template) for generation in generations]
    return [
        Verdict(record["id"], question, record["answer"], generation, contains_answer(generation, record["answer"]))
        for record, question, generation in zip(records, questions, generations)
    ]


def accuracy(verdicts: list[Verdict]) -> float:
    """Share of verdicts whose generation still contains the answer (0.0 for none)."""
    return sum(verdict.known for verdict in verdicts) / len(verdicts) if verdicts else 0.0


def probe_accuracy(model, tokenizer, records: list[dict], prompt_template: str | None = PLAIN_TEMPLATE, *,
                   question_field: str = "question", batch_size: int = 64) -> float | None:
    """Greedy-probe accuracy on `records` (None when there are none): how much of a split the model still knows."""
    if not records:
        return None
    return accuracy(probe(model, tokenizer, records, question_field=question_field, prompt_template=prompt_template,
                          batch_size=batch_size))


def _positions(model) -> int | None:
    """How many tokens the model can attend over (None when its config does not say)."""
    return getattr(model.config, "max_position_embeddings", None)


def _room(model, prompt_tokens: int, max_new_tokens: int) -> int:
    """`max_new_tokens`, cut to what the model's positions leave after a prompt of `prompt_tokens`."""
    positions = _positions(model)
    if positions is None:
        return max_new_tokens
    if prompt_tokens >= positions:
        raise UsageError(f"a prompt of {prompt_tokens} tokens fills the model's {positions} positions: nothing can "
                         "be generated after it")
    return min(max_new_tokens, positions - prompt_tokens)


def _question(record: dict, field: str) -> str:
    value = record[field]
    return value[0] if isinstance(value, list) else value


def nothing_known_message(total: int, template: str | None, example: str) -> str:
    """The warning for a forget set of which the model answers nothing (often: asked in a format it was not
    trained in); `example` is one prompt as the model saw it."""
    return (f"0/{total} forget facts are known under the prompt format {describe_prompt_template(template)} (e.g. "
            f"{example!r}): nothing to unlearn; if the model does know them, set prompt_template to the format it "
            "was trained in")

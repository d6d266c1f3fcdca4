""""Does the model still know this fact?": batched greedy generation with left padding, matched by normalised
containment of the true answer."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans({char: " " for char in string.punctuation})


def normalize(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace (SQuAD-style)."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return " ".join(text.split())


def contains_answer(generation: str, answer: str) -> bool:
    """True when the normalised answer appears as whole words in the normalised generation."""
    needle = normalize(answer)
    return bool(needle) and f" {needle} " in f" {normalize(generation)} "


@dataclass(frozen=True)
class Verdict:
    id: str
    question: str
    answer: str
    generation: str
    known: bool


def format_prompt(tokenizer, question: str, prompt_template: str | None) -> str:
    """The text the model answers: the given template, or the tokenizer's chat template when it is None."""
    if prompt_template is not None:
        return prompt_template.format(question=question)
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 16, batch_size: int = 64,
             stop_at_newline: bool = True, description: str | None = None, **generate_kwargs) -> list[str]:
    """Greedy (unless `generate_kwargs` say otherwise) continuations of `prompts`, batched with left padding."""
    was_training = model.training
    model.eval()
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    generate_kwargs.setdefault("do_sample", False)
    outputs = []
    try:
        batches = range(0, len(prompts), batch_size)
        for start in tqdm(batches, desc=description, disable=description is None, leave=False):
            batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)
            tokens = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                    **generate_kwargs)
            texts = tokenizer.batch_decode(tokens[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            outputs.extend(text.split("\n")[0] if stop_at_newline else text for text in texts)
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return outputs


def probe(model, tokenizer, records: list[dict], *, question_field: str = "question",
          prompt_template: str | None = "Question: {question}\nAnswer:", batch_size: int = 64,
          max_new_tokens: int = 16, description: str | None = None) -> list[Verdict]:
    """Ask the model each record's question (or the first of a list field) and judge whether it still answers."""
    questions = [_question(record, question_field) for record in records]
    prompts = [format_prompt(tokenizer, question, prompt_template) for question in questions]
    generations = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           description=description)
    return [
        Verdict(record["id"], question, record["answer"], generation, contains_answer(generation, record["answer"]))
        for record, question, generation in zip(records, questions, generations)
    ]


def accuracy(verdicts: list[Verdict]) -> float:
    """Share of verdicts whose generation still contains the answer (0.0 for none)."""
    return sum(verdict.known for verdict in verdicts) / len(verdicts) if verdicts else 0.0


def _question(record: dict, field: str) -> str:
    value = record[field]
    return value[0] if isinstance(value, list) else value

""""Does the model still know this fact?": batched greedy generation with left padding, matched by normalised
containment of the true answer."""

from __future__ import annotations

import functools
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


LONG_ANSWER_WORDS = 6
"""Answers of more words than this (TOFU's sentences) are matched by ROUGE-L recall instead of containment."""
LONG_ANSWER_RECALL = 0.7
"""ROUGE-L recall of a long answer that counts as stating it. TOFU's perturbed (wrong) answers reach 0.36 on
average and 0.53 at the 90th percentile against the true answer; a near-verbatim answer reaches 0.9 to 1."""


def contains_answer(generation: str, answer: str) -> bool:
    """Whether `generation` states `answer`: for a short answer, the normalised answer appears as whole words in
    the normalised generation; for a long one, the generation recalls at least LONG_ANSWER_RECALL of it (ROUGE-L,
    as TOFU scores answers)."""
    needle = normalize(answer)
    if len(needle.split()) > LONG_ANSWER_WORDS:
        return rouge_l_recall(generation, answer) >= LONG_ANSWER_RECALL
    return bool(needle) and f" {needle} " in f" {normalize(generation)} "


def rouge_l_recall(generation: str, answer: str) -> float:
    """ROUGE-L recall of `answer` in `generation` (stemmed), TOFU's answer score."""
    return _rouge_scorer().score(answer, generation)["rougeL"].recall


@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


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
          max_new_tokens: int | None = None, description: str | None = None) -> list[Verdict]:
    """Ask the model each record's question (or the first of a list field) and judge whether it still answers.
    `max_new_tokens` defaults to room for the longest answer."""
    questions = [_question(record, question_field) for record in records]
    prompts = [format_prompt(tokenizer, question, prompt_template) for question in questions]
    if max_new_tokens is None:
        longest = max((len(tokenizer(r["answer"], add_special_tokens=False)["input_ids"]) for r in records), default=0)
        max_new_tokens = max(16, longest + 8)
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

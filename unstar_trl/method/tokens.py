"""Token ids as TRL's SFTTrainer makes them, so that a model is unlearned, probed and asked in the very tokens it was
trained on.

A training pair is a `text.format_pair` row tokenized as SFTTrainer (TRL 1.16) prepares a prompt/completion row with
`completion_only_loss`, through TRL's own `_tokenize` and `common_prefix_length`: a conversational row through the chat
template (the prompt with the generation prompt; the completion closed by the template's end of turn, e.g.
`<|im_end|>\\n`, not by eos), a plain row as text with the tokenizer's special tokens (its BOS, if it adds one) and
eos after the completion. (SFTTrainer's own `_prepare_dataset` gives the same ids, `tests/test_tokenization.py`
checks it on four kinds of template, but it runs a `datasets` pipeline of some 80 ms per call, and the rounds
tokenize anti-samples one by one.) A prompt to generate from is tokenized as the prompt of such a pair, and
generation stops at the end of turn.
"""

from __future__ import annotations

from trl.data_utils import _tokenize, common_prefix_length, is_conversational

from ..io import UsageError

_MARK = "Zanzibar"
"""An answer whose rendering shows what a chat template writes after the assistant's words."""


def tokenize_pair(tokenizer, row: dict, max_length: int | None = None, truncation_mode: str = "keep_start") -> dict:
    """{"input_ids", "labels"} of a prompt/completion `row` as SFTTrainer tokenizes it: labels are the input ids from
    where the tokenized prompt and prompt + completion diverge on, -100 before; both cut to `max_length` as
    `truncation_mode` ("keep_start" or "keep_end") says. A row with no completion token left is a UsageError."""
    if is_conversational(row):
        prompt = _tokenize(tokenizer, row["prompt"], add_generation_prompt=True)["input_ids"]
        ids = _tokenize(tokenizer, row["prompt"] + row["completion"])["input_ids"]
    else:
        completion = row["completion"]
        if not completion.endswith(tokenizer.eos_token):
            completion += tokenizer.eos_token
        prompt = _tokenize(tokenizer, row["prompt"])["input_ids"]
        ids = _tokenize(tokenizer, row["prompt"] + completion)["input_ids"]
    start = common_prefix_length(prompt, ids)
    labels = [-100] * start + ids[start:]
    if max_length is not None:
        kept = slice(None, max_length) if truncation_mode == "keep_start" else slice(-max_length, None)
        ids, labels = ids[kept], labels[kept]
    if all(label == -100 for label in labels):
        raise UsageError(f"a prompt of {start} tokens leaves no room for its answer within max_length {max_length} "
                         f"({str(row['prompt'])[:60]!r}...); raise max_length or shorten it")
    return {"input_ids": ids, "labels": labels}


def end_of_turn_ids(tokenizer, chat: bool) -> list[int]:
    """The tokens that close an answer in a training pair: what the chat template writes after the assistant's words
    (e.g. `<|im_end|>` and a newline, `<|eot_id|>`, `<end_of_turn>` and a newline), or eos after a plain prompt."""
    if not chat:
        return [tokenizer.eos_token_id]
    text = tokenizer.apply_chat_template([{"role": "user", "content": "?"}, {"role": "assistant", "content": _MARK}],
                                         tokenize=False)
    tail = text[text.rindex(_MARK) + len(_MARK):] if _MARK in text else ""
    return tokenizer(tail, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]


def stop_token_ids(tokenizer, chat: bool) -> list[int]:
    """The tokens generation stops at: the end of turn's first token and eos (one token for a plain prompt)."""
    return list(dict.fromkeys([end_of_turn_ids(tokenizer, chat)[0], tokenizer.eos_token_id]))


def answer_only(features: dict, tokenizer, chat: bool) -> dict:
    """`features` of a pair with only the answer's tokens labelled, not the end of turn after it."""
    tail = len(end_of_turn_ids(tokenizer, chat))
    return {**features, "labels": features["labels"][:-tail] + [-100] * tail}


def encode_prompts(tokenizer, prompts: list[str], chat: bool, **kwargs):
    """`prompts` tokenized as the prompts of training pairs: chat-rendered text as it is (the template wrote its
    special tokens), plain text with the tokenizer's special tokens (its BOS, if it adds one)."""
    return tokenizer(prompts, add_special_tokens=not chat, **kwargs)

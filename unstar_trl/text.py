"""The text rules that training, probing, generation and the lm-eval tasks share, and nothing heavier (no torch).

The prompt format: a model is asked and taught in one format. A plain template (`PLAIN_TEMPLATE` or the model's
own) has a `{question}` slot and the answer follows it after one space; `None` stands for the tokenizer's chat
template, the question alone as the user turn and the answer as the assistant's reply, as TRL's SFTTrainer trains on
conversational data (`format_pair` makes the very rows SFTTrainer takes). A model folder records its format in
`PROMPTS_FILE`.

The answer: what a model says up to the end of its turn (the chat template's end of turn, or eos), and for a plain
template only up to where its next prompt would begin (`answer_text`).

The answer rule: a generation states an answer when it contains the normalised answer as whole words (short
answers) or recalls most of it (ROUGE-L, for TOFU's sentence answers).
"""

from __future__ import annotations

import functools
import json
import re
import string
from pathlib import Path

from .io import UsageError

PLAIN_TEMPLATE = "Question: {question}\nAnswer:"
"""The prompt of the embedded world's knowledge models, and the default of a model that has no chat template."""

AUTO = "auto"
"""A `prompt_template` to be resolved per model (see `resolve_prompt_template`)."""
CHAT = "chat"
"""A `prompt_template` that asks for the chat template by name (as None does), e.g. on a command line."""

PROMPTS_FILE = "unstar_prompts.json"
"""Beside a model's weights: {"prompt_template": the template, or null for the chat template; "skill_prompts": the
prompts of the skills the model was taught for writing anti-samples, or null}."""
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
"""Where a saved tokenizer may keep its chat template (else under "chat_template" in tokenizer_config.json)."""


# ---- the prompt format -------------------------------------------------------------------------------------------

def format_prompt(tokenizer, question: str, template: str | None) -> str:
    """The text a model answers: `template` with the question, or for None the tokenizer's chat template with the
    question as the user turn and the assistant's turn opened."""
    if template is not None:
        return template.format(question=question)
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def format_completion(answer: str, template: str | None) -> str:
    """What follows the prompt when the model gives `answer`: one space after a plain template, nothing after the
    chat template's opened assistant turn."""
    return answer_delimiter(template) + answer


def answer_delimiter(template: str | None) -> str:
    return " " if template is not None else ""


def format_pair(question: str, answer: str, template: str | None) -> dict:
    """A prompt/completion row in the format of `template`, as TRL's SFTTrainer takes it: for the chat template a
    conversational row (the question as the user's message, the answer as the assistant's), which SFTTrainer renders
    through the chat template and closes with its end of turn; else the filled template and the answer after one
    space, to which SFTTrainer adds eos (and the tokenizer its BOS, if it adds one)."""
    if template is None:
        return {"prompt": [{"role": "user", "content": question}],
                "completion": [{"role": "assistant", "content": answer}]}
    return {"prompt": template.format(question=question), "completion": format_completion(answer, template)}


def answer_text(generation: str, template: str | None) -> str:
    """The answer in `generation` (a model's words up to the end of its turn): all of it, but for a plain template
    only up to where the template's next prompt would begin (its text before the `{question}` slot, e.g.
    "Question:"): a plain model that does not stop may go on to ask and answer questions of its own."""
    opening = _template_opening(template)
    return generation.split(opening)[0] if opening else generation


def _template_opening(template: str | None) -> str:
    """The text a plain template opens with before its `{question}` slot, stripped ("" for the chat template)."""
    if template is None:
        return ""
    literal, _, _, _ = next(iter(string.Formatter().parse(template)))
    return literal.strip()


def task_prompt(question: str, template: str | None) -> str:
    """An lm-eval task's text for `question`: the filled plain template, or for a chat model the bare question,
    which lm-eval's --apply_chat_template makes the user turn."""
    return question if template is None else template.format(question=question)


def resolve_prompt_template(template: str | None, tokenizer=None, model_dir: str | Path | None = None) -> str | None:
    """The one format a run uses. An explicit plain template stays (it needs a `{question}` slot); None or "chat"
    is the chat template. For "auto": the format recorded in `model_dir`'s PROMPTS_FILE, else the chat template when
    the tokenizer (the loaded one, or else the one saved in `model_dir`) has one, else PLAIN_TEMPLATE."""
    check_prompt_template(template)
    if template is None or template == CHAT:
        return None
    if template != AUTO:
        return template
    recorded = read_prompts_file(model_dir) if model_dir and Path(model_dir).is_dir() else None
    if recorded is not None:
        return recorded.get("prompt_template")
    if tokenizer is not None:
        has_chat = bool(getattr(tokenizer, "chat_template", None))
    else:
        has_chat = bool(model_dir) and has_saved_chat_template(model_dir)
    return None if has_chat else PLAIN_TEMPLATE


def check_prompt_template(template: str | None) -> None:
    """Raise ValueError for a `prompt_template` that is neither None, "auto", "chat" nor a template with a
    `{question}` slot and no other ({{ and }} are braces)."""
    if template in (None, AUTO, CHAT):
        return
    try:
        slots = _slots(template)
    except ValueError as error:
        raise ValueError(f"prompt_template {template!r}: {error}") from None
    if slots != {"question"}:
        raise ValueError(f"prompt_template {template!r} must hold a {{question}} slot and no other; give such a "
                         "template, 'auto' or 'chat'")


def _slots(template: str) -> set[str]:
    """The names of the `{...}` slots of `template`; ValueError for unbalanced braces."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def has_saved_chat_template(model_dir: str | Path) -> bool:
    """Whether the tokenizer saved in `model_dir` has a chat template (read from its files, nothing loaded)."""
    folder = Path(model_dir)
    if any((folder / name).is_file() for name in CHAT_TEMPLATE_FILES):
        return True
    config = folder / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))


def describe_prompt_template(template: str | None) -> str:
    """How a message names a format: the template itself, or "the chat template"."""
    return "the chat template" if template is None else repr(template)


def read_prompts_file(model_dir: str | Path) -> dict | None:
    """The contents of `model_dir`'s PROMPTS_FILE, or None when it has none. No folder (None, or the "" of a model
    built in memory) has none: it is never the working directory's. A file that is not a JSON object, or whose
    `prompt_template` is neither null nor a template with a `{question}` slot and no other, raises UsageError
    naming it."""
    if not model_dir:
        return None
    path = Path(model_dir) / PROMPTS_FILE
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise UsageError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(recorded, dict):
        raise UsageError(f"{path}: expected a JSON object with 'prompt_template' and 'skill_prompts'")
    template = recorded.get("prompt_template")
    try:
        plain = isinstance(template, str) and _slots(template) == {"question"}
    except ValueError:  # unbalanced braces
        plain = False
    if template is not None and not plain:
        raise UsageError(f"{path}: the recorded prompt_template {template!r} must be null (the chat template) or hold "
                         "a {question} slot and no other")
    return recorded


def write_prompts_file(model_dir: str | Path, template: str | None, skill_prompts: dict[str, str] | None) -> None:
    (Path(model_dir) / PROMPTS_FILE).write_text(
        json.dumps({"prompt_template": template, "skill_prompts": skill_prompts}, indent=2) + "\n")


# ---- the answer rule ---------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans({char: " " for char in string.punctuation})

LONG_ANSWER_WORDS = 6
"""Answers of more words than this (TOFU's sentences) are matched by ROUGE-L recall instead of containment."""
LONG_ANSWER_RECALL = 0.7
"""ROUGE-L recall of a long answer that counts as stating it. TOFU's perturbed (wrong) answers reach 0.36 on
average and 0.53 at the 90th percentile against the true answer; a near-verbatim answer reaches 0.9 to 1."""


def normalize(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace (SQuAD-style)."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return " ".join(text.split())


def contains_answer(generation: str, answer: str) -> bool:
    """Whether `generation` states `answer`: for a short answer, the normalised answer appears as whole words in
    the normalised generation; for a long one, the generation recalls at least LONG_ANSWER_RECALL of it (ROUGE-L,
    as TOFU scores answers)."""
    needle = normalize(answer)
    if len(needle.split()) > LONG_ANSWER_WORDS:
        return rouge_l_recall(generation, answer) >= LONG_ANSWER_RECALL
    return bool(needle) and f" {needle} " in f" {normalize(generation)} "


def rouge_l_recall(generation: str, answer: str) -> float:
    """ROUGE-L recall of `answer` in `generation` (stemmed), TOFU's answer score. 1.0 without scoring when the
    generation holds the answer verbatim between word boundaries (its ROUGE tokens are then a run of the
    generation's: what a model that still knows a fact mostly says)."""
    if _verbatim(answer).search(generation.lower()):
        return 1.0
    return _rouge_scorer().score(answer, generation)["rougeL"].recall


def _verbatim(answer: str) -> re.Pattern:
    """The lower-cased `answer` with no letter or digit touching it: ROUGE's tokenizer splits at every other
    character, so a match is the answer's tokens, in order, among the generation's."""
    return re.compile(rf"(?<![a-z0-9]){re.escape(answer.lower())}(?![a-z0-9])")


@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

"""Measuring a training run from outside it: optimizer steps, forget/retain accuracy along the way, trained tokens."""

from __future__ import annotations

import time

from transformers import TrainerCallback

from ..method.probe import probe_accuracy


class ProbeCallback(TrainerCallback):
    """Counts optimizer steps (on across UnSTAR's rounds) and probes forget/retain accuracy every `every` steps
    (0: never); `seconds` is the time spent probing, to leave out of the method's own."""

    def __init__(self, tokenizer, forget: list[dict], retain: list[dict], every: int):
        self.tokenizer, self.forget, self.retain, self.every = tokenizer, forget, retain, every
        self.template, self.step, self.seconds, self.points = None, 0, 0.0, []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.step += 1
        if self.every and self.step % self.every == 0:
            start = time.perf_counter()
            self.points.append({"step": self.step, **{
                f"{name}_acc": probe_accuracy(model, self.tokenizer, records, self.template)
                for name, records in (("forget", self.forget), ("retain", self.retain))}})
            self.seconds += time.perf_counter() - start


class TokenCounter:
    """Wraps a data collator and counts the non-padding tokens of every batch it makes (each sub-batch, nested ones
    too)."""

    def __init__(self, collator):
        self.collator, self.tokens = collator, 0

    def __call__(self, features):
        batch = self.collator(features)
        self.tokens += _tokens(batch)
        return batch


def _tokens(batch: dict) -> int:
    own = int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
    return own + sum(_tokens(part) for part in batch.values() if isinstance(part, dict))

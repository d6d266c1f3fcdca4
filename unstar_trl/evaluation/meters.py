"""Measuring a training run from outside it: optimizer steps and forget/retain accuracy along the way."""

from __future__ import annotations

from transformers import TrainerCallback

from ..method.probe import probe_accuracy


class ProbeCallback(TrainerCallback):
    """Counts optimizer steps (on across UnSTAR's rounds) and probes `forget_acc` and `retain_heldout_acc` (`retain`
    holds the held-out retain records) every `every` steps (0: never), timed as "curve" in the trainer's time split
    `split` (the bench's own probes, not the method's)."""

    def __init__(self, tokenizer, forget: list[dict], retain: list[dict], every: int):
        self.tokenizer, self.forget, self.retain, self.every = tokenizer, forget, retain, every
        self.template, self.split, self.step, self.points = None, None, 0, []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.step += 1
        if self.every and self.step % self.every == 0:
            with self.split("curve"):
                self.points.append({"step": self.step, **{
                    f"{name}_acc": probe_accuracy(model, self.tokenizer, records, self.template)
                    for name, records in (("forget", self.forget), ("retain_heldout", self.retain))}})

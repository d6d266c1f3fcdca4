"""One stopping rule for every method: stop at the first probe of the forget questions that reads at most a target
accuracy, instead of after a fixed schedule (the schedule, `max_steps` or the epochs, stays the budget)."""

from __future__ import annotations

from transformers import TrainerCallback

from ..probe import probe_accuracy
from .time_split import TimeSplit


class ForgetStop(TrainerCallback):
    """Probes the forget questions every `every` optimizer steps and stops training once their accuracy is at most
    `target`; `stopped_at` is the step it stopped at (None while it has not). Its probes are timed as "probe" in
    `split`."""

    def __init__(self, records: list[dict], tokenizer, prompt_template: str | None, target: float, every: int,
                 split: TimeSplit):
        self.records, self.tokenizer, self.prompt_template = records, tokenizer, prompt_template
        self.target, self.every, self.split = target, every, split
        self.stopped_at: int | None = None
        self.steps = 0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.steps += 1  # counted here: UnSTAR's rounds each restart the Trainer's own step count
        if self.steps % self.every:
            return
        with self.split("probe"):
            accuracy = probe_accuracy(model, self.tokenizer, self.records, self.prompt_template)
        if accuracy <= self.target:
            self.stopped_at = self.steps
            control.should_training_stop = True

"""One stopping rule for every method: stop at the first probe of the forget questions that reads at most a target
accuracy, instead of after a fixed schedule (the schedule, `max_steps` or the epochs, stays the budget)."""

from __future__ import annotations

from transformers import TrainerCallback

from ..probe import probe
from .time_split import TimeSplit


class ForgetStop(TrainerCallback):
    """Probes the forget questions every `every` optimizer steps and stops training once their accuracy is at most
    `target`; `stopped_at` is the step it stopped at (None while it has not). Its probes are timed as "probe" in
    `split`.

    A probe asks only the facts still known at the last one while those alone read above the target (then all of
    them do too), and asks every fact before it stops (a forgotten one may have come back): the rule of asking every
    fact every time, at a cost that follows what is left to forget (a greedy verdict can still change with the batch
    a question is padded into, so a stop may move by a probe). Probes fall on the run's optimizer steps, and the facts
    the last probe found known are part of a checkpoint (`state_dict`), so that a resumed run probes as an
    uninterrupted one would."""

    def __init__(self, records: list[dict], tokenizer, prompt_template: str | None, target: float, every: int,
                 split: TimeSplit):
        self.records, self.tokenizer, self.prompt_template = records, tokenizer, prompt_template
        self.target, self.every, self.split = target, every, split
        self.stopped_at: int | None = None
        self.still_known = records
        """The forget records the last probe found known (all of them before the first)."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every:  # the run's step: UnSTAR's rounds go on counting from the run's
            return
        with self.split("probe"):
            forgotten = self.forgotten_enough(model)
        if forgotten:
            self.stopped_at = state.global_step
            control.should_training_stop = True

    def state_dict(self) -> dict:
        """What a checkpoint keeps: the ids of the facts the last probe found known."""
        return {"still_known": [record["id"] for record in self.still_known]}

    def load_state_dict(self, saved: dict) -> None:
        """Go on from a checkpoint's `state_dict`."""
        ids = set(saved["still_known"])
        self.still_known = [record for record in self.records if record["id"] in ids]

    def forgotten_enough(self, model) -> bool:
        """Whether at most `target` of the forget facts are still answered (see the class)."""
        asked = self.still_known
        self.still_known = self.known(model, asked)
        if len(asked) < len(self.records) and self.share(self.still_known) <= self.target:
            self.still_known = self.known(model, self.records)
        return self.share(self.still_known) <= self.target

    def known(self, model, records: list[dict]) -> list[dict]:
        """The `records` the model still answers."""
        verdicts = probe(model, self.tokenizer, records, prompt_template=self.prompt_template)
        return [record for record, verdict in zip(records, verdicts) if verdict.known]

    def share(self, known: list[dict]) -> float:
        """Forget accuracy when `known` are the facts answered."""
        return len(known) / len(self.records) if self.records else 0.0


def above_target_message(forget_acc: float, target: float) -> str:
    """The one line a run that ends above its forget-accuracy `target` gives, naming the next step: a sweep of the
    learning rate for this model on this data (a recipe's rate is swept for the model it was written for)."""
    return (f"the run ended with forget accuracy {forget_acc:.2f}, above its target {target:.2f}: this recipe's "
            "learning rate may not suit this model; 'unstar sweep --config RECIPE --model_name_or_path MODEL "
            "--data_dir DATA' picks one for it on your data and writes a recipe")

"""IdK: fine-tune the forget questions onto refusals ("I don't know"), drawn from the package's own list."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from importlib import resources

from .base import UnlearningConfig, UnlearningTrainer
from .losses import nll


def refusals() -> list[str]:
    """The refusal sentences shipped at unstar_trl/resources/idontknow.txt."""
    text = resources.files("unstar_trl").joinpath("resources", "idontknow.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def drawn_refusals(record: dict, seed: int, count: int) -> list[str]:
    """The `count` refusals a forget record is trained on: drawn from `refusals()`, seeded by `seed` and its id."""
    return random.Random(f"{seed}:{record['id']}").sample(refusals(), count)


@dataclass
class IdkConfig(UnlearningConfig):
    r"""Configuration of [`IdkTrainer`]: loss = gamma * NLL(question -> refusal) + alpha * retain loss."""

    refusals_per_question: int = field(default=1, metadata={"help": "Refusals drawn (seeded) per forget record."})


class IdkTrainer(UnlearningTrainer):
    """SFT of each forget question onto refusal sentences."""

    _name = "Idk"
    config_class = IdkConfig

    def forget_pairs(self, record):
        return [self.answer_pair(record, answer)
                for answer in drawn_refusals(record, self.args.seed, self.args.refusals_per_question)]

    def forget_loss(self, model, inputs, logits):
        return self.log_metric("idk_nll", nll(logits, inputs["labels"]))

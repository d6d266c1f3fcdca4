"""Gradient ascent: minus the NLL of the forget answers."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import UnlearningConfig, UnlearningTrainer
from .losses import nll


@dataclass
class GradientAscentConfig(UnlearningConfig):
    r"""Configuration of [`GradientAscentTrainer`]: the forget term alone unless `retain_weight` is set."""

    retain_weight: float = field(default=0.0, metadata={"help": "Weight of the retain loss (alpha); 0 disables it."})


class GradientAscentTrainer(UnlearningTrainer):
    """Maximise the NLL of the true answers of the forget set."""

    _name = "GradientAscent"
    config_class = GradientAscentConfig

    def forget_loss(self, model, inputs, logits):
        return -self.log_metric("forget_nll", nll(logits, inputs["labels"]))

"""Gradient ascent with a KL term: stay close to the frozen reference on the retain set."""

from __future__ import annotations

from dataclasses import dataclass, field

from .grad_diff import GradDiffConfig, GradDiffTrainer


@dataclass
class GradAscentKLConfig(GradDiffConfig):
    r"""Configuration of [`GradAscentKLTrainer`]: loss = gamma * -NLL(forget) + alpha * KL(ref || model) on retain."""

    retain_loss_type: str = field(
        default="kl",
        metadata={"help": "Retain loss: 'kl' to the frozen reference, or 'nll'.", "choices": ["nll", "kl"]},
    )


class GradAscentKLTrainer(GradDiffTrainer):
    """Gradient ascent on the forget set, KL to the frozen reference on the retain set (needs `retain_dataset`)."""

    _name = "GradAscentKL"
    config_class = GradAscentKLConfig

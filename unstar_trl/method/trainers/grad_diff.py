"""Gradient difference: gradient ascent on the forget answers plus NLL on the retain answers."""

from __future__ import annotations

from dataclasses import dataclass, field

from .grad_ascent import GradientAscentConfig, GradientAscentTrainer


@dataclass
class GradDiffConfig(GradientAscentConfig):
    r"""Configuration of [`GradDiffTrainer`]: loss = forget_weight (gamma) * -NLL(forget) + retain_weight (alpha) *
    NLL(retain)."""

    retain_weight: float = field(default=1.0, metadata={"help": "Weight of the retain loss (alpha)."})


class GradDiffTrainer(GradientAscentTrainer):
    """Gradient ascent on the forget set, descent on the retain set (needs `retain_dataset`)."""

    _name = "GradDiff"
    config_class = GradDiffConfig

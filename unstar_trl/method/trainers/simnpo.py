"""SimNPO (Fan et al., 2024): NPO without a reference, on length-normalised log-probs, with a margin."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import UnlearningConfig, UnlearningTrainer
from .losses import mean_nll, sequence_log_probs, simnpo_loss


@dataclass
class SimNPOConfig(UnlearningConfig):
    r"""Configuration of [`SimNPOTrainer`]: loss = gamma * SimNPO(forget) + alpha * retain loss (when retain
    records are given)."""

    beta: float = field(default=2.5, metadata={"help": "Inverse temperature of the SimNPO loss."})
    delta: float = field(default=0.0, metadata={"help": "Reward margin of the SimNPO loss."})


class SimNPOTrainer(UnlearningTrainer):
    """-(2/beta) E[log sigmoid(-beta log pi(y|x) / |y| - delta)] on the forget answers; reference-free."""

    _name = "SimNPO"
    config_class = SimNPOConfig

    def forget_loss(self, model, inputs, logits):
        log_prob, count = sequence_log_probs(logits, inputs["labels"])
        self.log_metric("forget_nll", mean_nll(log_prob, count))
        return simnpo_loss(log_prob, count, self.args.beta, self.args.delta)

"""Negative Preference Optimization (Zhang et al., 2024): DPO with only a dispreferred answer."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import UnlearningConfig, UnlearningTrainer
from .collators import REFERENCE_COLUMN
from .losses import mean_nll, npo_loss, sequence_log_probs


@dataclass
class NPOConfig(UnlearningConfig):
    r"""Configuration of [`NPOTrainer`]: loss = gamma * NPO(forget) + alpha * retain loss (when retain records are
    given)."""

    beta: float = field(default=0.1, metadata={"help": "Inverse temperature of the NPO loss."})


class NPOTrainer(UnlearningTrainer):
    """-(2/beta) E[log sigmoid(-beta (log pi(y|x) - log pi_ref(y|x)))] on the forget answers' sequence log-probs;
    log pi_ref of the fixed forget rows is computed once before training (no reference model is held) where each
    process holds the whole model, on the fly from the prepared reference under DeepSpeed or FSDP."""

    _name = "NPO"
    config_class = NPOConfig
    needs_reference = True
    reference_on_forget_rows = True

    def forget_loss(self, model, inputs, logits):
        log_prob, count = sequence_log_probs(logits, inputs["labels"])
        if REFERENCE_COLUMN in inputs:  # computed once before training (reference.py)
            ref_log_prob = inputs[REFERENCE_COLUMN]
        else:
            ref_log_prob, _ = sequence_log_probs(self.reference_logits(inputs), inputs["labels"])
        self.log_metric("forget_nll", mean_nll(log_prob, count))
        return npo_loss(log_prob, ref_log_prob, self.args.beta)

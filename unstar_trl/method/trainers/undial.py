"""UNDIAL (Dong et al., 2024, "UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in Large Language
Models", NAACL 2025, arXiv:2402.10052): distil the frozen model into the trained one on the forget answers, with the
true next token's logit of the frozen model lowered by a fixed strength, so the target is the model's own
distribution with the memorised token pushed down and nothing ascended. After open-unlearning's UNDIAL
(locuslab/open-unlearning, src/trainer/unlearn/undial.py, compute_undial_loss in src/trainer/utils.py and
configs/trainer/UNDIAL.yaml: beta 10)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import UnlearningConfig, UnlearningTrainer
from .losses import nll


@dataclass
class UndialConfig(UnlearningConfig):
    r"""Configuration of [`UndialTrainer`]: loss = gamma * KL(softmax(z_ref - beta e_y) || pi) on the forget answers +
    alpha * retain loss (when retain records are given; the paper and open-unlearning's config use none, alpha 0).

    Parameters:
        beta (`float`, defaults to `10.0`): how much the frozen model's logit of the true next token is lowered
            (open-unlearning's config; its sweep: 3, 10, 30).
    """

    beta: float = field(
        default=10.0, metadata={"help": "How much the frozen model's logit of the true next token is lowered."}
    )

    def __post_init__(self):
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(f"beta must be above 0, got {self.beta}")


def adjusted_targets(ref_logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """softmax(z_ref - beta * onehot(next label)) at each position that predicts a label, (batch, length - 1,
    vocab); at masked positions the unadjusted softmax(z_ref) (they are not scored)."""
    labels = labels[:, 1:]
    logits = ref_logits[:, :-1].float().clone()
    penalty = torch.full(labels.shape, beta, dtype=logits.dtype, device=logits.device) * (labels != -100)
    logits.scatter_add_(-1, labels.clamp(min=0).unsqueeze(-1), -penalty.unsqueeze(-1))
    return torch.softmax(logits, dim=-1)


def undial_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean over sequences of the mean, over their unmasked positions, of KL(adjusted target || pi): open-unlearning's
    cross-entropy to the adjusted target less the target's entropy (the same gradient, 0 at the target), averaged
    over the answer's positions only (open-unlearning averages over every position, prompt and padding too)."""
    mask = labels[:, 1:] != -100
    target = adjusted_targets(ref_logits, labels, beta)
    log_p = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    per_token = (target * (target.clamp(min=1e-30).log() - log_p)).sum(-1) * mask
    return (per_token.sum(-1) / mask.sum(-1).clamp(min=1)).mean()


class UndialTrainer(UnlearningTrainer):
    """Self-distillation onto the frozen model's adjusted logits on the forget answers; descent only."""

    _name = "UNDIAL"
    config_class = UndialConfig
    needs_reference = True
    reference_logits_on_forget_rows = True

    def forget_loss(self, model, inputs, logits):
        self.log_metric("forget_nll", nll(logits.detach(), inputs["labels"]))
        return undial_loss(logits, self.reference_logits(inputs, "forget"), inputs["labels"], self.args.beta)

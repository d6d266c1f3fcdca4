"""Loss helpers shared by the unlearning trainers.

Every helper takes causal-LM `logits` of shape (batch, length, vocab) and `labels` of shape (batch, length) in the
usual convention: the label of position t is predicted by the logits of position t - 1, and -100 marks tokens that
do not count (prompt and padding). Losses are means over sequences, so a micro-batch loss does not depend on how
many tokens its neighbours have and gradient accumulation 1 x 4 equals 2 x 2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next-token label (zero where masked) and the mask, both (batch, length - 1)."""
    labels = labels[:, 1:]
    mask = labels != -100
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def sequence_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each sequence's unmasked labels, and how many there are: two (batch,) tensors."""
    picked, mask = token_log_probs(logits, labels)
    return picked.sum(-1), mask.sum(-1)


def mean_nll(log_prob: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Mean over sequences of each sequence's mean token negative log-likelihood, from `sequence_log_probs`."""
    return (-log_prob / count.clamp(min=1)).mean()


def nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over sequences of each sequence's mean token negative log-likelihood."""
    return mean_nll(*sequence_log_probs(logits, labels))


def npo_loss(log_prob: torch.Tensor, ref_log_prob: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO: -(2 / beta) E[log sigmoid(-beta (log pi(y|x) - log pi_ref(y|x)))] on sequence log-probabilities."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (log_prob - ref_log_prob)).mean()


def preference_loss(win_log_prob: torch.Tensor, win_ref_log_prob: torch.Tensor, lose_log_prob: torch.Tensor,
                    lose_ref_log_prob: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO, scaled as NPO: -(2 / beta) E[log sigmoid(beta ((log pi(w|x) - log pi_ref(w|x)) - (log pi(l|x) -
    log pi_ref(l|x))))] on sequence log-probabilities of a preferred answer w and a dispreferred one l."""
    margin = (win_log_prob - win_ref_log_prob) - (lose_log_prob - lose_ref_log_prob)
    return -(2.0 / beta) * F.logsigmoid(beta * margin).mean()


def flattening_loss(option_log_probs: torch.Tensor) -> torch.Tensor:
    """KL(uniform || p), averaged over rows, where p is the distribution over each row's K options that the model's
    sequence log-probabilities of the options (batch, K) give (softmax over the row): 0 when every option is as
    likely as the others, growing without bound as one option's share goes to 0."""
    log_p = torch.log_softmax(option_log_probs.float(), dim=-1)
    return (-math.log(option_log_probs.shape[-1]) - log_p.mean(-1)).mean()


def ascent_to_floor(log_prob: torch.Tensor, count: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """Gradient ascent that stops at a floor: the mean over sequences of how far each sequence's mean token
    log-probability is above its `floor` (0 once at or below it)."""
    return torch.relu(log_prob / count.clamp(min=1) - floor).mean()


def simnpo_loss(log_prob: torch.Tensor, count: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """SimNPO: -(2 / beta) E[log sigmoid(-beta log pi(y|x) / |y| - delta)], reference-free and length-normalised."""
    return -(2.0 / beta) * F.logsigmoid(-beta * log_prob / count.clamp(min=1) - delta).mean()


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over sequences of the mean, over their unmasked positions, of KL(pi_ref || pi) on the next token."""
    mask = labels[:, 1:] != -100
    log_p = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    log_q = torch.log_softmax(ref_logits[:, :-1].float(), dim=-1)
    per_token = (log_q.exp() * (log_q - log_p)).sum(-1) * mask
    return (per_token.sum(-1) / mask.sum(-1).clamp(min=1)).mean()


@torch.no_grad()
def entropy_share(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean predictive entropy at the unmasked positions as a share of its maximum, ln(vocabulary size): 1.0 means
    the output is uniform (a model that no longer predicts anything)."""
    mask = labels[:, 1:] != -100
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return (entropy * mask).sum() / mask.sum().clamp(min=1) / math.log(logits.shape[-1])

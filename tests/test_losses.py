"""Each loss against a value computed by hand from fixed logits, with prompt and padding positions masked."""

from __future__ import annotations

import math

import pytest
import torch

from unstar_trl.method.trainers.losses import (ascent_to_floor, kl_to_reference, nll, npo_loss, sequence_log_probs,
                                               simnpo_loss, token_log_probs)

# Two sequences over a vocabulary of 3. Sequence 0: prompt of 2 tokens, completion of 2. Sequence 1: prompt of 1,
# completion of 2, then one padding position. The label at t is scored by the logits at t - 1.
LOGITS = torch.tensor([
    [[0.0, 0.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 3.0], [5.0, 5.0, 5.0]],
    [[2.0, 0.0, 1.0], [0.0, 1.0, 0.0], [9.0, -9.0, 4.0], [7.0, 7.0, -7.0]],
])
LABELS = torch.tensor([[-100, -100, 1, 2], [-100, 0, 2, -100]])


def log_softmax(row: list[float], index: int) -> float:
    return row[index] - math.log(sum(math.exp(value) for value in row))


# Sequence 0: label 1 from position 1 ([1, 2, 0]), label 2 from position 2 ([0, 0, 3]).
SEQ0 = [log_softmax([1, 2, 0], 1), log_softmax([0, 0, 3], 2)]
# Sequence 1: label 0 from position 0 ([2, 0, 1]), label 2 from position 1 ([0, 1, 0]).
SEQ1 = [log_softmax([2, 0, 1], 0), log_softmax([0, 1, 0], 2)]


def test_token_and_sequence_log_probs_mask_prompt_and_padding():
    picked, mask = token_log_probs(LOGITS, LABELS)
    assert mask.tolist() == [[False, True, True], [True, True, False]]
    assert picked[0, 0] == 0 and picked[1, 2] == 0
    log_prob, count = sequence_log_probs(LOGITS, LABELS)
    assert log_prob.tolist() == pytest.approx([sum(SEQ0), sum(SEQ1)], abs=1e-6)
    assert count.tolist() == [2, 2]


def test_masked_positions_do_not_matter():
    changed = LOGITS.clone()
    changed[0, 0] = torch.tensor([-30.0, 40.0, 1.0])  # predicts a prompt token
    changed[0, 3] = torch.tensor([50.0, -1.0, 2.0])  # last position predicts nothing
    changed[1, 2] = torch.tensor([-8.0, 8.0, 0.0])  # predicts padding
    assert nll(changed, LABELS).item() == pytest.approx(nll(LOGITS, LABELS).item(), abs=1e-6)


def test_nll_is_the_mean_of_per_sequence_mean_nll():
    labels = LABELS.clone()
    labels[1, 1] = -100  # sequence 1 keeps only its second completion token: its mean is over 1, not 2
    expected = (-(SEQ0[0] + SEQ0[1]) / 2 - SEQ1[1]) / 2
    assert nll(LOGITS, labels).item() == pytest.approx(expected, abs=1e-6)


def test_ascent_to_floor_pushes_down_only_above_the_floor():
    log_prob = torch.tensor([-2.0, -9.0], requires_grad=True)  # per-token means -1 and -3
    count = torch.tensor([2, 3])
    floor = torch.tensor([-2.0, -2.0])
    loss = ascent_to_floor(log_prob, count, floor)
    assert loss.item() == pytest.approx((-1.0 - -2.0 + 0.0) / 2)  # the second sequence is already below its floor
    loss.backward()
    assert log_prob.grad.tolist() == pytest.approx([1 / 2 / 2, 0.0])  # descent lowers only the first


def test_npo_loss():
    log_prob = torch.tensor([-3.0, -10.0])
    ref_log_prob = torch.tensor([-2.0, -12.0])
    beta = 0.1

    def log_sigmoid(x):
        return -math.log(1 + math.exp(-x))

    expected = -(2 / beta) * (log_sigmoid(-beta * (-3 + 2)) + log_sigmoid(-beta * (-10 + 12))) / 2
    assert npo_loss(log_prob, ref_log_prob, beta).item() == pytest.approx(expected, abs=1e-6)
    # at the reference, NPO is (2 / beta) log 2 and its gradient is half that of gradient ascent (times 1)
    same = torch.tensor([-4.0], requires_grad=True)
    loss = npo_loss(same, same.detach(), beta)
    loss.backward()
    assert loss.item() == pytest.approx(2 / beta * math.log(2), abs=1e-6)
    assert same.grad.item() == pytest.approx(1.0, abs=1e-6)


def test_npo_on_logits_end_to_end():
    log_prob, _ = sequence_log_probs(LOGITS, LABELS)
    ref_log_prob, _ = sequence_log_probs(torch.zeros_like(LOGITS), LABELS)  # uniform: 2 tokens of log(1/3)
    expected = -(2 / 0.1) * sum(
        -math.log(1 + math.exp(0.1 * (sum(seq) - 2 * math.log(1 / 3)))) for seq in (SEQ0, SEQ1)) / 2
    assert npo_loss(log_prob, ref_log_prob, 0.1).item() == pytest.approx(expected, abs=1e-5)


def test_simnpo_loss_is_length_normalised():
    log_prob, count = sequence_log_probs(LOGITS, LABELS)
    beta, delta = 2.5, 0.5
    expected = -(2 / beta) * sum(
        -math.log(1 + math.exp(beta * sum(seq) / 2 + delta)) for seq in (SEQ0, SEQ1)) / 2
    assert simnpo_loss(log_prob, count, beta, delta).item() == pytest.approx(expected, abs=1e-6)


def test_kl_to_reference():
    ref_logits = torch.zeros_like(LOGITS)  # uniform reference

    def kl_uniform_to(row):
        q = 1 / 3
        return sum(q * (math.log(q) - log_softmax(row, v)) for v in range(3))

    seq0 = (kl_uniform_to([1, 2, 0]) + kl_uniform_to([0, 0, 3])) / 2
    seq1 = (kl_uniform_to([2, 0, 1]) + kl_uniform_to([0, 1, 0])) / 2
    assert kl_to_reference(LOGITS, ref_logits, LABELS).item() == pytest.approx((seq0 + seq1) / 2, abs=1e-6)
    assert kl_to_reference(LOGITS, LOGITS, LABELS).item() == pytest.approx(0.0, abs=1e-6)

"""The length-fair score of an answer offered as one of several choices, shared by every choice probe (multiple
choice, TOFU's truth ratio, the planted share, membership inference) in the lm-eval tasks and so in the bench, which
reads those tasks.

The score is the answer's log-likelihood per UTF-8 byte of its text, as lm-eval's `acc_bytes` normalises (its
`acc_norm` divides by characters: the same for ASCII). Summed log-likelihoods favour short answers; dividing by words
(believing one word is one token) still punishes an answer whose words are several tokens each; per byte needs no
tokenizer (lm-eval's `process_results` never sees one), so a model in memory, a folder and a plain `lm_eval` run agree.
TOFU divides by tokens instead; per byte and per token order the choices alike when their tokens hold about as many
bytes each.
"""

from __future__ import annotations


def answer_score(loglikelihood: float, answer: str) -> float:
    """`loglikelihood` of `answer` per UTF-8 byte of it (at least one)."""
    return loglikelihood / max(1, len(answer.encode("utf-8")))

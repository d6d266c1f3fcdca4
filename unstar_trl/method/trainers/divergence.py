"""The divergence guard: stop a run whose loss goes bad before it takes another step, keeping no copy of the
weights."""

from __future__ import annotations

import math


class DivergenceError(RuntimeError):
    """The weights after optimizer step `step` gave a bad loss; the run stopped before updating them, so the model
    holds them (the first bad ones: the guard keeps no copy of earlier weights, which would double the memory of a
    full fine-tuning)."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"training diverged after step {step} ({reason}); stopped before the next update, the model "
                         f"holds the weights of step {step}")
        self.step, self.reason = step, reason


def divergence(loss: float, metrics: dict[str, float], max_forget_nll: float | None,
               max_entropy_share: float | None) -> str | None:
    """Why a step whose loss is `loss` and whose logged terms are `metrics` has diverged, or None: a term that is
    not finite, a forget NLL above `max_forget_nll`, or an output collapsed to uniform (`entropy_share` at or above
    `max_entropy_share`)."""
    values = {"loss": loss, **metrics}
    bad = [name for name, value in values.items() if not math.isfinite(value)]
    if bad:
        return f"{bad[0]} is {values[bad[0]]}"
    forget_nll = metrics.get("forget_nll")
    if max_forget_nll is not None and forget_nll is not None and forget_nll > max_forget_nll:
        return f"forget_nll {forget_nll:.1f} exceeds max_forget_nll {max_forget_nll}"
    share = metrics.get("entropy_share")
    if max_entropy_share is not None and share is not None and share >= max_entropy_share:
        return (f"the output collapsed to uniform (entropy {share:.0%} of its maximum, max_entropy_share "
                f"{max_entropy_share})")
    return None

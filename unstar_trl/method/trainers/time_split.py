"""Where a run's time goes: seconds per phase (probe, generate, filter, fit, other), each phase counting only its own
time, so that the phases of a run add up to its wall time."""

from __future__ import annotations

import contextlib
import time

PHASES = ("probe", "generate", "filter", "fit", "other")
"""What a run spends its time on: probing what the model still answers, writing anti-samples (and follow-ups),
filtering them (their questions probed too), fitting (optimizer steps), and the rest (bookkeeping)."""


class TimeSplit:
    """Seconds per phase. `with split("fit"): ...` adds the block's wall time to "fit", less the time of phases
    entered inside it (a probe of the forget set between optimizer steps is probe time, not fit time)."""

    def __init__(self):
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self._inner: list[float] = []  # per open block: the time spent in blocks nested in it

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            elapsed, inner = time.perf_counter() - start, self._inner.pop()
            self.seconds[phase] = self.seconds.get(phase, 0.0) + elapsed - inner
            if self._inner:
                self._inner[-1] += elapsed

    def mark(self) -> tuple[float, dict[str, float]]:
        """Now and the seconds so far, for `since`."""
        return time.perf_counter(), dict(self.seconds)

    def since(self, mark: tuple[float, dict[str, float]]) -> dict[str, float]:
        """Seconds per phase since `mark`, rounded to milliseconds; "other" is the wall time in no named phase (call
        it with no phase open but the outermost)."""
        start, earlier = mark
        spent = {phase: seconds - earlier.get(phase, 0.0) for phase, seconds in self.seconds.items()
                 if phase != "other"}
        spent["other"] = time.perf_counter() - start - sum(spent.values())
        return {phase: round(seconds, 3) for phase, seconds in spent.items()}

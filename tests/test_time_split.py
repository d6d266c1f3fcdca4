"""TimeSplit on a fake clock: each phase counts only its own time, and a run's phases add up to its wall time."""

from __future__ import annotations

import types

import pytest

from unstar_trl.method.trainers import time_split
from unstar_trl.method.trainers.time_split import PHASES, TimeSplit


@pytest.fixture()
def clock(monkeypatch):
    """A clock that moves only when told: `clock.now += seconds`."""
    fake = types.SimpleNamespace(now=100.0)
    monkeypatch.setattr(time_split, "time", types.SimpleNamespace(perf_counter=lambda: fake.now))
    return fake


def test_nested_phases_count_only_their_own_time(clock):
    split = TimeSplit()
    with split("other"):
        clock.now += 1
        with split("fit"):
            clock.now += 10
            with split("probe"):  # a probe between optimizer steps
                clock.now += 3
            clock.now += 2
        with split("generate"):
            clock.now += 4
        clock.now += 0.5
    assert split.seconds == {"probe": 3, "generate": 4, "filter": 0, "fit": 12, "other": 1.5}
    assert sum(split.seconds.values()) == 20.5


def test_a_failing_block_still_counts(clock):
    split = TimeSplit()
    with pytest.raises(RuntimeError), split("fit"):
        clock.now += 2
        raise RuntimeError("diverged")
    assert split.seconds["fit"] == 2


def test_since_a_mark_gives_the_rounds_share_with_the_rest_as_other(clock):
    split = TimeSplit()
    with split("other"):
        with split("fit"):
            clock.now += 5  # an earlier round
        mark = split.mark()
        clock.now += 1
        with split("probe"):
            clock.now += 2
        with split("fit"):
            clock.now += 7
        spent = split.since(mark)
    assert set(spent) == set(PHASES)
    assert spent == {"probe": 2, "generate": 0, "filter": 0, "fit": 7, "other": 1}

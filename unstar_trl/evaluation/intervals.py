"""95% intervals for the bench's figures, and how many decimals a figure with such an interval deserves.

A figure that is a mean over facts (an accuracy, a share, a truth ratio) gets a bootstrap interval over the facts,
each fact carrying its mean over the seeds: which facts a run keeps or loses is what changes from one seed, one
knowledge model or one machine to the next. A figure of a whole run (steps, seconds, an AUC, a p-value) gets a
Student t interval over the seeds.

Over several worlds (each its own knowledge model, the largest source of variation) the intervals are hierarchical:
a per-fact figure resamples the worlds, then the facts within each world drawn (each fact still carrying its mean
over that world's seeds); a whole-run figure gets a Student t interval over the worlds, each world carrying its mean
over its seeds. One world gives the one-world intervals above.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000


def fact_interval(per_seed: list[dict[str, float]], seed: int = 0) -> list[float] | None:
    """Bootstrap interval of the mean over facts of each fact's mean over seeds; `per_seed` maps fact id -> value
    for each seed (the facts present in every seed count). None without facts."""
    means = _fact_means(per_seed)
    if len(means) == 0:
        return None
    if np.all(means == means[0]):
        return [float(means[0]), float(means[0])]
    result = stats.bootstrap((means,), np.mean, confidence_level=CONFIDENCE, n_resamples=RESAMPLES,
                             method="percentile", random_state=np.random.default_rng(seed))
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def world_interval(per_world: list[list[dict[str, float]]], seed: int = 0) -> list[float] | None:
    """Hierarchical bootstrap interval of a per-fact figure over worlds: `per_world` holds, for each world, what
    `fact_interval` takes (fact id -> value for each seed). Each resample draws as many worlds as there are, with
    replacement, and within each drawn world its facts, with replacement; the statistic is the mean over the drawn
    worlds of their mean over the drawn facts (the figure is the mean over worlds of each world's mean over facts).
    One world: `fact_interval`. None where a world has no facts."""
    if len(per_world) == 1:
        return fact_interval(per_world[0], seed)
    worlds = [_fact_means(per_seed) for per_seed in per_world]
    if not all(len(means) for means in worlds):
        return None
    rng = np.random.default_rng(seed)
    drawn = np.zeros(RESAMPLES)
    for _ in worlds:  # one drawn world per slot, its facts drawn afresh in every slot
        which = rng.integers(len(worlds), size=RESAMPLES)
        fact_means = np.stack([means[rng.integers(len(means), size=(RESAMPLES, len(means)))].mean(axis=1)
                               for means in worlds], axis=1)
        drawn += fact_means[np.arange(RESAMPLES), which]
    drawn /= len(worlds)
    low, high = np.percentile(drawn, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    return [float(low), float(high)]


def _fact_means(per_seed: list[dict[str, float]]) -> np.ndarray:
    """Each fact's mean over the seeds (the facts present in every seed; no NaN)."""
    shared = set.intersection(*(set(values) for values in per_seed)) if per_seed else set()
    means = np.array([np.mean([values[fact] for values in per_seed]) for fact in sorted(shared)], dtype=float)
    return means[~np.isnan(means)]


def seed_interval(values: list[float | None]) -> list[float] | None:
    """Student t interval of the mean of one value per seed; a single value (or equal values) is its own interval.
    None when a value is missing."""
    if not values or any(value is None or math.isnan(value) for value in values):
        return None
    mean = float(np.mean(values))
    if len(values) == 1 or np.all(np.array(values) == values[0]):
        return [mean, mean]
    low, high = stats.t.interval(CONFIDENCE, len(values) - 1, loc=mean, scale=stats.sem(values))
    return [float(low), float(high)]


def decimals(low: float, high: float, resolution: float = 0.01) -> int:
    """Decimals that an interval [low, high] supports: the first significant digit of its half-width (at most 3); a
    zero-width interval keeps those of `resolution` (the smallest step the figure can take)."""
    half = (high - low) / 2
    step = half if half > 0 else resolution
    return int(min(3, max(0, -math.floor(math.log10(step))))) if step > 0 else 0


def shown(mean: float | None, interval: list[float] | None, resolution: float = 0.01) -> str:
    """`mean ± half-width` with the decimals the interval supports ("–" for no value)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if interval is None:
        return f"{mean:.{decimals(mean, mean, resolution)}f}"
    places = decimals(*interval, resolution=resolution)
    half = (interval[1] - interval[0]) / 2
    return f"{mean:.{places}f} ± {half:.{places}f}" if half > 0 else f"{mean:.{places}f}"

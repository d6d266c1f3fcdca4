"""95% intervals for the bench's figures, and how many decimals a figure with such an interval deserves.

A figure that is a mean over facts (an accuracy, a share, a truth ratio) gets a bootstrap interval over the facts,
each fact carrying its mean over the seeds: which facts a run keeps or loses is what changes from one seed, one
knowledge model or one machine to the next. A figure of a whole run (steps, seconds, an AUC, a p-value) gets a
Student t interval over the seeds.

Over several worlds (each its own knowledge model, the largest source of variation) the intervals are hierarchical:
a per-fact figure resamples the worlds, then the facts within each world drawn (each fact still carrying its mean
over that world's seeds); a whole-run figure gets a Student t interval over the worlds, each world carrying its mean
over its seeds. One world gives the one-world intervals above.

Those are intervals of the mean over *these* worlds. Another bench, over as many other worlds (another machine's
knowledge models are other worlds too), lands inside the wider *rerun* interval (`rerun_interval`): a Student t
prediction interval for the mean of a second sample of worlds, mean ± t(n-1) s sqrt(2/n), where s^2 is the worlds'
variance, never below what sampling each world's own facts (or seeds) alone gives its mean. It needs two worlds.
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


def rerun_interval(world_means: list[float | None], within: list[float] = ()) -> list[float] | None:
    """95% prediction interval for the mean of a rerun over as many new worlds as `world_means` has: mean ± t(n-1)
    s sqrt(1/n + 1/n), s^2 the variance of the world means, floored by the mean of `within` (each world's sampling
    variance of its own mean: its facts' or seeds' variance over their count). None for one world or a missing value."""
    if len(world_means) < 2 or any(value is None or math.isnan(value) for value in world_means):
        return None
    count, mean = len(world_means), float(np.mean(world_means))
    variance = max(float(np.var(world_means, ddof=1)), float(np.mean(within)) if len(within) else 0.0)
    half = float(stats.t.ppf((1 + CONFIDENCE) / 2, count - 1)) * math.sqrt(variance * 2 / count)
    return [mean - half, mean + half]


def fact_mean_variance(per_seed: list[dict[str, float]]) -> float:
    """The sampling variance of a world's mean over facts (`per_seed` as `fact_interval` takes)."""
    return seed_mean_variance(list(_fact_means(per_seed)))


def seed_mean_variance(values: list[float | None]) -> float:
    """The sampling variance of a mean of `values` (one per seed, or per fact): their variance over their count; 0
    with fewer than two values or a missing one."""
    if len(values) < 2 or any(value is None or math.isnan(value) for value in values):
        return 0.0
    return float(np.var(values, ddof=1) / len(values))


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

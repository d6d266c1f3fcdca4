"""The bench's report: results.md (five tables: forgetting and keeping, removal or hiding, below the answer, cost,
where the seconds go) and its plots."""

from __future__ import annotations

import io
import math
from pathlib import Path

from ..io import write_bytes_atomic
from .intervals import shown

TABLES = {
    "Forgetting and keeping": [("forget ↓", "forget_acc"), ("paraphrase ↓", "paraphrase_acc"),
                               ("held-out retain ↑", "retain_heldout_acc"), ("neighbor ↑", "neighbor_acc"),
                               ("targeted ↓", "targeted_acc"), ("held-out sibling ↑", "sibling_heldout_acc")],
    "Removal or hiding": [("MCQ (chance)", "mcq_acc"), ("MCQ entropy", "mcq_entropy"),
                          ("planted share", "planted_share"), ("a distractor's share", "distractor_share"),
                          ("truth ratio", "truth_ratio"),
                          ("forget quality", "forget_quality"), ("MIA AUC", "mia_auc"), ("PrivLeak", "privleak"),
                          ("relearn gain ↓", "relearn_gain"), ("4-bit forget ↓", "quant4_forget_acc")],
    "Below the answer": [("logit lens", "logit_lens_acc"), ("extraction strength", "extraction_strength"),
                         ("spillover ↓", "spillover"), ("confident wrong, change ↓", "confident_wrong_change")],
    "Cost to the stop": [("steps", "steps"), ("trained tokens", "trained_tokens"), ("seconds", "seconds"),
                         ("peak RSS MB", "peak_rss_mb")],
    "Where the seconds go": [("probe", "probe_seconds"), ("generate", "generate_seconds"),
                             ("filter", "filter_seconds"), ("fit", "fit_seconds"), ("other", "other_seconds")],
}


def markdown_report(results: dict) -> str:
    """results.json as markdown tables (one row per model: the knowledge model, the retain model, then each
    method), mean ± 95% half-width, with the decimals the interval supports."""
    rows = [("target (knowledge model)", results["target"]), ("retain model (never saw the forget facts)",
                                                               results["retain_model"]), *results["methods"].items()]
    settings = results["settings"]
    parts = [f"# unstar bench\n\n{_worlds(results['worlds'])}; unlearning seeds "
             f"{', '.join(map(str, results['seeds']))}; mean ± {_plus_minus(results)}; every run stops at the first probe (every {settings['probe_every']} steps) of its forget questions that "
             f"reads at most {settings['target']}, or after {settings['step_budget']} steps; batch size "
             f"{settings['batch_size']}. ↓ lower is better, ↑ higher is better; the others read against the retain "
             "model's row."]
    for title, columns in TABLES.items():
        lines = ["| model | " + " | ".join(name for name, _ in columns) + " |", "|---|" + "---:|" * len(columns)]
        for name, entry in rows:
            note = " (diverged)" if any(seed.get("diverged") for seed in entry.get("per_seed", [])) else ""
            lines.append(f"| {name}{note} | " + " | ".join(_cell(entry, key) for _, key in columns) + " |")
        parts.append(f"## {title}\n\n" + "\n".join(lines))
    parts.append("## Reading the columns\n\n" + "\n".join(f"- {key}: {text}" for key, text in
                                                           results["notes"].items()))
    return "\n\n".join(parts) + "\n"


def _plus_minus(results: dict) -> str:
    """What the tables' ± is: over several worlds the rerun interval's half-width, else the 95% interval's."""
    if len(results["worlds"]) > 1:
        return ("the 95% rerun interval's half-width (rerun95 below: where another bench over as many other worlds "
                "lands; results.json has ci95, the interval of this mean, too)")
    return "95% half-width (ci95 below)"


def shown_interval(entry: dict, key: str) -> list[float] | None:
    """The interval a table or plot shows for `key`: the rerun interval where the row has one, else ci95."""
    return (entry.get("rerun95") or entry.get("ci95", {})).get(key)


def _worlds(worlds: list[dict]) -> str:
    """Which worlds the figures cover: their seeds and folders."""
    if len(worlds) == 1:
        return f"World: `{worlds[0]['folder']}` (seed {worlds[0]['seed']})"
    return (f"{len(worlds)} worlds, each with its own knowledge model and retain model (seeds "
            f"{', '.join(str(world['seed']) for world in worlds)}; means over the worlds)")


def _cell(entry: dict, key: str) -> str:
    value, interval = entry.get(key), shown_interval(entry, key)
    if value is None:
        return "–"
    if key in ("steps", "trained_tokens", "peak_rss_mb"):
        return f"{value:,.0f}" + (f" ± {(interval[1] - interval[0]) / 2:,.0f}" if interval and
                                  interval[1] > interval[0] else "")
    text = shown(value, interval, resolution=0.1 if key.endswith("seconds") else 0.01)
    if key == "mcq_acc" and entry.get("mcq_chance") is not None:
        text += f" ({entry['mcq_chance']:.2f})"
    return text


# ---- plots ---------------------------------------------------------------------------------------------------------

STYLES = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("P", "--"), ("X", "-."), ("*", ":")]
"""Marker and line style per method, so that lines on top of each other stay visible."""


def plot_over_steps(curves: dict[str, list[dict]], path: Path) -> None:
    """Forget and retain accuracy of each method (first seed) against optimizer steps."""
    figure, axes = _pyplot().subplots(1, 2, figsize=(12, 4.2), sharey=True, layout="constrained")
    for index, (method, points) in enumerate(curves.items()):
        marker, line = STYLES[index % len(STYLES)]
        offset = (index - len(curves) / 2) * 0.004  # lines that coincide stay visible side by side
        for axis, key in zip(axes, ("forget_acc", "retain_heldout_acc")):
            axis.plot([p["step"] for p in points], [p[key] + offset for p in points], marker=marker, linestyle=line,
                      markersize=4, alpha=0.85, label=method)
    for axis, title in zip(axes, ("forget accuracy (lower is better)", "held-out retain accuracy (higher is better)")):
        axis.set(title=title, xlabel="optimizer step", ylim=(-0.05, 1.05))
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("probe accuracy")
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside right center")
    _save(figure, path)


def plot_methods(results: dict, path: Path) -> None:
    """Bars of forget, paraphrase, retain, neighbour, sibling and relearn accuracy per model, with 95% intervals and
    every value written on its bar (a 0 too)."""
    import numpy as np

    rows = {"target": results["target"], "retain model": results["retain_model"], **results["methods"]}
    keys = ("forget_acc", "paraphrase_acc", "retain_heldout_acc", "neighbor_acc", "sibling_heldout_acc", "relearn_acc")
    figure, axis = _pyplot().subplots(figsize=(max(8, 1.9 * len(rows) + 2), 4.6), layout="constrained")
    width, places = 0.8 / len(keys), np.arange(len(rows))
    for index, key in enumerate(keys):
        values = [entry.get(key) for entry in rows.values()]
        heights = [value or 0.0 for value in values]
        errors = np.array([_error(entry, key) for entry in rows.values()]).T
        bars = axis.bar(places + (index - (len(keys) - 1) / 2) * width, heights, width, yerr=errors, capsize=2,
                        label=key.removesuffix("_acc"))
        axis.bar_label(bars, labels=["–" if value is None else f"{value:.2f}" for value in values], fontsize=6,
                       rotation=90, padding=2)
    axis.set(xticks=places, xticklabels=list(rows), ylabel="probe accuracy", ylim=(0, 1.25),
             title="forget, paraphrase and relearn: lower is better; retain, neighbor and sibling: higher")
    figure.legend(loc="outside right center", fontsize="small")
    axis.grid(axis="y", alpha=0.3)
    _save(figure, path)


def plot_forget_vs_kept(results: dict, path: Path) -> None:
    """The figure unlearning papers compare methods with: what is forgotten against what is kept, one point per
    method and seed, the retain model (the goal) as a star."""
    figure, axes = _pyplot().subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    reference = results["retain_model"]
    near = "neighbor_acc" if reference.get("neighbor_acc") is not None else "sibling_heldout_acc"  # TOFU: none
    panels = [("forget_quality", near, "forget quality (KS p-value, higher: like the retain model)",
               f"held-out {near.split('_')[0].replace('neighbor', 'neighbour')} accuracy"),
              ("forget_acc", "retain_heldout_acc", "forget accuracy (lower is better)", "held-out retain accuracy")]
    for axis, (x, y, x_label, y_label) in zip(axes, panels):
        floor = 1e-30 if x == "forget_quality" else -math.inf  # a p-value that underflowed to 0, on a log axis
        for index, (method, entry) in enumerate(results["methods"].items()):
            points = [(seed.get(x), seed.get(y)) for seed in entry["per_seed"]]
            points = [(max(a, floor), b) for a, b in points if a is not None and b is not None]
            axis.scatter([a for a, _ in points], [b for _, b in points], marker=STYLES[index % len(STYLES)][0],
                         alpha=0.8, label=method)
        for name, entry, style in (("retain model", reference, dict(marker="*", s=250, color="gold")),
                                   ("knowledge model", results["target"], dict(marker="X", s=90, color="grey"))):
            if entry.get(x) is not None and entry.get(y) is not None:
                axis.scatter([max(entry[x], floor)], [entry[y]], edgecolor="black", zorder=5, label=name, **style)
        if x == "forget_quality":
            axis.set_xscale("log")
        else:
            axis.set_xlim(-0.03, 1.03)
        axis.set(xlabel=x_label, ylabel=y_label, ylim=(-0.03, 1.03))
        axis.grid(alpha=0.3)
    figure.legend(*axes[1].get_legend_handles_labels(), loc="outside right center")
    _save(figure, path)


def _error(entry: dict, key: str) -> tuple[float, float]:
    """(below, above) the mean: the bar's 95% interval, `shown_interval` (none for a missing value)."""
    value, interval = entry.get(key), shown_interval(entry, key)
    if value is None or interval is None or any(math.isnan(bound) for bound in interval):
        return 0.0, 0.0
    return max(value - interval[0], 0.0), max(interval[1] - value, 0.0)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    """Write the figure as a PNG, atomically."""
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    finally:
        _pyplot().close(figure)
    write_bytes_atomic(path, buffer.getvalue())

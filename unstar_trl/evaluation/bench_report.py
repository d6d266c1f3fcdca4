"""The bench's report: results.md (one row per method) and its plots."""

from __future__ import annotations

import io
from pathlib import Path

from ..io import write_bytes_atomic

LOWER_IS_BETTER = ("forget_acc", "paraphrase_acc", "targeted_acc", "mcq_probe_acc", "relearn_acc")


def markdown_table(results: dict) -> str:
    """results.json as a table: one row per method, the target first."""
    columns = [("forget", "forget_acc"), ("paraphrase", "paraphrase_acc"), ("retain", "retain_acc"),
               ("neighbor", "neighbor_acc"), ("targeted", "targeted_acc"), ("sibling", "sibling_acc"),
               ("MCQ probe", "mcq_probe_acc"), ("MIA AUC", "mia_auc"), ("relearn", "relearn_acc"),
               ("steps", "steps"), ("seconds", "seconds"), ("tokens/s", "tokens_per_second"),
               ("peak RSS MB", "peak_rss_mb")]
    arrow = {key: " ↓" if key in LOWER_IS_BETTER else " ↑" if key.endswith("_acc") else "" for _, key in columns}
    arrow["mia_auc"] = " →0.5"
    lines = ["| method | " + " | ".join(name + arrow[key] for name, key in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    rows = [("target (knowledge model)", results["target"]), *results["methods"].items()]
    for name, entry in rows:
        note = " (diverged)" if entry.get("diverged") else ""
        lines.append(f"| {name}{note} | " + " | ".join(_cell(key, entry.get(key)) for _, key in columns) + " |")
    notes = "\n".join(f"- {key}: {text}" for key, text in results["notes"].items())
    settings = ", ".join(f"{key}={value}" for key, value in results["settings"].items() if value is not None)
    return (f"# unstar bench\n\nWorld: `{results['world']}`; {settings}. ↓ lower is better (forgetting), ↑ higher "
            f"is better (keeping).\n\n" + "\n".join(lines) + f"\n\n{notes}\n")


def _cell(key: str, value) -> str:
    if value is None:
        return "–"
    return f"{value:,.1f}" if key in ("seconds", "tokens_per_second", "peak_rss_mb") else \
        str(value) if key == "steps" else f"{value:.3f}"


def plot_over_steps(curves: dict[str, list[dict]], path: Path) -> None:
    """Forget and retain accuracy of each method against optimizer steps."""
    figure, axes = _pyplot().subplots(1, 2, figsize=(11, 4), sharey=True)
    for method, points in curves.items():
        for axis, key in zip(axes, ("forget_acc", "retain_acc")):
            axis.plot([p["step"] for p in points], [p[key] for p in points], marker="o", markersize=3, label=method)
    for axis, title in zip(axes, ("forget accuracy (lower is better)", "retain accuracy (higher is better)")):
        axis.set(title=title, xlabel="optimizer step", ylim=(-0.03, 1.03))
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("probe accuracy")
    axes[1].legend(loc="lower left")
    _save(figure, path)


def plot_methods(results: dict, path: Path) -> None:
    """Bars of forget/paraphrase/retain/relearn accuracy per method, the target first."""
    import numpy as np

    rows = {"target": results["target"], **results["methods"]}
    keys = ("forget_acc", "paraphrase_acc", "retain_acc", "relearn_acc")
    figure, axis = _pyplot().subplots(figsize=(max(6, 1.6 * len(rows) + 2), 4))
    width, places = 0.8 / len(keys), np.arange(len(rows))
    for index, key in enumerate(keys):
        values = [entry.get(key) or 0.0 for entry in rows.values()]
        axis.bar(places + (index - (len(keys) - 1) / 2) * width, values, width, label=key.removesuffix("_acc"))
    axis.set(xticks=places, xticklabels=list(rows), ylabel="probe accuracy", ylim=(0, 1.05),
             title="forget / paraphrase (lower is better), retain (higher), relearn (lower)")
    axis.legend(ncols=len(keys), fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.1))
    axis.grid(axis="y", alpha=0.3)
    _save(figure, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    """Write the figure as a PNG, atomically."""
    buffer = io.BytesIO()
    try:
        figure.tight_layout()
        figure.savefig(buffer, format="png", dpi=120)
    finally:
        _pyplot().close(figure)
    write_bytes_atomic(path, buffer.getvalue())

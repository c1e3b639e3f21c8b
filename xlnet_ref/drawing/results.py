"""Drawing seeded results (``results/<name>.json``): mean with error bars, every seed as a dot."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def draw_seeded_bars(
    result: dict,
    keys: list[str],
    *,
    labels: list[str] | None = None,
    ax=None,
    ylabel: str = "",
    title: str | None = None,
    baselines: dict[str, float] | None = None,
):
    """One bar per key: the mean over seeds, an error bar of ± one standard deviation, and each seed as a
    dot; ``baselines`` adds labelled horizontal lines (e.g. a count model's loss). Returns the Axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(1.6 + 1.3 * len(keys), 3.6), layout="constrained")
    labels = labels or keys
    x = np.arange(len(keys))
    means = [result["summary"][k]["mean"] for k in keys]
    stds = [result["summary"][k]["std"] for k in keys]
    ax.bar(
        x,
        means,
        yerr=stds,
        capsize=6,
        color="#90cdf4",
        edgecolor="#2b6cb0",
        label=f"mean ± std, {len(result['seeds'])} seeds",
    )
    for i, k in enumerate(keys):
        values = [row[k] for row in result["per_seed"]]
        ax.plot(np.full(len(values), i) + np.linspace(-0.12, 0.12, len(values)), values, "o", color="#1a365d", ms=4)
    for n, (name, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, ls="--", lw=1.2, color=f"C{n + 1}", label=name)
    ax.set_xticks(x, labels)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def draw_seeded_curve(
    result: dict,
    xs: list[float],
    keys: list[str],
    *,
    label: str,
    ax=None,
    xlabel: str = "",
    ylabel: str = "",
    title: str | None = None,
    color: str | None = None,
):
    """A curve of means over ``xs`` (one key per x) with ± one standard deviation as error bars."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.6), layout="constrained")
    means = [result["summary"][k]["mean"] for k in keys]
    stds = [result["summary"][k]["std"] for k in keys]
    ax.errorbar(
        xs,
        means,
        yerr=stds,
        marker="o",
        capsize=5,
        label=f"{label} (mean ± std, {len(result['seeds'])} seeds)",
        color=color,
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return ax

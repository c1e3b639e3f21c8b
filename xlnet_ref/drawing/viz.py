"""Drawing helpers shared by the notebooks: masks, score and attention matrices, the sinusoid table,
rel_shift step by step, per-stage errors.

Every helper takes torch tensors (or arrays), draws on the Axes it is given (or on a new figure),
and returns that Axes (or the Figure, for the helpers that draw several panels). Nothing here
computes model numbers: the notebooks compute them with xlnet_ref and hand them over.

Conventions, the same as everywhere in xlnet_ref: a mask is True where a query may NOT attend a key;
matrices are drawn with the query i down the rows and the key j across the columns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# visible = a strong colour, hidden = pale: the eye follows what each query can see
MASK_CMAP = ListedColormap(["#2b6cb0", "#edf2f7"])  # 0 = may attend, 1 = masked


def to_numpy(x) -> np.ndarray:
    """A tensor (any device, dtype, requires_grad) or array-like -> a float64 (or bool) numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return x.numpy() if x.dtype == torch.bool else x.double().numpy()
    return np.asarray(x)


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _ticks(ax: Axes, xticklabels, yticklabels) -> None:
    """Integer ticks (rows and columns are indices), or the given labels, one per row / column."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if xticklabels is not None:
        labels = [str(t) for t in xticklabels]
        crowded = max((len(t) for t in labels), default=0) * len(labels) > 30
        rotation = 90 if crowded else 0  # many long labels: vertical
        ax.set_xticks(range(len(labels)), labels, fontsize=8, rotation=rotation)
    if yticklabels is not None:
        ax.set_yticks(range(len(yticklabels)), [str(t) for t in yticklabels], fontsize=8)


def _check_2d(name: str, m: np.ndarray) -> None:
    if m.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D matrix [i, j], got shape {list(m.shape)}")


def draw_matrix(
    m,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    xlabel: str = "key j",
    ylabel: str = "query i",
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    centered: bool = False,
    annotate: bool | str = False,
    xticklabels: Sequence | None = None,
    yticklabels: Sequence | None = None,
    colorbar: bool = True,
    mlen: int = 0,
    masked=None,
    figsize: tuple[float, float] = (4.2, 3.6),
) -> Axes:
    """A score, attention or any [i, j] matrix as a heat map.

    centered: a diverging colour map symmetric around 0 (for scores that take both signs).
    annotate: write each value in its cell; a format string such as "{:.0f}" or True for "{:.2f}".
    mlen > 0 draws a line between the memory columns and the current segment's columns.
    masked: an [i, j] mask (True = the query may NOT attend the key). Those cells are drawn apart, grey
    and hatched, so that a masked cell (probability exactly 0 by construction) is not confused with a
    visible key that gets a near-zero probability; the colour scale covers the visible cells only.
    """
    m = to_numpy(m).astype(float)
    _check_2d("m", m)
    hidden = None
    if masked is not None:
        hidden = to_numpy(masked).astype(bool)
        if hidden.shape != m.shape:
            raise ValueError(f"masked: expected the matrix's shape {list(m.shape)}, got {list(hidden.shape)}")
        m = np.where(hidden, np.nan, m)
    ax = _axes(ax, figsize)
    if centered:
        lim = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 1.0
        lim = lim or 1.0
        cmap, vmin, vmax = "RdBu_r", -lim, lim
    colours = plt.get_cmap(cmap).with_extremes(bad="#e2e8f0")  # masked (or NaN) cells: pale grey, hatched below
    image = ax.imshow(m, cmap=colours, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    if hidden is not None:
        for i, j in zip(*np.nonzero(hidden)):
            ax.add_patch(
                plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#a0aec0", linewidth=0)
            )
    if annotate:
        fmt = annotate if isinstance(annotate, str) else "{:.2f}"
        lo, hi = image.get_clim()
        fontsize = 9 if max(m.shape) <= 10 else 7
        for (i, j), value in np.ndenumerate(m):
            if np.isnan(value):
                continue
            dark_cell = (value - lo) / ((hi - lo) or 1.0) < 0.5 if not centered else abs(value) > 0.6 * hi
            ax.text(
                j,
                i,
                fmt.format(value + 0.0),
                ha="center",
                va="center",
                fontsize=fontsize,  # + 0.0: no "-0"
                color="white" if dark_cell else "black",
            )
    if mlen:
        ax.axvline(mlen - 0.5, color="black", linewidth=1.5)
    _ticks(ax, xticklabels, yticklabels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, shrink=0.85)
    return ax


def draw_mask(
    mask,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    mlen: int = 0,
    xlabel: str = "key j",
    ylabel: str = "query i",
    xticklabels: Sequence | None = None,
    yticklabels: Sequence | None = None,
    figsize: tuple[float, float] = (3.6, 3.4),
) -> Axes:
    """A mask [i, j] (True / 1 = may NOT attend): visible cells dark, masked cells pale.

    mlen > 0 draws a line between the memory columns and the current segment's columns.
    """
    m = to_numpy(mask).astype(float)
    _check_2d("mask", m)
    ax = _axes(ax, figsize)
    ax.imshow(m, cmap=MASK_CMAP, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    # thin grid so single cells can be counted
    ax.set_xticks(np.arange(-0.5, m.shape[1]), minor=True)
    ax.set_yticks(np.arange(-0.5, m.shape[0]), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    if mlen:
        ax.axvline(mlen - 0.5, color="#c53030", linewidth=1.5)
    _ticks(ax, xticklabels, yticklabels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def draw_panels(
    matrices: Sequence,
    titles: Sequence[str],
    *,
    draw: Callable[..., Axes] = draw_matrix,
    ncols: int | None = None,
    suptitle: str | None = None,
    panel_size: tuple[float, float] = (3.4, 3.0),
    **kwargs,
) -> Figure:
    """Several [i, j] matrices side by side, each drawn with `draw` (draw_matrix or draw_mask).

    Extra keyword arguments go to every `draw` call (e.g. xticklabels, annotate, vmin/vmax).
    """
    if len(matrices) != len(titles):
        raise ValueError(f"titles: expected one per matrix ({len(matrices)}), got {len(titles)}")
    ncols = ncols or len(matrices)
    nrows = -(-len(matrices) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained", squeeze=False
    )
    for ax, m, t in zip(axes.flat, matrices, titles):
        draw(m, ax=ax, title=t, **kwargs)
    for ax in axes.flat[len(matrices) :]:
        ax.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    return fig


def draw_sinusoid_table(
    table,
    *,
    positions=None,
    ax: Axes | None = None,
    title: str = "sinusoid table R (rows: distance, columns: [sin | cos])",
    figsize: tuple[float, float] = (6.0, 3.6),
) -> Axes:
    """The positional table R [r, d]: one row per distance, sin half then cos half.

    positions: the distance of each row (labelled on the y axis, every few rows).
    """
    t = to_numpy(table)
    _check_2d("table", t)
    ax = draw_matrix(
        t,
        ax=ax,
        title=title,
        xlabel="dimension (sin half | cos half)",
        ylabel="distance",
        cmap="RdBu_r",
        vmin=-1,
        vmax=1,
        figsize=figsize,
    )
    ax.axvline(t.shape[1] / 2 - 0.5, color="black", linewidth=1)
    if positions is not None:
        positions = to_numpy(positions)
        step = max(1, len(positions) // 8)
        rows = list(range(0, len(positions), step))
        ax.set_yticks(rows, [f"{positions[r]:g}" for r in rows], fontsize=8)
    return ax


def draw_rel_shift(
    stages: Sequence[tuple[str, object]],
    *,
    base: int = 10,
    mlen: int = 0,
    before_columns: Sequence | None = None,
    suptitle: str | None = "rel_shift step by step: cell value = 10·(row i) + (column c) of bd before the shift",
    cell: float = 0.42,
) -> Figure:
    """The steps of rel_shift, one panel each: ``stages`` = [(title, matrix), ...], first the score block
    bd [i, r] before, last the result [i, j]; in between the reshape -> drop -> reshape views.

    Fill bd with per-cell codes ``base * i + c`` (row i, column c) so that every cell says where it came
    from: the colour is the source row i, the number the source cell. Before the shift the rows differ,
    so the per-row shift is visible; after it each row is again one colour, moved left by qlen - i.
    Cells are square (the views have other shapes than bd). mlen > 0 draws the memory | segment line
    on the last panel; before_columns labels the first panel's columns (e.g. their distances).
    """
    if not stages:
        raise ValueError("stages: expected at least one (title, matrix) pair, got none")
    mats = [to_numpy(m).astype(float) for _, m in stages]
    for (title, _), m in zip(stages, mats):
        _check_2d(f"stages[{title!r}]", m)
    n_rows = int(mats[0].shape[0])
    if (mats[0] // base).max() >= n_rows or (mats[0] % base).max() >= base or mats[0].min() < 0:
        raise ValueError(
            f"stages: expected the first matrix to hold codes base * i + c with 0 <= c < base={base}, "
            f"got values from {mats[0].min():g} to {mats[0].max():g}"
        )
    widths = [m.shape[1] for m in mats]
    height = max(m.shape[0] for m in mats)
    fig, axes = plt.subplots(
        1,
        len(mats),
        figsize=(cell * sum(widths) + 1.2 * len(mats), cell * height + 1.4),
        layout="constrained",
        gridspec_kw={"width_ratios": widths},
    )
    axes = np.atleast_1d(axes)
    row_colours = ListedColormap(plt.get_cmap("Pastel1").colors[: max(n_rows, 1)])
    for ax, (title, _), m in zip(axes, stages, mats):
        ax.imshow(m // base, cmap=row_colours, vmin=-0.5, vmax=n_rows - 0.5, aspect="equal", interpolation="nearest")
        for (i, j), value in np.ndenumerate(m):
            ax.text(j, i, f"{int(value):0{len(str(base - 1)) + 1}d}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(m.shape[1]), [str(c) for c in range(m.shape[1])], fontsize=7)
        ax.set_yticks(range(m.shape[0]), [str(r) for r in range(m.shape[0])], fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(np.arange(-0.5, m.shape[1]), minor=True)
        ax.set_yticks(np.arange(-0.5, m.shape[0]), minor=True)
        ax.grid(which="minor", color="white", linewidth=1)
        ax.tick_params(which="minor", length=0)
    if before_columns is not None:
        axes[0].set_xticks(range(mats[0].shape[1]), [str(c) for c in before_columns], fontsize=7)
        axes[0].set_xlabel("distance of column c", fontsize=8)
    axes[-1].set_xlabel("key j", fontsize=8)
    axes[0].set_ylabel("query i", fontsize=8)
    if mlen:
        axes[-1].axvline(mlen - 0.5, color="black", linewidth=1.5)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def draw_stage_errors(
    errors: dict[str, float],
    *,
    tol: float,
    ax: Axes | None = None,
    title: str | None = None,
    label: str | None = None,
    floor: float = 1e-12,
    figsize: tuple[float, float] = (8.0, 3.4),
) -> Axes:
    """One point per stage (in forward order) with its error on a log scale, and the tolerance line.

    Call it twice on the same Axes (with `label`) to compare a healthy and a broken run. Zero errors
    are drawn at `floor`. The first stage above `tol` is circled.
    """
    names = list(errors)
    values = np.maximum(np.array([errors[n] for n in names], dtype=float), floor)
    ax = _axes(ax, figsize)
    line = ax.plot(range(len(names)), values, marker="o", markersize=3, linewidth=1, label=label)[0]
    over = np.nonzero(values > tol)[0]
    if len(over):
        ax.plot(
            over[0],
            values[over[0]],
            "o",
            markersize=11,
            markerfacecolor="none",
            markeredgecolor=line.get_color(),
            markeredgewidth=1.5,
        )
    ax.axhline(tol, color="#c53030", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    if bool((values <= floor).any()):
        ax.annotate("exactly 0", xy=(0, floor), xytext=(2, 3), textcoords="offset points", fontsize=7, color="grey")
    ax.set_xticks(range(len(names)), names, rotation=75, fontsize=7)
    ax.set_ylabel("relative error")
    if title:
        ax.set_title(title, fontsize=10)
    if label:
        ax.legend(fontsize=8, loc="upper left")
    return ax


def draw_distributions(
    distributions: dict[str, object],
    *,
    ax: Axes | None = None,
    labels: Sequence | None = None,
    title: str | None = None,
    xlabel: str = "token x",
    figsize: tuple[float, float] = (6.0, 3.0),
) -> Axes:
    """Several probability vectors over the same outcomes as grouped bars (one colour per vector)."""
    names = list(distributions)
    probs = [to_numpy(distributions[n]).ravel() for n in names]
    if len({len(p) for p in probs}) != 1:
        raise ValueError(f"distributions: expected vectors of one length, got {[len(p) for p in probs]}")
    ax = _axes(ax, figsize)
    width = 0.8 / len(names)
    x = np.arange(len(probs[0]))
    for k, (name, p) in enumerate(zip(names, probs)):
        ax.bar(x + (k - (len(names) - 1) / 2) * width, p, width=width, label=name)
    if labels is not None:
        ax.set_xticks(x, [str(t) for t in labels], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("probability")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 150) -> Path:
    """Write a figure as PNG (creating the folder) at ``dpi`` (150 by default: readable on a projector at
    the figure's own size); returns the path."""
    if dpi < 150:
        raise ValueError(f"dpi: expected at least 150 (figures must stay readable when projected), got {dpi}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return path

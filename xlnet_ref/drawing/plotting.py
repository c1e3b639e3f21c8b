"""Training and validation plots shared by the demo and the notebooks: loss curves with baselines, the
two streams' attention, attention on memory against its uniform baseline, per-stage errors by stream.
The generic matrix / mask drawing lives in :mod:`xlnet_ref.drawing.viz`; this module puts those pieces
together for a trained model.

Each ``plot_*`` function draws into a given matplotlib Axes (or a new figure) and returns the figure,
so a notebook can show it and the demo can save it with :func:`save_figure` (150 dpi). The computations
that are not plotting, :func:`memory_attention_mass` and :func:`uniform_memory_mass`, are separate so
that they can be tested and reused. Masked attention cells are drawn grey, apart from visible cells with
a probability near 0 (:func:`draw_attention`).

Axis letters as in the model: b batch, n head, i query position, k prediction target, j key position
over [memory | current segment].
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, *, dpi: int = 150) -> Path:
    """Save ``fig`` as PNG (creating the folder, via :func:`xlnet_ref.drawing.viz.save_figure`) and close it."""
    from .viz import save_figure as viz_save_figure

    path = viz_save_figure(fig, path, dpi=dpi)
    _pyplot().close(fig)
    return path


def smooth(values: list[float], *, window: int = 20) -> list[float]:
    """Running mean over the last ``window`` values (shorter at the start): a readable noisy loss curve."""
    out, total = [], 0.0
    for t, v in enumerate(values):
        total += v
        if t >= window:
            total -= values[t - window]
        out.append(total / min(t + 1, window))
    return out


def plot_history(
    history: list[dict], *, axes=None, title: str | None = None, baselines: dict[str, float] | None = None
):
    """Left: training PLM loss (raw and smoothed) with held-out PLM and left-to-right losses; right: learning rate.

    history: the list of dicts that :func:`xlnet_ref.training.train.train` returns (``kind`` "train" / "eval").
    baselines: name -> loss, drawn as horizontal lines (e.g. ``{"bigram count model": 2.9}``) — what a
    sceptic compares the curves with. The legend sits below the axes, so it never covers a curve, and the
    y range starts just under the lowest curve or baseline.
    """
    plt = _pyplot()
    own_figure = axes is None  # lay out only a figure we made; a caller's figure has its own layout
    if own_figure:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), gridspec_kw={"width_ratios": [3, 1]}, layout="constrained")
    ax_loss, ax_lr = axes
    fig = ax_loss.figure
    train_rows = [r for r in history if r.get("kind") == "train"]
    eval_rows = [r for r in history if r.get("kind") == "eval"]
    if not train_rows:
        raise ValueError("plot_history: history: expected rows with kind='train', got none")
    baselines = dict(baselines or {})
    for name, value in baselines.items():
        if not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"plot_history: baselines[{name!r}]: expected a finite number, got {value!r}")
    steps = [r["step"] for r in train_rows]
    losses = [r["loss"] for r in train_rows]
    ax_loss.plot(steps, losses, color="tab:blue", alpha=0.25, lw=0.8, label="train PLM loss")
    ax_loss.plot(steps, smooth(losses), color="tab:blue", lw=1.8, label="train PLM loss (running mean)")
    lowest = min(losses)
    if eval_rows:
        eval_steps = [r["step"] for r in eval_rows]
        plm, l2r = [r["eval_plm_loss"] for r in eval_rows], [r["eval_l2r_loss"] for r in eval_rows]
        ax_loss.plot(eval_steps, plm, "o-", color="tab:orange", label="held-out PLM loss (random orders)")
        ax_loss.plot(eval_steps, l2r, "s-", color="tab:green", label="held-out left-to-right loss (z = identity)")
        lowest = min(lowest, *plm, *l2r)
    styles = [(0, (5, 3)), (0, (1, 2)), (0, (6, 2, 1, 2)), (0, (3, 1))]
    for n, (name, value) in enumerate(baselines.items()):
        ax_loss.axhline(value, color="0.25", lw=1.3, ls=styles[n % len(styles)], label=f"{name}: {value:.2f}")
        lowest = min(lowest, value)
    ax_loss.set_ylim(bottom=max(0.0, lowest - 0.25))
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("cross-entropy per target (nats)")
    ax_loss.set_title(title or "Permutation LM training", fontsize=11)
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    lrs = [r["lr"] for r in train_rows]
    exponent = math.floor(math.log10(max(lrs))) if max(lrs) > 0 else 0  # the scale goes into the label, not
    ax_lr.plot(steps, [lr / 10**exponent for lr in lrs], color="tab:purple")  # into an offset text under the title
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel(f"learning rate (× 1e{exponent})" if exponent else "learning rate")
    ax_lr.set_title("warm-up, linear decay", fontsize=10)
    ax_lr.grid(alpha=0.3)
    return fig


def token_labels(tokenizer, ids) -> list[str]:
    """Short printable label per id: the character for a byte, the piece for SentencePiece, names for specials."""
    names = {tokenizer.pad_id: "<pad>", tokenizer.sep_id: "<sep>", tokenizer.cls_id: "<cls>", tokenizer.unk_id: "<unk>"}
    labels = []
    for i in torch.as_tensor(ids).reshape(-1).tolist():
        if i in names:
            labels.append(names[i])
        elif getattr(tokenizer, "kind", None) == "byte":
            labels.append({32: "␣", 10: "⏎", 9: "⇥"}.get(i, chr(i) if 32 < i < 127 else f"x{i:02x}"))
        else:
            labels.append(tokenizer.sp.id_to_piece(i).replace("\u2581", "␣"))
    return labels


MASKED_COLOUR = "#d9d9d9"  # masked cells: light grey, never confused with a small probability (viridis is dark there)


def draw_attention(
    prob,
    *,
    hidden=None,
    ax=None,
    title: str | None = None,
    xlabel: str = "key j",
    ylabel: str = "query i",
    vmax: float | None = None,
    annotate: bool = False,
    xticklabels=None,
    yticklabels=None,
    tick_fontsize: float = 8,
    colorbar: bool = True,
):
    """Attention probabilities [q, j] as a heat map, with the cells a mask hides drawn apart.

    hidden: [q, j] bool, True where the query may NOT attend the key. Those cells are drawn light grey
    (annotated "×"), so a masked key is never read as "a visible key with a probability near 0", which
    viridis draws dark. A hidden cell must hold exactly zero probability — otherwise the mask and the
    attention disagree and this raises ValueError rather than draw a misleading picture.
    Returns the image (for a shared colour bar).
    """
    import numpy as np
    from matplotlib import colormaps

    from .viz import to_numpy

    plt = _pyplot()
    p = to_numpy(prob).astype(float)
    if p.ndim != 2:
        raise ValueError(f"draw_attention: prob: expected a 2-D matrix [q, j], got shape {list(p.shape)}")
    h = np.zeros_like(p, dtype=bool) if hidden is None else to_numpy(hidden).astype(bool)
    if h.shape != p.shape:
        raise ValueError(f"draw_attention: hidden: expected shape {list(p.shape)} like prob, got {list(h.shape)}")
    if (p[h] != 0).any():
        worst = float(np.abs(p[h]).max())
        raise ValueError(
            f"draw_attention: hidden: expected exactly zero probability on masked cells, got up to {worst:g}"
        )
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 3.6), layout="constrained")
    cmap = colormaps["viridis"].with_extremes(bad=MASKED_COLOUR)
    image = ax.imshow(
        np.ma.masked_array(p, mask=h), cmap=cmap, vmin=0, vmax=vmax, aspect="auto", interpolation="nearest"
    )
    if annotate:
        lo, hi = image.get_clim()
        for (i, j), value in np.ndenumerate(p):
            if h[i, j]:
                ax.text(j, i, "×", ha="center", va="center", fontsize=9, color="0.45")
            else:
                dark = (value - lo) / ((hi - lo) or 1.0) < 0.55
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=9, color="white" if dark else "black")
    if xticklabels is not None:
        xticklabels = [str(t) for t in xticklabels]
        crowded = sum(len(t) for t in xticklabels) > 30
        ax.set_xticks(range(len(xticklabels)), xticklabels, fontsize=tick_fontsize)
        for text in ax.get_xticklabels():  # crowded: labels of more than two characters stand vertical
            text.set_rotation(90 if crowded and len(text.get_text()) > 2 else 0)
    if yticklabels is not None:
        ax.set_yticks(range(len(yticklabels)), [str(t) for t in yticklabels], fontsize=tick_fontsize)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, shrink=0.85, label="attention probability")
    return image


def masked_legend_handle():
    """The legend entry for :func:`draw_attention`'s masked cells."""
    from matplotlib.patches import Patch

    return Patch(facecolor=MASKED_COLOUR, edgecolor="0.5", label="masked (may not attend): probability exactly 0")


def plot_two_stream_attention(
    prob_h: torch.Tensor,
    prob_g: torch.Tensor,
    *,
    perm_mask: torch.Tensor,
    target_positions: list[int],
    mlen: int = 0,
    labels: list[str] | None = None,
    title: str = "",
):
    """Both streams at the same rows — the prediction targets — for one example and one layer (heads
    averaged before calling, or one head):

    top: the content stream h at each target position, which may see its own token;
    bottom: the query stream g for each target, which may not (red box: the target's own column).

    The segment's keys are drawn one column per token, labelled with its token; keys the mask hides
    are grey (exactly zero probability), apart from visible keys with little weight. The memory's keys
    are always visible and are summed into one column on the left (the share of attention on the
    memory), so that mlen columns of faint, similar values do not take half of the picture.

    prob_h: [i, mlen + i]; prob_g: [k, mlen + i]; perm_mask: [i, i] (1 = may NOT attend; the query
    stream's mask, the content stream's is the same with the diagonal cleared); target_positions: the
    position each row of prob_g predicts; labels: one per position of the segment (length i).
    """

    plt = _pyplot()
    qlen = prob_h.shape[0]
    if prob_h.dim() != 2 or prob_h.shape[1] != mlen + qlen:
        raise ValueError(f"prob_h: expected shape [i, mlen + i] = [{qlen}, {mlen + qlen}], got {list(prob_h.shape)}")
    if prob_g.dim() != 2 or prob_g.shape != (len(target_positions), mlen + qlen):
        raise ValueError(
            f"prob_g: expected shape [k, j] = [{len(target_positions)}, {mlen + qlen}], got {list(prob_g.shape)}"
        )
    if tuple(perm_mask.shape) != (qlen, qlen):
        raise ValueError(f"perm_mask: expected shape [i, i] = [{qlen}, {qlen}], got {list(perm_mask.shape)}")
    if labels is not None and len(labels) != qlen:
        raise ValueError(f"labels: expected one per position of the segment ({qlen}), got {len(labels)}")
    rows = torch.as_tensor(target_positions, dtype=torch.long)
    k = len(target_positions)
    hidden_g = perm_mask.detach().cpu().bool()[rows]  # [k, i]: what the query stream hides
    own = torch.nn.functional.one_hot(rows, qlen).bool()  # [k, i]: the target's own position
    hidden_h = hidden_g & ~own  # the content stream also sees itself
    h_rows = prob_h.detach().float().cpu()[rows]  # [k, mlen + i]
    g_rows = prob_g.detach().float().cpu()
    seg_h, seg_g = h_rows[:, mlen:], g_rows[:, mlen:]
    vmax = float(max(seg_h.max(), seg_g.max(), 1e-6))
    seg_labels = labels if labels is not None else [str(t) for t in range(qlen)]
    row_labels = [f"{p} {seg_labels[p]!r}" for p in target_positions]
    tick_fontsize = 8 if qlen <= 72 else 6
    width = min(22.0, 3.2 + (1.0 if mlen else 0.0) + 0.155 * qlen)
    height = 2 * (0.24 * k + 1.4) + 1.2
    fig = plt.figure(figsize=(width, height), layout="constrained")
    grid = fig.add_gridspec(2, 2 if mlen else 1, width_ratios=[1.2, 0.155 * qlen] if mlen else None)
    streams = (
        ("content stream h at the target positions (sees its own token)", seg_h, hidden_h, h_rows),
        ("query stream g, one row per target (must not see its own token: red box)", seg_g, hidden_g, g_rows),
    )
    image = None
    for r, (name, seg, hidden, full) in enumerate(streams):
        ax = fig.add_subplot(grid[r, -1])
        image = draw_attention(
            seg,
            hidden=hidden,
            ax=ax,
            title=name,
            vmax=vmax,
            colorbar=False,
            xticklabels=seg_labels,
            yticklabels=row_labels,
            tick_fontsize=tick_fontsize,
            xlabel="key j: the segment's tokens" if r == 1 else "",
            ylabel="target (position, token)",
        )
        for row, p in enumerate(target_positions):
            ax.add_patch(plt.Rectangle((p - 0.5, row - 0.5), 1, 1, fill=False, ec="red", lw=1.4))
        if mlen:
            mem_ax = fig.add_subplot(grid[r, 0])
            total = full[:, :mlen].sum(-1, keepdim=True).numpy()  # [k, 1]
            mem_ax.imshow(total, cmap="Oranges", vmin=0, vmax=1, aspect="auto")
            for row, value in enumerate(total[:, 0]):
                mem_ax.text(
                    0,
                    row,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=tick_fontsize,
                    color="white" if value > 0.6 else "black",
                )
            mem_ax.set_xticks([0], [f"Σ {mlen}\nmemory\nkeys"], fontsize=tick_fontsize)
            mem_ax.set_yticks([])
            if r == 0:
                mem_ax.set_title("memory", fontsize=10)
    fig.colorbar(image, ax=fig.axes, shrink=0.6, label="attention probability (segment keys)")
    fig.legend(handles=[masked_legend_handle()], loc="outside lower center", fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def memory_attention_mass(attentions: list, *, mlen: int) -> torch.Tensor:
    """[n_layer, 2] mean attention probability on the memory columns j < mlen: (content stream, query stream).

    attentions: the model's ``out.attentions`` (per layer (prob_h [b, n, i, j], prob_g [b, n, k, j]), or
    prob_h alone). Averaged over batch, heads and queries; a query-stream row that is all padding
    (zero target) is not special-cased, so pass batches whose targets are real.
    """
    rows = []
    for layer in attentions:
        prob_h, prob_g = layer if isinstance(layer, (tuple, list)) else (layer, None)
        content = prob_h[..., :mlen].sum(-1).mean()  # sum over memory keys, mean over b, n, i
        query = prob_g[..., :mlen].sum(-1).mean() if prob_g is not None else torch.tensor(float("nan"))
        rows.append(torch.stack([content.float().cpu(), query.float().cpu()]))
    return torch.stack(rows)


def uniform_memory_mass(
    perm_mask: torch.Tensor, target_mapping: torch.Tensor | None = None, *, mlen: int
) -> torch.Tensor:
    r"""[2] the share of attention the memory would get if every query spread its attention evenly over
    the keys it may see: (content stream, query stream), averaged over batch and queries like
    :func:`memory_attention_mass`.

    A query that may see :math:`n_{\text{vis}}` keys of the segment and all ``mlen`` memory keys puts
    :math:`\text{mlen} / (\text{mlen} + n_{\text{vis}})` on the memory under uniform attention. The masks
    hide part of the segment (the factorization order), never the memory, so this is above
    ``mlen / (mlen + qlen)`` — the baseline to compare the measured mass with.

    perm_mask: [b, i, i] (1 = may NOT attend; the query stream's mask — the content stream's is the same
    with the diagonal cleared, as in the model); target_mapping: [b, k, i] one-hot rows, or None (the
    query stream's entry is then nan). Rows of target_mapping that are all zero (padding) are left out.
    """
    from ..two_stream import target_positions

    if perm_mask.dim() != 3 or perm_mask.shape[1] != perm_mask.shape[2]:
        raise ValueError(f"uniform_memory_mass: perm_mask: expected shape [b, i, i], got {list(perm_mask.shape)}")
    if not isinstance(mlen, int) or mlen < 0:
        raise ValueError(f"uniform_memory_mass: mlen: expected an int >= 0, got {mlen!r}")
    hidden = perm_mask.detach().cpu().bool()  # [b, i, j]
    qlen = hidden.shape[-1]
    own = torch.eye(qlen, dtype=torch.bool)
    content_visible = (~(hidden & ~own)).sum(-1).double() + mlen  # [b, i] keys h_i may see
    content = (mlen / content_visible).mean()
    query = torch.tensor(float("nan"), dtype=torch.float64)
    if target_mapping is not None:
        if target_mapping.dim() != 3 or target_mapping.shape[0] != hidden.shape[0] or target_mapping.shape[2] != qlen:
            raise ValueError(
                f"uniform_memory_mass: target_mapping: expected shape [b, k, {qlen}] with "
                f"b = {hidden.shape[0]}, got {list(target_mapping.shape)}"
            )
        pos, valid = target_positions(target_mapping.detach().cpu())  # [b, k]
        rows = hidden.gather(1, pos[:, :, None].expand(-1, -1, qlen))  # [b, k, j]
        query_visible = (~rows).sum(-1).double() + mlen  # [b, k]
        query = (mlen / query_visible)[valid].mean()
    return torch.stack([content, query]).float()


def plot_memory_attention(
    mass: torch.Tensor, *, mlen: int, qlen: int, uniform: torch.Tensor | None = None, ax=None, title: str | None = None
):
    """Bars per layer: the share of attention on memory for both streams, each with its baseline.

    uniform: [2] (content, query) from :func:`uniform_memory_mass` — the share the memory gets if each
    query spreads its attention evenly over the keys its mask lets it see; drawn as a dashed line per
    stream. A bar at its line is what indiscriminate attention gives; only a bar above it is a
    preference for the memory. Without ``uniform`` the line ``mlen / (mlen + qlen)`` would ignore the
    masks and understate the baseline, so none is drawn and the title says so.
    """
    plt = _pyplot()
    own_figure = ax is None  # lay out only a figure we made; a caller's figure has its own layout
    if own_figure:
        fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    fig = ax.figure
    n_layer = mass.shape[0]
    x = list(range(n_layer))
    colours = ("tab:blue", "tab:orange")
    ax.bar([i - 0.2 for i in x], mass[:, 0].tolist(), width=0.4, color=colours[0], label="content stream h")
    ax.bar([i + 0.2 for i in x], mass[:, 1].tolist(), width=0.4, color=colours[1], label="query stream g")
    if uniform is not None:
        uniform = torch.as_tensor(uniform, dtype=torch.float32).reshape(-1)
        if uniform.shape != (2,):
            raise ValueError(
                f"plot_memory_attention: uniform: expected [2] (content, query), got {list(uniform.shape)}"
            )
        for s, name in enumerate(("h", "g")):
            if torch.isfinite(uniform[s]):
                ax.axhline(
                    float(uniform[s]),
                    color=colours[s],
                    ls="--",
                    lw=1.4,
                    label=f"{name}: uniform over its visible keys ({float(uniform[s]):.2f})",
                )
    ax.axhline(
        mlen / (mlen + qlen),
        color="0.4",
        ls=":",
        lw=1,
        label=f"mlen / (mlen + qlen) = {mlen / (mlen + qlen):.2f}, ignores the masks",
    )
    ax.set_xticks(x, [f"layer {i}" for i in x])
    ax.set_ylabel("attention mass on memory")
    ax.set_ylim(0, 1)
    ax.set_title(title or "How much each layer reads from memory", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _stage_slot(name: str) -> tuple[int | None, str | None, str]:
    """'layer1.query.bd' -> (1, 'query', 'bd'); 'layer0.q_h' -> (0, 'content', 'q'); 'layer0.k_h' ->
    (0, None, 'k_h'); 'word_emb' -> (None, None, 'word_emb')."""
    head, _, rest = name.partition(".")
    if not (head.startswith("layer") and head[5:].isdigit() and rest):
        return None, None, name
    layer = int(head[5:])
    for stream in ("content", "query"):
        if rest.startswith(stream):
            return layer, stream, rest[len(stream) :].lstrip("._")
    if rest in ("q_h", "q_g"):
        return layer, "content" if rest == "q_h" else "query", "q"
    return layer, None, rest


def plot_stage_errors(runs: dict[str, dict[str, float]], *, tol: float, floor: float = 1e-12, title: str | None = None):
    """Per-stage relative errors (in forward order) for one or more runs, one panel per run, each
    stream its own line: the content stream h and the query stream g are interleaved in the forward
    order, so one line through all stages would zig-zag between two different computations.

    runs: label -> {stage name: relative error} (xlnet_ref's stage names, e.g. 'layer0.content.bd',
    'layer0.query_ff_out', 'layer0.k_h'). The x axis has one slot per (layer, stage kind), shared by
    both streams; stages of neither stream (embeddings, masks, keys and values, memory, logits) are
    grey squares. Ticks name the stage kinds, with the layer written under each group. Zero errors
    are drawn at ``floor``; the first stage above ``tol`` is circled. Returns the figure.
    """

    plt = _pyplot()
    if not runs:
        raise ValueError("plot_stage_errors: runs: expected at least one run, got none")
    slots: dict[tuple, int] = {}
    for errors in runs.values():
        for name in errors:
            layer, _, kind = _stage_slot(name)
            slots.setdefault((layer, kind), len(slots))
    # slots in forward order: non-layer stages before layer 0 keep their place, 'logits' etc. come last
    fig, axes = plt.subplots(
        len(runs),
        1,
        figsize=(max(9.0, 0.32 * len(slots) + 2), 2.9 * len(runs) + 1.1),
        sharex=True,
        layout="constrained",
        squeeze=False,
    )
    styles = {
        "content": dict(color="tab:blue", marker="o", label="content stream h"),
        "query": dict(color="tab:orange", marker="^", label="query stream g"),
        None: dict(color="0.35", marker="s", ls="none", label="shared: embeddings, masks, k, v, memory, logits"),
    }
    for ax, (label, errors) in zip(axes[:, 0], runs.items()):
        series: dict = {"content": ([], []), "query": ([], []), None: ([], [])}
        first = None
        for name, err in errors.items():
            layer, stream, kind = _stage_slot(name)
            xs, ys = series[stream]
            xs.append(slots[(layer, kind)])
            ys.append(max(float(err), floor))
            if first is None and err > tol:
                first = (slots[(layer, kind)], max(float(err), floor), name)
        for stream, (xs, ys) in series.items():
            if xs:
                ax.plot(xs, ys, lw=1.2, ms=5, **styles[stream])
        if first is not None:
            ax.plot(first[0], first[1], "o", ms=13, mfc="none", mec="#c53030", mew=1.6)
            ax.annotate(
                f"first departure: {first[2]}",
                (first[0], first[1]),
                xytext=(8, -14),
                textcoords="offset points",
                fontsize=9,
                color="#c53030",
                bbox=dict(fc="white", ec="none", alpha=0.85, pad=1),
                zorder=1.5,
            )  # under the lines
        ax.axhline(tol, color="#c53030", ls="--", lw=1, label=f"tolerance {tol:g}")
        ax.set_yscale("log")
        ax.set_ylim(floor / 5, 10)
        ax.set_ylabel("relative error")
        ax.set_title(label, fontsize=10, loc="left")
        ax.grid(axis="y", alpha=0.3)
        layers = sorted({layer for layer, _ in slots if layer is not None})
        for layer in layers[1:]:
            start = min(x for (at, _), x in slots.items() if at == layer)
            ax.axvline(start - 0.5, color="0.6", lw=0.8)
    handles, names = axes[0, 0].get_legend_handles_labels()
    for ax in axes[1:, 0]:  # a stream that appears only in a later run still gets its entry
        for handle, name in zip(*ax.get_legend_handles_labels()):
            if name not in names:
                handles.append(handle)
                names.append(name)
    fig.legend(handles, names, loc="outside lower center", ncol=4, fontsize=9, frameon=False)  # off the data
    bottom = axes[-1, 0]
    ordered = sorted(slots.items(), key=lambda item: item[1])
    bottom.set_xticks([x for _, x in ordered], [kind for (_, kind), _ in ordered], rotation=90, fontsize=8)
    for layer in sorted({layer for layer, _ in slots if layer is not None}):
        xs = [x for (at, _), x in slots.items() if at == layer]
        bottom.annotate(
            f"layer {layer}",
            xy=((min(xs) + max(xs)) / 2, 0),
            xycoords=("data", "axes fraction"),
            xytext=(0, -62),
            textcoords="offset points",
            ha="center",
            fontsize=10,
            fontweight="bold",
        )
    bottom.set_xlabel(f"stage, in forward order (exact zeros drawn at {floor:g})", labelpad=24)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def show_source(obj, *, start: str | None = None, stop: str | None = None) -> str:
    """The lines of xlnet_ref that compute something, for a notebook to print next to its equation.

    obj: a function, class or method; start / stop: substrings of the first and last line to show
    (default: the whole definition). Returns ``"<file>, lines a-b:"`` and the lines, numbered as in the
    file, so that the reader can open the file at that place.
    """
    import inspect

    lines, first = inspect.getsourcelines(obj)
    lo, hi = 0, len(lines) - 1
    if start is not None:
        found = [n for n, line in enumerate(lines) if start in line]
        if not found:
            raise ValueError(f"show_source: start: expected a substring of a line of {obj.__qualname__}, got {start!r}")
        lo = found[0]
    if stop is not None:
        found = [n for n, line in enumerate(lines) if stop in line and n >= lo]
        if not found:
            raise ValueError(
                f"show_source: stop: expected a substring of a line of {obj.__qualname__} after start, got {stop!r}"
            )
        hi = found[0]
    path = Path(inspect.getsourcefile(obj)).resolve()
    package = Path(__file__).resolve().parents[2]  # the repository root
    shown = path.relative_to(package) if path.is_relative_to(package) else path
    body = "".join(f"{first + n:4d}  {lines[n]}" for n in range(lo, hi + 1))
    return f"{shown}, lines {first + lo}-{first + hi}:\n{body}"

"""Schematic diagrams of the papers' kind, drawn with matplotlib (hand-drawn illustrations, not measurements).

A plain module of functions: each draws one schematic on the Axes it is given (or a new figure) and
returns that Axes. Nothing here runs a model; every figure says in its corner that it is a schematic.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import FancyBboxPatch

SCHEMATIC_NOTE = "schematic (hand-drawn, not computed)"


def _note(ax: Axes) -> None:
    ax.text(
        1.0,
        0.0,
        SCHEMATIC_NOTE,
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=8,
        color="#4a5568",
        style="italic",
    )


def draw_segment_recurrence(
    *,
    n_layer: int = 3,
    n_segments: int = 4,
    seg_len: int = 4,
    ax: Axes | None = None,
    figsize: tuple[float, float] = (10.0, 4.6),
) -> Axes:
    r"""Transformer-XL's segment-level recurrence (Dai et al. 2019, Sec. 3.2, their Fig. 2).

    Columns of nodes are positions, ``n_segments`` segments of ``seg_len`` side by side; rows are the
    layers ``h^0`` (embeddings) to ``h^N``. The highlighted node is the last position of the last
    segment at the top layer. Layer n reads layer n-1 of the current segment *and* of the previous one
    (the memory, :math:`\tilde h^{n-1}_{\tau+1} = [\mathrm{SG}(h^{n-1}_\tau) \circ h^{n-1}_{\tau+1}]`,
    with mem_len = seg_len), so the shaded receptive field grows by one segment per layer going down:
    ``N`` layers reach ``N`` segments back, the "O(N x L)" dependency length of Sec. 3.2.
    """
    for name, value in (("n_layer", n_layer), ("n_segments", n_segments), ("seg_len", seg_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    gap = 0.8  # horizontal space between segments
    x_of = lambda s, p: s * (seg_len + gap) + p  # noqa: E731  node x of segment s, position p
    last = n_segments - 1
    top = (x_of(last, seg_len - 1), n_layer)
    # receptive field: at layer n the top node depends on segments last - (N - n) .. last
    for n in range(n_layer + 1):
        first_seg = max(0, last - (n_layer - n))
        x0, x1 = x_of(first_seg, 0) - 0.4, x_of(last, seg_len - 1) + 0.4
        ax.add_patch(
            FancyBboxPatch(
                (x0, n - 0.3), x1 - x0, 0.6, boxstyle="round,pad=0.02", fc="#fefcbf", ec="#d69e2e", lw=1, zorder=0
            )
        )

    # edges: the highlighted node reads layer N-1 of [previous segment | current segment]; below it, the
    # leftmost segment of the field reads ITS previous segment from memory, one segment further per layer
    def fan(tx: float, ty: float, src_seg: int, memory: bool, lw: float) -> None:
        for src_p in range(seg_len):
            ax.plot(
                [x_of(src_seg, src_p), tx],
                [ty - 1, ty],
                color="#c05621" if memory else "#3182ce",
                lw=lw,
                ls="--" if memory else "-",
                alpha=0.8,
                zorder=1,
            )

    fan(*top, last, memory=False, lw=1.2)
    if last > 0:
        fan(*top, last - 1, memory=True, lw=1.2)
    for n in range(n_layer - 1, 0, -1):
        frontier = last - (n_layer - n)  # leftmost segment of the field at layer n
        if frontier < 1:
            break
        for p in range(seg_len):
            fan(x_of(frontier, p), n, frontier - 1, memory=True, lw=0.5)
    for s in range(n_segments):
        for n in range(n_layer + 1):
            for p in range(seg_len):
                is_top = (x_of(s, p), n) == top
                ax.plot(
                    x_of(s, p),
                    n,
                    "o",
                    ms=11 if is_top else 8,
                    mfc="#c53030" if is_top else "white",
                    mec="#2d3748",
                    mew=1.2,
                    zorder=3,
                )
        ax.text(
            x_of(s, (seg_len - 1) / 2),
            -0.75,
            f"segment τ{s - last:+d}" if s != last else "segment τ (current)",
            ha="center",
            va="top",
            fontsize=9,
        )
    for n in range(n_layer + 1):
        reach = min(n_layer - n, last)
        ax.text(
            x_of(0, 0) - 1.0, n, f"$h^{n}$" + (" (embeddings)" if n == 0 else ""), ha="right", va="center", fontsize=9
        )
        ax.text(
            x_of(last, seg_len - 1) + 0.9,
            n,
            f"reaches {reach} segment{'s' if reach != 1 else ''} back",
            ha="left",
            va="center",
            fontsize=8,
            color="#975a16",
        )
    ax.plot([], [], color="#3182ce", lw=1, label="attention within the current segment")
    ax.plot([], [], color="#c05621", lw=1, ls="--", label="attention to memory: SG(h of the previous segment)")
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, -0.12), ncol=2, fontsize=8, frameon=False)
    ax.set_xlim(x_of(0, 0) - 2.6, x_of(last, seg_len - 1) + 4.2)
    ax.set_ylim(-1.6, n_layer + 0.5)
    ax.axis("off")
    ax.set_title(
        f"Segment recurrence: the red output's receptive field grows by one segment per layer "
        f"({n_layer} layers, mem_len = segment length)",
        fontsize=10,
    )
    _note(ax)
    return ax


def draw_two_streams(
    *,
    order: tuple[int, ...] = (3, 2, 4, 1),
    t: int = 3,
    axes=None,
    figsize: tuple[float, float] = (11.0, 4.4),
):
    r"""XLNet's two-stream self-attention for one target (Yang et al. 2019, Sec. 2.3, their Fig. 1).

    Tokens :math:`x_1..x_T` (the paper's 1-based indices) in their original places; ``order`` is the
    factorization order :math:`z` (the paper's example 3 → 2 → 4 → 1) and ``t`` the step (1-based) whose
    target :math:`z_t` is predicted. Left, the content stream, Query = :math:`h^{(m-1)}_{z_t}`:

    :math:`h^{(m)}_{z_t} \leftarrow \mathrm{Attention}(Q = h^{(m-1)}_{z_t}, KV = h^{(m-1)}_{z_{\le t}})` — it sees its own token.

    Right, the query stream, Query = :math:`g^{(m-1)}_{z_t}` (:math:`g^{(0)} = w`, knows the position :math:`z_t`):

    :math:`g^{(m)}_{z_t} \leftarrow \mathrm{Attention}(Q = g^{(m-1)}_{z_t}, KV = h^{(m-1)}_{z_{<t}})` — not its own token.

    Keys and values always come from the content stream; both streams share the weights. Returns the two Axes.
    """
    order = tuple(order)
    T = len(order)
    if sorted(order) != list(range(1, T + 1)):
        raise ValueError(f"order: expected a permutation of 1..{T} (the paper's 1-based positions), got {order}")
    if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= T:
        raise ValueError(f"t: expected an int step in 1..{T}, got {t!r}")
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=figsize, layout="constrained")
    target = order[t - 1]
    step_of = {p: s + 1 for s, p in enumerate(order)}  # position -> its step in z (1-based)
    blue, grey, red = "#2b6cb0", "#a0aec0", "#c53030"
    for panel, (ax, stream) in enumerate(zip(axes, ("content", "query"))):
        sees = [p for p in range(1, T + 1) if step_of[p] < t or (stream == "content" and p == target)]
        top = ((target - 1) * 1.0, 2.0)
        # keys and values: layer m-1 of the content stream at every position
        for p in range(1, T + 1):
            x = (p - 1) * 1.0
            visible = p in sees
            colour = blue if visible else grey
            ax.annotate(
                "",
                xy=top,
                xytext=(x, 0.25),
                arrowprops=dict(
                    arrowstyle="-|>",
                    color=colour,
                    lw=2.0 if visible else 1.0,
                    ls="-" if visible else ":",
                    shrinkA=14,
                    shrinkB=18,
                ),
                zorder=1,
            )
            if not visible:  # a cross on the arrow: the mask hides this key
                mx, my = x + 0.55 * (top[0] - x), 0.25 + 0.55 * (top[1] - 0.25)
                ax.text(
                    mx,
                    my,
                    "×",
                    color=red if p == target else grey,
                    fontsize=20 if p == target else 15,
                    ha="center",
                    va="center",
                    zorder=4,
                    fontweight="bold",
                )
            ax.add_patch(
                FancyBboxPatch(
                    (x - 0.36, -0.05),
                    0.72,
                    0.5,
                    boxstyle="round,pad=0.03",
                    fc="#ebf8ff" if visible else "#f7fafc",
                    ec=colour,
                    lw=1.5,
                    zorder=2,
                )
            )
            ax.text(
                x,
                0.2,
                f"$h^{{(m-1)}}_{p}$",
                ha="center",
                va="center",
                fontsize=11,
                zorder=3,
                color="black" if visible else "#718096",
            )
            ax.text(
                x,
                -0.35,
                f"$x_{p}$\nstep {step_of[p]}",
                ha="center",
                va="top",
                fontsize=9,
                color="black" if visible else "#718096",
            )
        # the query of this stream
        if stream == "content":
            query_note = f"Q = $h^{{(m-1)}}_{target}$ (the same node: it carries $x_{target}$)"
            name, fc = f"$h^{{(m)}}_{target}$", "#bee3f8"
        else:
            qx = T - 0.2
            ax.add_patch(
                FancyBboxPatch(
                    (qx - 0.4, 0.95), 0.8, 0.5, boxstyle="round,pad=0.03", fc="#fefcbf", ec="#d69e2e", lw=1.5, zorder=2
                )
            )
            ax.text(qx, 1.2, f"$g^{{(m-1)}}_{target}$", ha="center", va="center", fontsize=11, zorder=3)
            ax.text(qx, 0.85, "$g^{(0)} = w$:\nposition only", ha="center", va="top", fontsize=8, color="#975a16")
            ax.annotate(
                "",
                xy=top,
                xytext=(qx, 1.2),
                arrowprops=dict(arrowstyle="-|>", color="#d69e2e", lw=2.0, shrinkA=22, shrinkB=2),
                zorder=1,
            )
            query_note = f"Q = $g^{{(m-1)}}_{target}$: knows the position $z_t = {target}$, not $x_{target}$"
            name, fc = f"$g^{{(m)}}_{target}$", "#fefcbf"
        ax.add_patch(
            FancyBboxPatch(
                (top[0] - 0.4, top[1] - 0.25),
                0.8,
                0.5,
                boxstyle="round,pad=0.03",
                fc=fc,
                ec="#2d3748",
                lw=1.8,
                zorder=2,
            )
        )
        ax.text(*top, name, ha="center", va="center", fontsize=12, zorder=3)
        kv = "z_{\\leq t}" if stream == "content" else "z_{<t}"
        title = f"({'a' if panel == 0 else 'b'}) {stream} stream: KV = $h^{{(m-1)}}_{{{kv}}}$ = positions " + ", ".join(
            str(p) for p in sorted(sees, key=step_of.get)
        )
        ax.set_title(title, fontsize=10)
        ax.text(-0.5, 2.75, query_note, fontsize=9, ha="left", va="center")
        ax.set_xlim(-0.7, T + 0.4)
        ax.set_ylim(-1.0, 3.0)
        ax.axis("off")
        _note(ax)
    fig = axes[0].figure
    fig.suptitle(
        f"Two-stream attention at step t = {t} of the order z = {' → '.join(map(str, order))} (target $z_t = {target}$); "
        "both streams share the weights, keys and values always come from h\n"
        "blue: may attend; grey ×: masked (later in z); red ×: the target's own token, hidden from g only",
        fontsize=11,
    )
    return axes

"""Training plots shared by the demo and the notebooks: loss curves, the two streams' attention, attention
on memory. The generic matrix / mask drawing lives in :mod:`xlnet_ref.drawing.viz`; this module puts those
pieces together for a trained model.

Each ``plot_*`` function draws into a given matplotlib Axes (or a new figure) and returns the figure,
so a notebook can show it and the demo can save it with :func:`save_figure`. The one computation that
is not plotting, :func:`memory_attention_mass`, is separate so that it can be tested and reused.

Axis letters as in the model: b batch, n head, i query position, k prediction target, j key position
over [memory | current segment].
"""

from __future__ import annotations

from pathlib import Path

import torch


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, *, dpi: int = 130) -> Path:
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


def plot_history(history: list[dict], *, axes=None, title: str | None = None):
    """Left: training PLM loss (raw and smoothed) with held-out PLM and left-to-right losses; right: learning rate.

    history: the list of dicts that :func:`xlnet_ref.training.train.train` returns (``kind`` "train" / "eval").
    """
    plt = _pyplot()
    own_figure = axes is None  # lay out only a figure we made; a caller's figure has its own layout
    if own_figure:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 1]})
    ax_loss, ax_lr = axes
    fig = ax_loss.figure
    train_rows = [r for r in history if r.get("kind") == "train"]
    eval_rows = [r for r in history if r.get("kind") == "eval"]
    if not train_rows:
        raise ValueError("plot_history: history: expected rows with kind='train', got none")
    steps = [r["step"] for r in train_rows]
    losses = [r["loss"] for r in train_rows]
    ax_loss.plot(steps, losses, color="tab:blue", alpha=0.25, lw=0.8, label="train PLM loss")
    ax_loss.plot(steps, smooth(losses), color="tab:blue", lw=1.8, label="train PLM loss (running mean)")
    if eval_rows:
        eval_steps = [r["step"] for r in eval_rows]
        ax_loss.plot(eval_steps, [r["eval_plm_loss"] for r in eval_rows], "o-", color="tab:orange",
                     label="held-out PLM loss (random orders)")
        ax_loss.plot(eval_steps, [r["eval_l2r_loss"] for r in eval_rows], "s--", color="tab:green",
                     label="held-out left-to-right loss (z = identity)")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("cross-entropy per target (nats)")
    ax_loss.set_title(title or "Permutation LM training")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    ax_lr.plot(steps, [r["lr"] for r in train_rows], color="tab:purple")
    ax_lr.set_xlabel("step")
    ax_lr.set_title("learning rate: warm-up, linear decay", fontsize=9)
    ax_lr.grid(alpha=0.3)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if own_figure:
        fig.tight_layout()
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
    """Three panels for one example and one layer (heads averaged before calling, or one head):

    1. the query stream's mask over [memory | segment]: perm_mask[i, j], memory always visible;
    2. the content stream h: prob_h [i, j];
    3. the query stream g: prob_g [k, j], one row per prediction target; a red box marks each
       target's own position, which g must not see.

    prob_h: [i, j]; prob_g: [k, j]; perm_mask: [i, i] (1 = may NOT attend); target_positions: the
    position each row of prob_g predicts; labels: one per position of the segment (length i).
    Drawn with :mod:`xlnet_ref.drawing.viz` (the notebooks' matrix and mask helpers).
    """
    from .viz import draw_mask, draw_matrix

    plt = _pyplot()
    qlen = prob_h.shape[0]
    if prob_h.dim() != 2 or prob_h.shape[1] != mlen + qlen:
        raise ValueError(f"prob_h: expected shape [i, mlen + i] = [{qlen}, {mlen + qlen}], got {list(prob_h.shape)}")
    if prob_g.dim() != 2 or prob_g.shape != (len(target_positions), mlen + qlen):
        raise ValueError(f"prob_g: expected shape [k, j] = [{len(target_positions)}, {mlen + qlen}], got {list(prob_g.shape)}")
    mask = torch.cat([torch.zeros(qlen, mlen), perm_mask.float().cpu()], dim=1)  # [i, j] over [mem | seg]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.4), layout="constrained")
    key_label = f"key j ({mlen} memory | {qlen} segment)" if mlen else "key j"
    draw_mask(mask, ax=axes[0], mlen=mlen, title="query stream mask: perm_mask (dark = may attend)", xlabel=key_label)
    draw_matrix(prob_h.float().cpu(), ax=axes[1], mlen=mlen, title="content stream h: attention", xlabel=key_label,
                vmin=0, colorbar=False)
    row_names = [f"{p}" + (f" {labels[p]!r}" if labels else "") for p in target_positions]
    draw_matrix(prob_g.float().cpu(), ax=axes[2], mlen=mlen, title="query stream g: attention, one row per target",
                xlabel=key_label, ylabel="target (its position, its token)", vmin=0, yticklabels=row_names)
    for r, p in enumerate(target_positions):  # the target's own column: g never sees it
        axes[2].add_patch(plt.Rectangle((mlen + p - 0.5, r - 0.5), 1, 1, fill=False, ec="red", lw=1.0))
    if labels is not None and qlen <= 80:  # the segment's characters under the columns
        for ax in axes:
            ax.set_xticks([mlen + t for t in range(qlen)], labels, fontsize=4, rotation=90)
    fig.suptitle(title, fontsize=10)
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


def plot_memory_attention(mass: torch.Tensor, *, mlen: int, qlen: int, ax=None, title: str | None = None):
    """Bars per layer: the share of attention on memory for both streams, with mlen / (mlen + qlen) — what
    attention spread evenly over all keys would give — as a dashed line."""
    plt = _pyplot()
    own_figure = ax is None  # lay out only a figure we made; a caller's figure has its own layout
    if own_figure:
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
    fig = ax.figure
    n_layer = mass.shape[0]
    x = list(range(n_layer))
    ax.bar([i - 0.2 for i in x], mass[:, 0].tolist(), width=0.4, label="content stream h")
    ax.bar([i + 0.2 for i in x], mass[:, 1].tolist(), width=0.4, label="query stream g")
    ax.axhline(mlen / (mlen + qlen), color="grey", ls="--", lw=1, label=f"uniform over keys ({mlen}/{mlen + qlen})")
    ax.set_xticks(x, [f"layer {i}" for i in x])
    ax.set_ylabel("attention mass on memory")
    ax.set_ylim(0, 1)
    ax.set_title(title or "How much each layer reads from memory", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if own_figure:
        fig.tight_layout()
    return fig

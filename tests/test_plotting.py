"""Training and validation plots (xlnet_ref.drawing.plotting): the memory baseline computed from the masks,
masked cells drawn apart, baselines on the loss curves, per-stream stage errors, figures at >= 150 dpi."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display in tests

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from xlnet_ref import XLNetConfig, XLNetModel
from xlnet_ref.drawing import plotting


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# --------------------------------------------------------------------------- uniform baseline on memory
def strict_order_perm_mask(order: list[int]) -> torch.Tensor:
    """perm_mask[i, j] = 1 unless j comes strictly before i in the order (the query stream's mask)."""
    rank = {p: t for t, p in enumerate(order)}
    n = len(order)
    return torch.tensor([[float(rank[j] >= rank[i]) for j in range(n)] for i in range(n)])


def test_uniform_memory_mass_by_hand():
    # qlen 3, identity order, mlen 2. Content stream (sees itself): row i sees i + 1 segment keys.
    # Query stream at targets 1 and 2 (not itself): 1 and 2 segment keys. A zero row (padding) is left out.
    perm_mask = strict_order_perm_mask([0, 1, 2])[None]
    target_mapping = torch.tensor([[[0.0, 1, 0], [0, 0, 1], [0, 0, 0]]])
    mass = plotting.uniform_memory_mass(perm_mask, target_mapping, mlen=2)
    content = (2 / 3 + 2 / 4 + 2 / 5) / 3
    query = (2 / 3 + 2 / 4) / 2
    torch.testing.assert_close(mass, torch.tensor([content, query]))


def test_uniform_memory_mass_without_masks_is_mlen_over_klen():
    perm_mask = torch.zeros(2, 5, 5)
    target_mapping = torch.nn.functional.one_hot(torch.tensor([[0, 3], [1, 4]]), 5).float()
    mass = plotting.uniform_memory_mass(perm_mask, target_mapping, mlen=3)
    torch.testing.assert_close(mass, torch.full((2,), 3 / 8))
    assert torch.isnan(plotting.uniform_memory_mass(perm_mask, None, mlen=3)[1])


def test_uniform_memory_mass_equals_the_mass_of_a_model_that_attends_uniformly():
    """Zero W_q and the biases u, v, b: every score is 0, so each query attends evenly to what its mask
    lets it see. The measured mass on memory must then be the baseline, in every layer and both streams."""
    torch.manual_seed(0)
    config = XLNetConfig(vocab_size=20, d_model=16, n_layer=2, n_head=2, d_inner=32, dropout=0.0, mem_len=4)
    model = XLNetModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("rel_attn.q") or name in ("r_w_bias", "r_r_bias", "r_s_bias"):
                p.zero_()
    qlen, mlen = 6, 4
    order = [3, 0, 5, 1, 4, 2]
    perm_mask = strict_order_perm_mask(order)[None].repeat(2, 1, 1)
    target_mapping = torch.nn.functional.one_hot(torch.tensor([[1, 4, 2]] * 2), qlen).float()
    with torch.no_grad():
        mems = model(torch.randint(0, 20, (2, mlen))).mems
        out = model(
            torch.randint(0, 20, (2, qlen)),
            mems=mems,
            perm_mask=perm_mask,
            target_mapping=target_mapping,
            output_attentions=True,
        )
    measured = plotting.memory_attention_mass(out.attentions, mlen=mlen)  # [layer, stream]
    baseline = plotting.uniform_memory_mass(perm_mask, target_mapping, mlen=mlen)
    torch.testing.assert_close(measured, baseline.expand_as(measured), rtol=1e-5, atol=1e-6)
    assert (baseline > mlen / (mlen + qlen) + 0.05).all()  # the masks raise it well above mlen / klen


def test_uniform_memory_mass_refuses_bad_shapes():
    with pytest.raises(ValueError, match="perm_mask"):
        plotting.uniform_memory_mass(torch.zeros(3, 3), None, mlen=1)
    with pytest.raises(ValueError, match="target_mapping"):
        plotting.uniform_memory_mass(torch.zeros(1, 3, 3), torch.zeros(1, 2, 4), mlen=1)
    with pytest.raises(ValueError, match="mlen"):
        plotting.uniform_memory_mass(torch.zeros(1, 3, 3), None, mlen=-1)


def test_plot_memory_attention_draws_each_streams_baseline():
    mass = torch.tensor([[0.6, 0.5], [0.7, 0.4]])
    fig = plotting.plot_memory_attention(mass, mlen=4, qlen=4, uniform=torch.tensor([0.61, 0.58]))
    ax = fig.axes[0]
    levels = sorted(round(float(line.get_ydata()[0]), 4) for line in ax.get_lines())
    assert levels == [0.5, 0.58, 0.61]  # both streams' baselines and the mask-blind mlen / klen, labelled as such
    labels = ax.get_legend_handles_labels()[1]
    assert any("visible keys (0.61)" in t for t in labels) and any("ignores the masks" in t for t in labels)
    with pytest.raises(ValueError, match="uniform"):
        plotting.plot_memory_attention(mass, mlen=4, qlen=4, uniform=torch.tensor([0.1, 0.2, 0.3]))


# --------------------------------------------------------------------------- masked cells apart
def test_draw_attention_draws_masked_cells_apart_from_small_probabilities():
    prob = torch.tensor([[0.0, 1e-4, 0.9999], [0.5, 0.5, 0.0]])
    hidden = torch.tensor([[True, False, False], [False, False, True]])
    _, ax = plt.subplots()
    image = plotting.draw_attention(prob, hidden=hidden, ax=ax, annotate=True)
    drawn = image.get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(drawn), hidden.numpy())  # masked -> the "bad" colour
    bad = image.cmap.get_bad()
    assert not np.allclose(bad, image.cmap(0.0))  # grey, not the colour of probability 0
    assert [t.get_text() for t in ax.texts].count("×") == 2


def test_draw_attention_refuses_probability_on_a_masked_cell():
    with pytest.raises(ValueError, match="hidden"):
        plotting.draw_attention(torch.tensor([[0.5, 0.5]]), hidden=torch.tensor([[True, False]]))


def test_plot_two_stream_attention_rows_boxes_and_memory_column():
    qlen, mlen, targets = 5, 3, [1, 4]
    perm_mask = strict_order_perm_mask([0, 2, 1, 3, 4])
    content_hidden = perm_mask.bool() & ~torch.eye(qlen, dtype=torch.bool)
    prob_h = torch.cat([torch.ones(qlen, mlen), (~content_hidden).float()], dim=1)
    prob_h = prob_h / prob_h.sum(-1, keepdim=True)
    query_hidden = perm_mask.bool()[targets]
    prob_g = torch.cat([torch.ones(2, mlen), (~query_hidden).float()], dim=1)
    prob_g = prob_g / prob_g.sum(-1, keepdim=True)
    fig = plotting.plot_two_stream_attention(
        prob_h, prob_g, perm_mask=perm_mask, target_positions=targets, mlen=mlen, labels=list("abcde"), title="t"
    )
    heat = [ax for ax in fig.axes if ax.get_title().startswith(("content", "query"))]
    assert len(heat) == 2
    for ax in heat:  # a red box on each target's own column, one row per target
        assert len(ax.patches) == len(targets)
        assert [t.get_text() for t in ax.get_xticklabels()] == list("abcde")
    memory = [ax for ax in fig.axes if any("memory" in t.get_text() for t in ax.get_xticklabels())]
    assert len(memory) == 2
    totals = sorted(float(t.get_text()) for ax in memory for t in ax.texts)
    expected = sorted(
        [round(float(prob_h[p, :mlen].sum()), 2) for p in targets]
        + [round(float(prob_g[r, :mlen].sum()), 2) for r in range(2)]
    )
    assert totals == expected
    with pytest.raises(ValueError, match="prob_g"):
        plotting.plot_two_stream_attention(prob_h, prob_g[:1], perm_mask=perm_mask, target_positions=targets, mlen=mlen)
    with pytest.raises(ValueError, match="labels"):
        plotting.plot_two_stream_attention(
            prob_h, prob_g, perm_mask=perm_mask, target_positions=targets, mlen=mlen, labels=list("abc")
        )


# --------------------------------------------------------------------------- loss curves with baselines
HISTORY = [{"kind": "train", "step": s, "loss": 5.0 - s / 10, "lr": 1e-3} for s in range(1, 21)] + [
    {"kind": "eval", "step": s, "eval_plm_loss": 4.0 - s / 20, "eval_l2r_loss": 4.1 - s / 20} for s in (10, 20)
]


def test_plot_history_draws_baselines_and_keeps_the_legend_off_the_curves():
    fig = plotting.plot_history(HISTORY, baselines={"unigram count model": 3.4, "bigram count model": 2.6})
    ax = fig.axes[0]
    levels = [float(line.get_ydata()[0]) for line in ax.get_lines() if len(set(line.get_ydata())) == 1]
    assert sorted(levels) == [2.6, 3.4]
    assert ax.get_ylim()[0] < 2.6  # the lowest baseline is inside the view
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend_box = ax.get_legend().get_window_extent(renderer)
    assert not legend_box.overlaps(ax.get_window_extent(renderer))  # below the axes, never on a curve
    with pytest.raises(ValueError, match="baselines"):
        plotting.plot_history(HISTORY, baselines={"bigram": float("nan")})


# --------------------------------------------------------------------------- stage errors by stream
def test_stage_slot_names_layer_stream_and_kind():
    assert plotting._stage_slot("layer1.query.bd") == (1, "query", "bd")
    assert plotting._stage_slot("layer0.content_ff_out") == (0, "content", "ff_out")
    assert plotting._stage_slot("layer0.q_h") == (0, "content", "q")
    assert plotting._stage_slot("layer0.q_g") == (0, "query", "q")
    assert plotting._stage_slot("layer0.k_h") == (0, None, "k_h")
    assert plotting._stage_slot("word_emb") == (None, None, "word_emb")


def test_plot_stage_errors_draws_each_stream_as_its_own_line():
    errors = {
        "word_emb": 0.0,
        "layer0.q_h": 1e-8,
        "layer0.content.bd": 1e-2,
        "layer0.q_g": 1e-8,
        "layer0.query.bd": 1e-8,
        "layer0.content_ff_out": 1e-2,
        "layer0.query_ff_out": 1e-2,
        "logits": 1e-2,
    }
    fig = plotting.plot_stage_errors({"bug": errors, "healthy": {k: 0.0 for k in errors}}, tol=1e-5)
    assert len(fig.axes) == 2  # one panel per run
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    content, query = lines["content stream h"], lines["query stream g"]
    # both streams share the slots (q, bd, ff_out): 5 slots + word_emb + logits, not 8 separate ticks
    assert list(content.get_xdata()) == list(query.get_xdata()) == [1, 2, 3]
    np.testing.assert_allclose(query.get_ydata(), [1e-8, 1e-8, 1e-2])
    assert len(fig.axes[1].get_xticks()) == 5
    assert any("first departure: layer0.content.bd" in t.get_text() for t in fig.axes[0].texts)


# --------------------------------------------------------------------------- resolution
def test_save_figure_writes_at_least_150_dpi(tmp_path):
    from PIL import Image

    fig, _ = plt.subplots(figsize=(2, 1))
    path = plotting.save_figure(fig, tmp_path / "f.png")
    with Image.open(path) as image:
        assert min(image.info["dpi"]) >= 149.9


# --------------------------------------------------------------------------- source next to the equation
def test_show_source_prints_the_named_lines_with_their_file_line_numbers():
    import inspect

    from xlnet_ref.segments import segment_term

    text = plotting.show_source(segment_term, start="ef = torch.einsum", stop="return torch.where")
    header, *body = text.splitlines()
    assert header.startswith("xlnet_ref/segments.py, lines ")
    lines, first = inspect.getsourcelines(segment_term)
    number = int(body[0].split()[0])
    assert lines[number - first].strip() == body[0].split(maxsplit=1)[1].strip() and "einsum" in body[0]
    assert "return torch.where" in body[-1] and len(body) == 2
    with pytest.raises(ValueError, match="start"):
        plotting.show_source(segment_term, start="no such line")


# --------------------------------------------------------------------------- two-stream schematic
def test_draw_two_streams_marks_what_each_stream_sees():
    from xlnet_ref.drawing.diagrams import draw_two_streams

    axes = draw_two_streams(order=(3, 2, 4, 1), t=3)
    content, query = (ax.get_title() for ax in axes)
    assert content.endswith("positions 3, 2, 4")  # z_{<=3}: itself included
    assert query.endswith("positions 3, 2")  # z_{<3}: not itself
    crosses = [[t for t in ax.texts if t.get_text() == "×"] for ax in axes]
    assert len(crosses[0]) == 1 and len(crosses[1]) == 2  # x_1 hidden from both; x_4 from g only
    with pytest.raises(ValueError, match="order"):
        draw_two_streams(order=(1, 2, 2))
    with pytest.raises(ValueError, match="t"):
        draw_two_streams(t=0)

"""The notebooks' drawing helpers: each returns a Figure or Axes and draws what it was given, in its shape."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display in tests

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from xlnet_ref.drawing import viz
from xlnet_ref.relative_position import rel_shift, relative_positional_encoding, relative_positions


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def image_array(ax: Axes) -> np.ndarray:
    (image,) = ax.get_images()
    return np.asarray(image.get_array())


def test_draw_matrix_shows_the_matrix_in_its_shape():
    m = torch.arange(12.0).reshape(3, 4)
    ax = viz.draw_matrix(m, title="scores", annotate="{:.0f}", mlen=2)
    assert isinstance(ax, Axes)
    np.testing.assert_array_equal(image_array(ax), m.numpy())
    assert len(ax.texts) == 12 and ax.texts[5].get_text() == "5"
    assert ax.get_title() == "scores"


def test_draw_matrix_centered_is_symmetric_around_zero():
    ax = viz.draw_matrix(torch.tensor([[-1.0, 3.0]]), centered=True)
    assert ax.get_images()[0].get_clim() == (-3.0, 3.0)


def test_draw_mask_draws_on_a_given_axes_with_labels():
    _, ax = plt.subplots()
    mask = torch.tensor([[False, True, True], [False, False, True]])
    out = viz.draw_mask(mask, ax=ax, xticklabels=["a", "b", "c"], yticklabels=["x", "y"], mlen=1)
    assert out is ax
    np.testing.assert_array_equal(image_array(ax), mask.numpy())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]


def test_draw_panels_one_axes_per_matrix():
    fig = viz.draw_panels([torch.zeros(2, 3), torch.ones(2, 3), torch.eye(2)], ["a", "b", "c"], ncols=2, colorbar=False)
    assert isinstance(fig, Figure)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["a", "b", "c"]
    assert image_array(visible[2]).shape == (2, 2)
    with pytest.raises(ValueError, match="titles"):
        viz.draw_panels([torch.zeros(2, 2)], ["a", "b"])


def test_draw_sinusoid_table_shape_and_range():
    table = relative_positional_encoding(3, 5, d_model=16, attn_type="bi", bi_data=False, clamp_len=0)[0]
    ax = viz.draw_sinusoid_table(table, positions=relative_positions(3, 5, attn_type="bi"))
    assert image_array(ax).shape == (8, 16)
    assert ax.get_images()[0].get_clim() == (-1.0, 1.0)


def test_draw_rel_shift_one_square_panel_per_step_coloured_by_source_row():
    qlen, klen = 3, 5
    rlen = len(relative_positions(qlen, klen, attn_type="bi"))
    bd = 10 * torch.arange(qlen)[:, None] + torch.arange(rlen)[None, :]  # cell code: 10 * row + column
    view = bd.reshape(rlen, qlen)
    stages = [
        ("bd", bd),
        ("view", view),
        ("drop", view[1:]),
        ("view back", view[1:].reshape(qlen, rlen - 1)),
        ("after", rel_shift(bd, klen)),
    ]
    fig = viz.draw_rel_shift(stages, mlen=2)
    assert [ax.get_title() for ax in fig.axes] == ["bd", "view", "drop", "view back", "after"]
    assert image_array(fig.axes[1]).shape == (rlen, qlen) and image_array(fig.axes[4]).shape == (qlen, klen)
    # the colour is the source row: rows differ before the shift, and each row is one colour after it
    np.testing.assert_array_equal(image_array(fig.axes[0])[:, 0], [0, 1, 2])
    assert (image_array(fig.axes[4]) == np.arange(qlen)[:, None]).all()
    # cell (0, 0) after the shift came from row 0, column 0 + qlen - 0 = 3
    assert fig.axes[4].texts[0].get_text() == "03"
    with pytest.raises(ValueError, match="stages"):
        viz.draw_rel_shift([("distances", relative_positions(qlen, klen, attn_type="bi").expand(qlen, -1))])


def test_draw_matrix_draws_masked_cells_apart_from_small_values():
    prob = torch.tensor([[0.999, 0.001, 0.0], [0.5, 0.5, 0.0]])
    masked = torch.tensor([[False, False, True], [False, False, True]])
    ax = viz.draw_matrix(prob, masked=masked, vmin=0, vmax=1)
    shown = image_array(ax)
    assert np.ma.is_masked(shown[0, 2]) or np.isnan(shown[0, 2])  # masked: not a colour of the scale
    assert shown[0, 1] == pytest.approx(0.001)  # a small probability stays a colour of the scale
    assert len(ax.patches) == 2  # one hatched patch per masked cell
    with pytest.raises(ValueError, match="masked"):
        viz.draw_matrix(prob, masked=masked[:, :2])


def test_draw_stage_errors_one_point_per_stage():
    errors = {"word_emb": 0.0, "layer0.bd": 1e-7, "layer0.prob": 0.3, "logits": 0.5}
    ax = viz.draw_stage_errors(errors, tol=1e-5, label="run")
    line = ax.get_lines()[0]
    assert len(line.get_xdata()) == 4
    assert line.get_ydata()[0] == 1e-12  # an exact zero is drawn at the floor of the log scale
    assert [t.get_text() for t in ax.get_xticklabels()] == list(errors)


def test_draw_distributions_one_bar_per_outcome_and_vector():
    ax = viz.draw_distributions({"p": torch.tensor([0.5, 0.5, 0.0]), "q": [0.2, 0.3, 0.5]}, labels=["a", "b", "c"])
    assert len(ax.patches) == 6
    with pytest.raises(ValueError, match="one length"):
        viz.draw_distributions({"p": [1.0], "q": [0.5, 0.5]})


def test_bad_shape_names_the_argument():
    with pytest.raises(ValueError, match="m: expected a 2-D matrix"):
        viz.draw_matrix(torch.zeros(2, 3, 4))


def test_save_figure_writes_a_png_at_150_dpi_or_more(tmp_path):
    from PIL import Image

    fig, _ = plt.subplots(figsize=(3, 2))
    path = viz.save_figure(fig, tmp_path / "sub" / "f.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size < 200_000
    with Image.open(path) as image:
        assert image.info["dpi"][0] == pytest.approx(150, abs=1)
        assert image.width >= 0.8 * 3 * 150  # bbox "tight" may trim the margins, not the resolution
    with pytest.raises(ValueError, match="dpi"):
        viz.save_figure(fig, tmp_path / "low.png", dpi=100)


def test_segment_recurrence_schematic_field_grows_one_segment_per_layer():
    from matplotlib.patches import FancyBboxPatch

    from xlnet_ref.drawing import diagrams

    ax = diagrams.draw_segment_recurrence(n_layer=3, n_segments=4, seg_len=2)
    fields = sorted((p for p in ax.patches if isinstance(p, FancyBboxPatch)), key=lambda p: p.get_y())
    assert len(fields) == 4  # one shaded receptive field per layer h^0..h^3
    widths = [p.get_width() for p in fields]  # from h^0 (widest) up to h^3 (the current segment only)
    steps = np.diff(widths[::-1])
    assert np.allclose(steps, steps[0]) and steps[0] > 0  # each layer down adds one segment's width
    assert any(diagrams.SCHEMATIC_NOTE in t.get_text() for t in ax.texts)  # labelled as hand-drawn
    with pytest.raises(ValueError, match="n_layer"):
        diagrams.draw_segment_recurrence(n_layer=0)

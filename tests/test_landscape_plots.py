"""Landscape figures: every kind writes PNG and PDF, panels share one colour scale, and the
wrong kind for a surface's dimension is a clear error."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import LogNorm

from alignsam_diag.errors import UserError
from alignsam_diag.landscape_types import Grid, Surface
from alignsam_diag.plots.landscape import plot_landscapes, shared_range
from alignsam_diag.plots.save import save_figure


def bowl(scale: float, dim: int = 2) -> Surface:
    """A computed quadratic bowl, scale·(x² + y²) + 0.05, with one cell left unfinished."""
    x = np.linspace(-1, 1, 11)
    grid = Grid(x, x if dim == 2 else None)
    X, Y = np.meshgrid(x, x) if dim == 2 else (x, 0 * x)
    surface = Surface.empty(grid)
    cells = np.arange(grid.size - 1)
    surface.record(cells, (scale * (X**2 + Y**2) + 0.05).ravel()[cells], np.full(len(cells), 0.9))
    return surface


SURFACES = {"SGD": bowl(8.0), "SAM": bowl(3.0), "Align-SAM": bowl(1.0)}


@pytest.mark.parametrize("kind", ["contour", "contourf", "heatmap", "surface"])
@pytest.mark.parametrize("log", [False, True])
def test_two_d_kinds_share_one_colour_scale(tmp_path, kind, log):
    fig = plot_landscapes(SURFACES, kind=kind, log=log)
    panels = [ax for ax in fig.axes if ax.get_title() in SURFACES]
    colourbars = [ax for ax in fig.axes if ax.get_ylabel() == "train loss"]
    assert [ax.get_title() for ax in panels] == list(SURFACES)
    assert len(colourbars) == 1  # one colour bar for all panels
    norms = [c.norm for ax in panels for c in ax.collections if c.get_array() is not None]
    expected = (0.05, 8.0 * 2 + 0.05)
    if kind == "surface" and log:  # 3-D heights are log10(loss), coloured linearly in them
        expected, log = np.log10(expected), False
    assert len(norms) == 3 and all(np.allclose((n.vmin, n.vmax), expected) for n in norms)
    assert all(isinstance(n, LogNorm) == log for n in norms)
    for ax in panels:
        assert ax.get_xlabel() == "direction 1" and ax.get_ylabel() == "direction 2"
    for suffix in (".png", ".pdf"):
        path = save_figure(fig, tmp_path / f"{kind}{suffix}")
        assert path.stat().st_size > 1000
    assert plt.get_fignums() == []  # no pyplot state leaked


def test_curves_and_accuracy(tmp_path):
    lines = {"SGD": bowl(8.0, dim=1), "SAM": bowl(2.0, dim=1)}
    fig = plot_landscapes(lines, kind="curve", log=True, zlim=(0.01, None))
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.get_lines()][:2] == ["SGD", "SAM"]
    assert ax.get_yscale() == "log" and ax.get_ylim()[0] == pytest.approx(0.01)
    assert save_figure(fig, tmp_path / "curve.pdf").stat().st_size > 1000
    fig = plot_landscapes(SURFACES, kind="heatmap", metric="acc", split="test")
    assert any(ax.get_ylabel() == "test accuracy (%)" for ax in fig.axes)


def test_wrong_kind_or_range_is_a_user_error():
    with pytest.raises(UserError, match="use --kind curve"):
        plot_landscapes({"a": bowl(1.0, dim=1)}, kind="contour")
    with pytest.raises(UserError, match="use --kind contour"):
        plot_landscapes(SURFACES, kind="curve")
    with pytest.raises(UserError, match="kind = scatter"):
        plot_landscapes(SURFACES, kind="scatter")
    with pytest.raises(UserError, match="below"):
        shared_range([np.ones(3)], log=False, zlim=(2.0, 1.0))
    with pytest.raises(UserError, match="nothing to plot"):
        plot_landscapes({"empty": Surface.empty(Grid(np.zeros(2), np.zeros(2)))})


@pytest.mark.parametrize("kind, top", [("surface", "10"), ("curve", "5")])
def test_log_axes_are_labelled_in_values(kind, top):
    """A log z axis (3-D, heights log10) or y axis (curves) shows the values, 1-2-5 per decade
    (loss 0.05 … 16.05 on the planes, 0.05 … 8.05 along the line)."""
    surfaces = SURFACES if kind == "surface" else {"SGD": bowl(8.0, dim=1)}
    fig = plot_landscapes(surfaces, kind=kind, log=True)
    fig.draw_without_rendering()
    axis = fig.axes[0].zaxis if kind == "surface" else fig.axes[0].yaxis
    labels = [t.get_text() for t in axis.get_ticklabels() if t.get_text()]
    expected = ["0.05", "0.1", "0.2", "0.5", "1", "2", "5", "10"]
    assert labels == expected[:expected.index(top) + 1]

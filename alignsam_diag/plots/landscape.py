"""Loss-landscape figures from stored surfaces: contour lines, filled contours, heatmap, 3-D
surface (2-D surfaces) and curves (1-D lines).

Several checkpoints are drawn side by side — the paper's Figures 3–4 put SGD, SAM and
Align-SAM in three panels — with one colour scale, one z-range and one colour bar, so equal
colours mean equal values in every panel. Blue is better for loss and accuracy alike (low
loss, high accuracy), red worse; no colour of the map is pale, so every contour line shows on
white. Panel titles and 1-D curves take the optimizer's colour
(:mod:`alignsam_diag.plots.style`). Cells not computed yet are left blank.

Contour levels are evenly spaced on the colour scale. That scale is logarithmic for loss by
default: a basin at loss 0.4 in a plane that rises to 10 gets a third of the levels below 1.4,
where evenly spaced linear levels leave it two or three.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib import patheffects
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, LinearSegmentedColormap, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..errors import OptionError, UserError
from ..landscape_types import Surface
from .style import colours

KINDS = ("contour", "contourf", "heatmap", "surface", "curve")
METRICS = ("loss", "acc")
# low (better) = blue, through violet, to red; every colour dark enough for a thin line on white
LANDSCAPE_CMAP = LinearSegmentedColormap.from_list(
    "alignsam-landscape", ["#1b2f8f", "#3a78d6", "#8e5bb5", "#dc4a4a", "#8c0b1f"])
MIN_LOG_TICKS = 4  # labelled ticks on a logarithmic colour bar or axis, where the range allows


def _values(surface: Surface, metric: str) -> np.ndarray:
    """The metric's grid with NaN where not computed (accuracy in %)."""
    return surface.loss if metric == "loss" else 100 * surface.acc


def colour_map(metric: str) -> Colormap:
    """:data:`LANDSCAPE_CMAP` with blue at the better end: low loss, high accuracy."""
    return LANDSCAPE_CMAP if metric == "loss" else LANDSCAPE_CMAP.reversed()


def default_log(metric: str) -> bool:
    """The default colour scale: logarithmic for loss (resolves the basin), linear for accuracy."""
    return metric == "loss"


def shared_range(values: list[np.ndarray], log: bool, zlim: Optional[tuple[Optional[float], Optional[float]]] = None
                 ) -> tuple[float, float]:
    """(low, high) over all panels: ``zlim``'s ends where given, else the data's (positive
    values only on a log scale)."""
    finite = np.concatenate([v[np.isfinite(v)].ravel() for v in values])
    if log:
        finite = finite[finite > 0]
    if finite.size == 0:
        raise UserError("nothing to plot: no cell of these surfaces is computed yet (or none is positive for --log).")
    low, high = zlim if zlim is not None else (None, None)
    if low is not None and high is not None and low >= high:
        raise UserError(f"--zmin {low} must be below --zmax {high}.")
    low = float(finite.min()) if low is None else low
    high = float(finite.max()) if high is None else high
    if log and low <= 0:
        raise UserError(f"--zmin {low}: a log scale needs a positive lower end.")
    if high <= low:  # a flat surface
        high = low + max(abs(low) * 0.01, 1e-12)
    return low, high


def log_ticks(low: float, high: float) -> np.ndarray:
    """Tick values for a logarithmic scale over [low, high] (low > 0): decades, else 1-2-5, else
    1…9 per decade — the first that gives :data:`MIN_LOG_TICKS` ticks in the range; a range too
    narrow for any gets that many evenly spaced (in log) values rounded to 3 digits."""
    decades = np.arange(np.floor(np.log10(low)), np.ceil(np.log10(high)) + 1)
    for subs in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = np.array([s * 10.0 ** d for d in decades for s in subs])
        ticks = ticks[(ticks >= low * (1 - 1e-9)) & (ticks <= high * (1 + 1e-9))]
        if len(ticks) >= MIN_LOG_TICKS:
            return ticks
    return np.array([float(f"{t:.3g}") for t in np.geomspace(low, high, MIN_LOG_TICKS)])


def _log_ticks_and_labels(zrange: tuple[float, float]) -> tuple[np.ndarray, list[str]]:
    """:func:`log_ticks` over ``zrange`` and their labels ("0.05", "2")."""
    ticks = log_ticks(*zrange)
    return ticks, [f"{t:g}" for t in ticks]


def plot_landscapes(surfaces: Mapping[str, Surface], kind: str = "contour", metric: str = "loss",
                    log: Optional[bool] = None, zlim: Optional[tuple[Optional[float], Optional[float]]] = None,
                    levels: int = 30, split: str = "train",
                    optimizers: Optional[Sequence[Optional[str]]] = None) -> Figure:
    """One figure of all ``surfaces`` (label -> surface, drawn in order).

    kind: contour | contourf | heatmap | surface (2-D surfaces, one panel each) or curve (1-D
    surfaces, overlaid). metric: ``loss`` (mean cross-entropy, nats) or ``acc`` (accuracy, %).
    log: logarithmic colour scale (and z/y axis); None = :func:`default_log`. levels: contour
    levels, evenly spaced on that scale. zlim: (low, high) shared by all panels, either end None
    = from the data; values beyond get the end colour (contour lines: none; 3-D surface: clipped
    to the range). optimizers: each surface's optimizer name, in order, for the colours of
    titles and curves (:func:`alignsam_diag.plots.style.colours`)."""
    if kind not in KINDS:
        raise OptionError("kind", kind, f"choose one of {', '.join(KINDS)}.")
    if metric not in METRICS:
        raise OptionError("metric", metric, "choose loss or acc.")
    dims = {s.grid.dim for s in surfaces.values()}
    if dims != ({1} if kind == "curve" else {2}):
        hint = "use --kind contour, contourf, heatmap or surface" if kind == "curve" else "use --kind curve"
        raise UserError(f"--kind {kind} needs {'1-D' if kind == 'curve' else '2-D'} surfaces and these are "
                        f"{'/'.join(f'{d}-D' for d in sorted(dims))}; {hint}.")
    log = default_log(metric) if log is None else log
    values = {label: _values(s, metric) for label, s in surfaces.items()}
    zrange = shared_range(list(values.values()), log, zlim)
    zlabel = f"{split} {'loss' if metric == 'loss' else 'accuracy (%)'}"
    run_colours = colours(optimizers or [None] * len(surfaces))
    if kind == "curve":
        return _curves(surfaces, values, run_colours, log, zrange, zlim, zlabel)
    norm = LogNorm(*zrange) if log else Normalize(*zrange)
    cmap = colour_map(metric)
    fig = Figure(figsize=(4.2 * len(surfaces) + 1.2, 4.4), layout="constrained")
    axes = []
    for i, ((label, surface), colour) in enumerate(zip(surfaces.items(), run_colours)):
        X, Y = np.meshgrid(surface.grid.x, surface.grid.y)
        if kind == "surface":
            ax = fig.add_subplot(1, len(surfaces), i + 1, projection="3d")
            _surface_panel(ax, X, Y, values[label], cmap, log, zlabel, zrange)
        else:
            ax = fig.add_subplot(1, len(surfaces), i + 1)
            ax.set_box_aspect(1)
            _flat_panel(ax, kind, X, Y, values[label], norm, cmap, log, levels, zrange)
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.set_title(label, color=colour, fontweight="bold")
        axes.append(ax)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, label=zlabel, shrink=0.85)
    if log:
        ticks, tick_labels = _log_ticks_and_labels(zrange)
        bar.set_ticks(ticks, labels=tick_labels)
        bar.minorticks_off()
    return fig


def _flat_panel(ax, kind: str, X: np.ndarray, Y: np.ndarray, Z: np.ndarray, norm: Normalize, cmap: Colormap,
                log: bool, levels: int, zrange: tuple[float, float]) -> None:
    ticks = np.geomspace(*zrange, levels) if log else np.linspace(*zrange, levels)
    if kind == "heatmap":
        ax.pcolormesh(X, Y, Z, shading="nearest", cmap=cmap, norm=norm)
    elif kind == "contourf":
        ax.contourf(X, Y, Z, levels=ticks, cmap=cmap, norm=norm, extend="both")
    else:
        ax.contour(X, Y, Z, levels=ticks, cmap=cmap, norm=norm, linewidths=1.0)
    # the model itself: a black cross with a white halo shows on white and on dark fills
    ax.plot([0], [0], marker="+", color="black", markersize=10, markeredgewidth=1.5,
            path_effects=[patheffects.withStroke(linewidth=3.5, foreground="white")])


def _surface_panel(ax, X: np.ndarray, Y: np.ndarray, Z: np.ndarray, cmap: Colormap, log: bool,
                   zlabel: str, zrange: tuple[float, float]) -> None:
    """3-D surface clipped to ``zrange``; on a log scale the height is log10 of the value
    (matplotlib's 3-D axes have no log scale), coloured linearly in it — the same colours as
    the shared logarithmic colour bar — with the z ticks labelled in values, as on that bar."""
    height = np.log10(np.clip(Z, *zrange)) if log else np.clip(Z, *zrange)
    limits = tuple(np.log10(zrange)) if log else zrange
    ax.plot_surface(X, Y, np.ma.masked_invalid(height), cmap=cmap, norm=Normalize(*limits), linewidth=0,
                    antialiased=False, rcount=X.shape[0], ccount=X.shape[1])
    if log:
        ticks, tick_labels = _log_ticks_and_labels(zrange)
        ax.set_zticks(np.log10(ticks), labels=tick_labels)
    ax.set_zlim(*limits)
    ax.set_zlabel(f"{zlabel} (log scale)" if log else zlabel)


def _padded(zrange: tuple[float, float], zlim: Optional[tuple[Optional[float], Optional[float]]],
            log: bool) -> tuple[float, float]:
    """``zrange`` widened by 3 % (of its log on a log scale) at the ends that come from the data,
    so the lowest and highest points are not cut by the frame; ends given in ``zlim`` stay."""
    low, high = zrange
    if log:
        factor = (high / low) ** 0.03
        padded = (low / factor, high * factor)
    else:
        pad = 0.03 * (high - low)
        padded = (low - pad, high + pad)
    given_low, given_high = zlim if zlim is not None else (None, None)
    return (padded[0] if given_low is None else low, padded[1] if given_high is None else high)


def _curves(surfaces: Mapping[str, Surface], values: Mapping[str, np.ndarray], run_colours: Sequence[str],
            log: bool, zrange: tuple[float, float], zlim: Optional[tuple[Optional[float], Optional[float]]],
            zlabel: str) -> Figure:
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for (label, surface), colour in zip(surfaces.items(), run_colours):
        ax.plot(surface.grid.x, values[label], marker=".", color=colour, label=label)
    if log:
        ax.set_yscale("log")
        ticks, tick_labels = _log_ticks_and_labels(zrange)
        ax.set_yticks(ticks, labels=tick_labels)
        ax.minorticks_off()
    ax.set_ylim(*_padded(zrange, zlim, log))
    ax.axvline(0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("direction 1")
    ax.set_ylabel(zlabel)
    ax.legend()
    return fig

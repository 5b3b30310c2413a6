"""Loss-landscape figures from stored surfaces: contour lines, filled contours, heatmap, 3-D
surface (2-D surfaces) and curves (1-D lines).

Several checkpoints are drawn side by side — the paper's Figures 3–4 put SGD, SAM and
Align-SAM in three panels — with one colour scale, one z-range and one colour bar, so equal
colours mean equal loss in every panel. Low values are blue, high values red. Cells not
computed yet are left blank.
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..errors import UserError
from ..store.landscape import Surface

KINDS = ("contour", "contourf", "heatmap", "surface", "curve")
METRICS = ("loss", "acc")


def _values(surface: Surface, metric: str) -> np.ndarray:
    """The metric's grid with NaN where not computed (accuracy in %)."""
    return surface.loss if metric == "loss" else 100 * surface.acc


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


def plot_landscapes(surfaces: Mapping[str, Surface], kind: str = "contour", metric: str = "loss",
                    log: bool = False, zlim: Optional[tuple[Optional[float], Optional[float]]] = None,
                    levels: int = 30, split: str = "train", cmap: str = "coolwarm") -> Figure:
    """One figure of all ``surfaces`` (label -> surface, drawn in order).

    kind: contour | contourf | heatmap | surface (2-D surfaces, one panel each) or curve (1-D
    surfaces, overlaid). metric: ``loss`` (mean cross-entropy) or ``acc`` (accuracy, %).
    log: logarithmic colour scale (and z/y axis). zlim: (low, high) shared by all panels, either
    end None = from the data; values beyond get the end colour (contour lines: none; 3-D
    surface: clipped to the range)."""
    if kind not in KINDS:
        raise UserError(f"--kind {kind}: choose one of {', '.join(KINDS)}.")
    if metric not in METRICS:
        raise UserError(f"--metric {metric}: choose loss or acc.")
    dims = {s.grid.dim for s in surfaces.values()}
    if dims != ({1} if kind == "curve" else {2}):
        hint = "use --kind contour, contourf, heatmap or surface" if kind == "curve" else "use --kind curve"
        raise UserError(f"--kind {kind} needs {'1-D' if kind == 'curve' else '2-D'} surfaces and these are "
                        f"{'/'.join(f'{d}-D' for d in sorted(dims))}; {hint}.")
    values = {label: _values(s, metric) for label, s in surfaces.items()}
    low, high = shared_range(list(values.values()), log, zlim)
    zlabel = f"{split} {'loss' if metric == 'loss' else 'accuracy (%)'}"
    if kind == "curve":
        return _curves(surfaces, values, log, (low, high), zlabel)
    norm = LogNorm(low, high) if log else Normalize(low, high)
    fig = Figure(figsize=(4.4 * len(surfaces) + 1.2, 4.2), layout="constrained")
    axes = []
    for i, (label, surface) in enumerate(surfaces.items()):
        X, Y = np.meshgrid(surface.grid.x, surface.grid.y)
        Z = values[label]
        if kind == "surface":
            ax = fig.add_subplot(1, len(surfaces), i + 1, projection="3d")
            _surface_panel(ax, X, Y, Z, cmap, log, zlabel, (low, high))
        else:
            ax = fig.add_subplot(1, len(surfaces), i + 1)
            _flat_panel(ax, kind, X, Y, Z, norm, cmap, log, levels, (low, high))
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.set_title(label)
        axes.append(ax)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, label=zlabel, shrink=0.85)
    return fig


def _flat_panel(ax, kind: str, X: np.ndarray, Y: np.ndarray, Z: np.ndarray, norm: Normalize, cmap: str,
                log: bool, levels: int, zrange: tuple[float, float]) -> None:
    ticks = np.geomspace(*zrange, levels) if log else np.linspace(*zrange, levels)
    if kind == "heatmap":
        ax.pcolormesh(X, Y, Z, shading="nearest", cmap=cmap, norm=norm)
    elif kind == "contourf":
        ax.contourf(X, Y, Z, levels=ticks, cmap=cmap, norm=norm, extend="both")
    else:
        ax.contour(X, Y, Z, levels=ticks, cmap=cmap, norm=norm, linewidths=1.0)
    ax.plot([0], [0], marker="+", color="black", markersize=8)  # the model itself


def _surface_panel(ax, X: np.ndarray, Y: np.ndarray, Z: np.ndarray, cmap: str, log: bool,
                   zlabel: str, zrange: tuple[float, float]) -> None:
    """3-D surface clipped to ``zrange``; on a log scale the height is log10 of the value
    (matplotlib's 3-D axes have no log scale), coloured linearly in it — the same colours as
    the shared logarithmic colour bar."""
    height = np.log10(np.clip(Z, *zrange)) if log else np.clip(Z, *zrange)
    limits = tuple(np.log10(zrange)) if log else zrange
    ax.plot_surface(X, Y, np.ma.masked_invalid(height), cmap=cmap, norm=Normalize(*limits), linewidth=0,
                    antialiased=False, rcount=X.shape[0], ccount=X.shape[1])
    ax.set_zlim(*limits)
    ax.set_zlabel(f"log10 {zlabel}" if log else zlabel)


def _curves(surfaces: Mapping[str, Surface], values: Mapping[str, np.ndarray], log: bool,
            zrange: tuple[float, float], zlabel: str) -> Figure:
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for label, surface in surfaces.items():
        ax.plot(surface.grid.x, values[label], marker=".", label=label)
    if log:
        ax.set_yscale("log")
    ax.set_ylim(*zrange)
    ax.axvline(0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("direction 1")
    ax.set_ylabel(zlabel)
    ax.legend()
    return fig

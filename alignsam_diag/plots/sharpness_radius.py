"""Sharpness against the radius ρ, from stored ``sharpness`` results: one panel per measure
(worst-case / average-case, norm, standard / adaptive, m), one curve per checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from ..store.sharpness import SharpnessRow
from .style import colours

QUANTITIES = {"loss": "loss increase L(w + δ) − L(w)", "error": "error increase (percentage points)"}


@dataclass
class RadiusCurve:
    """One checkpoint's values at increasing radii: rho, value (K,) and their standard errors
    (K,), NaN where there is none (one worst-case group)."""

    rho: np.ndarray
    value: np.ndarray
    stderr: np.ndarray


def panel_name(row: SharpnessRow) -> str:
    """The panel a row belongs to, named by its perturbation set, e.g. "worst-case, ‖δ ⊘ |w|‖₂ ≤ ρ,
    m = 128" or "average-case, δ ~ N(0, ρ²I), all samples" (the plain measure)."""
    e = row.estimate
    groups = "all samples" if e.m == e.samples else f"m = {e.m}"
    if row.measure == "worst":
        delta = "δ ⊘ |w|" if row.adaptive else "δ"
        ball = f"‖{delta}‖₂ ≤ ρ" if row.norm == "l2" else f"‖{delta}‖∞ ≤ ρ"
        return f"worst-case, {ball}, {groups}"
    noise = "N(0, ρ²I)" if row.norm == "l2" else "U[−ρ, ρ]"
    return f"average-case, δ ~ {'|w| ⊙ ' if row.adaptive else ''}{noise}, {groups}"


def radius_panels(rows: Sequence[SharpnessRow], label_of: Mapping[str, str],
                  quantity: str = "loss") -> dict[str, dict[str, RadiusCurve]]:
    """The rows as panels (:func:`panel_name`, in order of first appearance) of curves, one per
    checkpoint (labelled by ``label_of``, checkpoint -> label), sorted by ρ; ``quantity`` "loss"
    or "error" (in percentage points)."""
    scale = 100.0 if quantity == "error" else 1.0
    points: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    for row in rows:
        e = row.estimate
        value, stderr = (e.loss_increase, e.loss_stderr) if quantity == "loss" else (e.error_increase, e.error_stderr)
        points.setdefault(panel_name(row), {}).setdefault(label_of[row.checkpoint], []).append(
            (row.rho, scale * value, scale * stderr))
    return {name: {label: RadiusCurve(*(np.array(column) for column in zip(*sorted(values))))
                   for label, values in curves.items()} for name, curves in points.items()}


def plot_sharpness_radius(panels: Mapping[str, Mapping[str, RadiusCurve]], labels: Sequence[str],
                          optimizers: Sequence[Optional[str]], ylabel: str, title: str) -> Figure:
    """One panel per entry of ``panels`` (panel title -> label -> curve), two per row, each with
    the curves of the runs ``labels`` it holds, in that order; one colour per run from its
    optimizer (:func:`alignsam_diag.plots.style.colours` of ``optimizers``, aligned with
    ``labels``), the same in every panel. Standard errors are drawn as error bars. The radius
    axis is logarithmic when the radii span a factor of 10 or more, and then so is the value
    axis when every value is positive (sharpness grows like ρ² or ρ: straight lines)."""
    colour = dict(zip(labels, colours(optimizers)))
    count = len(panels)
    columns = min(count, 2)
    rows = -(-count // columns)
    fig = Figure(figsize=(4.4 * columns + 2.2, 3.6 * rows + 0.6), layout="constrained")
    grid = fig.subplots(rows, columns, squeeze=False)
    axes = grid.reshape(-1)[:count]
    for spare in grid.reshape(-1)[count:]:
        spare.set_visible(False)
    for ax, (name, curves) in zip(axes, panels.items()):
        radii = np.concatenate([c.rho for c in curves.values()])
        values = np.concatenate([c.value for c in curves.values()])
        log_x = radii.min() > 0 and radii.max() / radii.min() >= 10
        for label in (label for label in labels if label in curves):
            c = curves[label]
            errors = np.where(np.isnan(c.stderr), 0.0, c.stderr)
            ax.errorbar(c.rho, c.value, yerr=errors if errors.any() else None, color=colour[label], marker="o",
                        ms=4, lw=1.3, capsize=3, label=label)
        if log_x:
            ax.set_xscale("log")
            if (values > 0).all():
                ax.set_yscale("log")
        else:
            ax.axhline(0.0, color="0.6", lw=0.6, zorder=0)
        ax.set(xlabel="radius ρ", title=name)
        ax.grid(alpha=0.3, which="both" if log_x else "major")
    for ax in grid[:, 0]:
        ax.set_ylabel(ylabel)
    fig.suptitle(title, fontsize="medium")
    grid[0, -1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))  # beside the panels
    return fig

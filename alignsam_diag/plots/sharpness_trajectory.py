"""λ_max of the Hessian along training (``train --track-sharpness-every``), with the
edge-of-stability threshold 2/η of the learning rate η at each logged step (Cohen et al. 2021:
gradient descent cannot stay where λ_max > 2/η; with heavy-ball momentum β the bound is
2(1 + β)/η)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

from ..store.tracking import StepLog
from .landscape import log_ticks
from .style import colours


def plot_sharpness(logs: dict[str, StepLog], optimizers: Optional[Sequence[Optional[str]]] = None) -> Figure:
    """λ_max against the optimizer step, one colour per run (:func:`~.style.colours` of
    ``optimizers``, in the order of ``logs``, whose keys are the legend labels): points and line
    for λ_max (hollow where Lanczos did not reach its tolerance) and dashed 2/η — in the run's
    colour, or once in grey when every run has the same learning rate at the same steps.
    Log-scaled y with labelled ticks, its range set by λ_max and the lowest 2/η (2/η runs off the
    top near the ends of warm-up and of the schedule, where η → 0). A top axis gives epochs when
    the runs share their steps per epoch."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    run_colours = colours(optimizers or [None] * len(logs))
    thresholds = [(log.columns["step"], _threshold(log.columns["lr"])) for log in logs.values()]
    shared = all(np.array_equal(t[0], thresholds[0][0]) and np.array_equal(t[1], thresholds[0][1], equal_nan=True)
                 for t in thresholds)
    values = []
    for (label, log), colour, (step, edge) in zip(logs.items(), run_colours, thresholds):
        lam, converged = log.columns["lambda_max"], log.columns["converged"].astype(bool)
        ax.plot(step, lam, "-", color=colour, label=label, linewidth=1.5)
        ax.plot(step[converged], lam[converged], "o", color=colour, markersize=3)
        ax.plot(step[~converged], lam[~converged], "o", color=colour, markersize=5, markerfacecolor="white")
        if not shared:
            ax.plot(step, edge, "--", color=colour, linewidth=1.0)
        values += [lam[lam > 0], edge[np.isfinite(edge)].min(initial=np.inf, keepdims=True)]
    if shared:
        ax.plot(*thresholds[0], "--", color="0.35", linewidth=1.0)
    span = np.concatenate(values)
    span = span[np.isfinite(span)]
    low, high = (span.min() / 1.5, span.max() * 1.5) if len(span) else (0.1, 10.0)
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    ticks = log_ticks(low, high)
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="optimizer step", ylabel=r"$\lambda_{\max}$ of the training-loss Hessian",
           title=r"Sharpness along training; dashed: $2/\eta$, the edge of stability")
    edge_line = Line2D([], [], color="0.35" if shared else "black", linestyle="--", linewidth=1.0,
                       label=r"$2/\eta$ ($\eta$: learning rate)")
    ax.legend(handles=[*ax.get_legend_handles_labels()[0], edge_line], fontsize="small")
    per_epoch = {log.steps_per_epoch for log in logs.values()}
    if len(per_epoch) == 1:
        spe = per_epoch.pop()
        ax.secondary_xaxis("top", functions=(lambda s: s / spe, lambda e: e * spe)).set_xlabel("epoch")
    return fig


def _threshold(lr: np.ndarray) -> np.ndarray:
    """2/η per logged step (NaN where η is 0)."""
    with np.errstate(divide="ignore"):
        return np.where(lr > 0, 2.0 / np.where(lr > 0, lr, 1.0), np.nan)

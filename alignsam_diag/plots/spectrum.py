"""Hessian spectral density (SLQ) plots from stored ``eigs`` results."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..analysis.density import SpectralDensity
from .style import colours

FLOOR = 1e-6  # the log axis starts at FLOOR × the highest peak; lower densities sit on the axis


def plot_densities(densities: Mapping[str, SpectralDensity],
                   top_eigenvalues: Optional[Mapping[str, np.ndarray]] = None,
                   optimizers: Optional[Sequence[Optional[str]]] = None) -> Figure:
    """One panel: each run's density over eigenvalue (log-scale density axis, as in Ghorbani et
    al. 2019 and PyHessian), drawn in the order given, one colour per run
    (:func:`alignsam_diag.plots.style.colours` of ``optimizers``, the runs' optimizer names in
    that order); the top-k Lanczos eigenvalues of the same label, when given, as dotted lines.
    The title names the SLQ size (probe vectors × Lanczos steps) of the runs."""
    fig = Figure(figsize=(8.5, 4), layout="constrained")
    ax = fig.subplots()
    bottom = FLOOR * max(float(d.density.max()) for d in densities.values())
    for (label, d), colour in zip(densities.items(), colours(optimizers or [None] * len(densities))):
        ax.plot(d.grid, np.maximum(d.density, bottom), color=colour, lw=1.2, label=label)
        for value in (top_eigenvalues or {}).get(label, []):
            ax.axvline(value, color=colour, ls=":", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylim(bottom=bottom)
    sizes = {d.nodes.shape for d in densities.values()}  # (probe vectors, Lanczos steps) of each run
    detail = ", ".join(f"{p} probes × {m} steps" for p, m in sorted(sizes))
    ax.set(xlabel="eigenvalue", ylabel="density (log scale)", title=f"Hessian spectral density (SLQ: {detail})")
    handles = ax.get_legend_handles_labels()[0]
    if any(len(v) for v in (top_eigenvalues or {}).values()):
        handles.append(Line2D([], [], color="black", ls=":", lw=0.8, label="top-k eigenvalues (Lanczos)"))
    ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the panel
    return fig

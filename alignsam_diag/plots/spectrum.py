"""Hessian spectral density (SLQ) plots from stored ``eigs`` results."""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
from matplotlib.figure import Figure

from ..analysis.density import SpectralDensity

FLOOR = 1e-6  # the log axis starts at FLOOR × the highest peak; lower densities sit on the axis


def plot_densities(densities: Mapping[str, SpectralDensity],
                   top_eigenvalues: Optional[Mapping[str, np.ndarray]] = None) -> Figure:
    """One panel: each run's density over eigenvalue (log-scale density axis, as in Ghorbani et
    al. 2019 and PyHessian), one colour per label; the top-k Lanczos eigenvalues of the same label,
    when given, as dotted vertical lines."""
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    bottom = FLOOR * max(float(d.density.max()) for d in densities.values())
    for i, (label, d) in enumerate(densities.items()):
        ax.plot(d.grid, np.maximum(d.density, bottom), color=f"C{i}", lw=1.2,
                label=f"{label} ({d.nodes.shape[0]} runs × {d.nodes.shape[1]} steps)")
        for value in (top_eigenvalues or {}).get(label, []):
            ax.axvline(value, color=f"C{i}", ls=":", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylim(bottom=bottom)
    ax.set(xlabel="eigenvalue", ylabel="density (log scale)", title="Hessian spectral density (SLQ)")
    ax.legend(fontsize="small")
    return fig

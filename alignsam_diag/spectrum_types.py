"""Results of the Hessian-spectrum analyses, as plain data: what ``analysis/`` computes and
``store/`` maps to HDF5 (neither imports the other for them).

:class:`Spectrum` (Lanczos eigenpairs), :class:`TraceEstimate` (Hutchinson / Hutch++),
:class:`SpectralDensity` (stochastic Lanczos quadrature) and :class:`SavedLanczos`, the part of
an unfinished Lanczos run a file keeps so the run can continue
(:meth:`alignsam_diag.analysis.lanczos.LanczosState.restore`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch


@dataclass
class Spectrum:
    """Result of :func:`alignsam_diag.analysis.lanczos.lanczos`.

    eigenvalues: (k,) float64, ordered by ``which`` (LM: by |λ| descending, LA: descending,
        SA: ascending). residuals: (k,) true ‖H v − λ v‖ of each returned pair.
    eigenvectors: (k, P) float64 unit rows on the operator's device, or None.
    num_products: Hessian-vector products used (over all sessions of a resumed run).
    seconds: wall time (over all sessions). converged: every residual ≤ tol·|λ_max|.
    """

    eigenvalues: np.ndarray
    residuals: np.ndarray
    eigenvectors: Optional[torch.Tensor]
    num_products: int
    seconds: float
    converged: bool
    which: str
    tol: float


@dataclass
class TraceEstimate:
    """tr(H) ≈ value ± stderr (one standard error), from ``num_products`` products in ``seconds``.
    method: "hutchinson" or "hutch++"."""

    value: float
    stderr: float
    num_products: int
    seconds: float
    method: str


@dataclass
class SpectralDensity:
    """nodes, weights: (runs, steps) quadrature of each run (weights sum to 1 per row).
    grid, density: (G,) eigenvalue abscissae and the Gaussian-broadened density (∫ = 1).
    sigma: the Gaussian's standard deviation (eigenvalue units)."""

    nodes: np.ndarray
    weights: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    sigma: float
    num_products: int
    seconds: float

    def moments(self) -> tuple[float, float]:
        """Estimates of (1/P)·tr H and (1/P)·tr H² from the quadrature (exact per run)."""
        return float(np.mean(np.sum(self.weights * self.nodes, axis=1))), \
            float(np.mean(np.sum(self.weights * self.nodes ** 2, axis=1)))


@dataclass
class SavedLanczos:
    """An unfinished Lanczos run as a file keeps it.

    basis: (steps+1, P) float64, the orthonormal q_0 … q_steps. coeffs: (steps+1, steps)
    float64, column j = H q_j in the basis. restarts, seed, seconds: as in ``LanczosState``.
    limit: the most products the run may take (a store reserves limit + 1 rows once)."""

    basis: torch.Tensor
    coeffs: torch.Tensor
    restarts: int
    seed: int
    seconds: float
    limit: int

    @property
    def steps(self) -> int:
        return self.basis.shape[0] - 1

    @property
    def size(self) -> int:
        return self.basis.shape[1]

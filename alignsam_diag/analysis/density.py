"""Spectral density by stochastic Lanczos quadrature (SLQ; Ghorbani, Krishnan & Xiao 2019,
the method behind PyHessian's ``density``).

Each of ``runs`` Lanczos runs starts from a seeded Rademacher vector v (normalised) and takes
``steps`` products; the eigenvalues θ_i of its tridiagonal T and the squared first components
τ_i of T's eigenvectors form a Gauss quadrature with Σ_i τ_i f(θ_i) = vᵀf(H)v exactly for
polynomials f of degree < 2·steps. Since E[vᵀf(H)v] = tr f(H)/P, the average over runs of
Σ_i τ_i δ(t − θ_i) estimates the spectral density (1/P) Σ_j δ(t − λ_j); each δ is broadened
into a Gaussian of width ``sigma`` on a grid. The runs advance in lockstep, so one data pass
(``op.matmat``) serves every run. Weights sum to 1 per run, so the density integrates to 1.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch

from ..errors import OptionError
from ..progress import ProgressFn, report
from ..spectrum_types import SpectralDensity
from .lanczos import LanczosState, LinearOperator
from .trace import rademacher


def quadrature(op: LinearOperator, steps: int = 80, runs: int = 4, seed: int = 0,
               progress: Optional[ProgressFn] = None) -> tuple[np.ndarray, np.ndarray]:
    """SLQ nodes and weights, each (runs, steps'), steps' = min(steps, P). Run r starts from
    ``rademacher(1, P, seed + r)``."""
    for option, value in (("steps", steps), ("runs", runs)):
        if value < 1:
            raise OptionError(option, value, "must be at least 1.")
    size = op.shape[0]
    steps = min(steps, size)
    states = [LanczosState.start(size, seed + r, op.device, first=rademacher(1, size, seed + r)[0])
              for r in range(runs)]
    for step in range(steps):
        products = op.matmat(torch.stack([s.next_vector() for s in states]))
        for state, product in zip(states, products):
            state.absorb(product)
        report(progress, "density", step + 1, steps)
    nodes, weights = [], []
    for state in states:
        theta, vectors = np.linalg.eigh(state.tridiagonal())
        nodes.append(theta)
        weights.append(vectors[0] ** 2)
    return np.array(nodes), np.array(weights)


def broaden(nodes: np.ndarray, weights: np.ndarray, sigma: Optional[float] = None,
            points: int = 2000) -> tuple[np.ndarray, np.ndarray, float]:
    """(grid (points,), density (points,), sigma): the quadrature averaged over runs, each node a
    Gaussian of width ``sigma`` (default: 1/200 of the node range). The grid extends 6·sigma past
    the extreme nodes, so the density integrates to 1 up to discretisation."""
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        sigma = max(hi - lo, abs(hi), 1e-12) / 200
    grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, points)
    gauss = np.exp(-0.5 * ((grid[:, None] - nodes.reshape(-1)[None, :]) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    density = gauss @ weights.reshape(-1) / nodes.shape[0]
    return grid, density, sigma


def spectral_density(op: LinearOperator, steps: int = 80, runs: int = 4, seed: int = 0,
                     sigma: Optional[float] = None, points: int = 2000,
                     progress: Optional[ProgressFn] = None) -> SpectralDensity:
    """SLQ density of ``op``: ``runs`` × min(steps, P) products in min(steps, P) data passes."""
    started = time.perf_counter()
    nodes, weights = quadrature(op, steps, runs, seed, progress)
    grid, density, sigma = broaden(nodes, weights, sigma, points)
    return SpectralDensity(nodes, weights, grid, density, sigma, nodes.size, time.perf_counter() - started)

"""Stochastic trace estimates of a symmetric operator, with standard errors.

Hutchinson: tr(H) ≈ mean of zᵀHz over Rademacher probes z (±1 entries); the standard error is
the sample standard deviation over √(probes). Hutch++ (Meyer, Musco, Musco & Woodruff 2021):
a third of the products sketch the dominant range, Q = orth(H S); tr(QᵀHQ) is computed exactly
(another third) and Hutchinson estimates the rest on (I − QQᵀ)z (last third), so the standard
error is that of the deflated remainder, usually far smaller when a few eigenvalues dominate.

Probes are applied in blocks with ``op.matmat`` (one data pass per block).
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch

from ..errors import OptionError
from ..progress import ProgressFn, report
from ..spectrum_types import TraceEstimate
from .lanczos import LinearOperator


def rademacher(count: int, size: int, seed: int) -> torch.Tensor:
    """(count, size) float64 matrix of seeded ±1 entries (drawn on the CPU)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (count, size), generator=gen, dtype=torch.float64).mul_(2).sub_(1)


def apply_in_blocks(op: LinearOperator, vectors: torch.Tensor, block: int,
                    progress: Optional[ProgressFn] = None, task: str = "trace") -> torch.Tensor:
    """H applied to each row of ``vectors`` (K, P), ``block`` rows per data pass; (K, P) float64."""
    out = []
    for start in range(0, len(vectors), block):
        out.append(op.matmat(vectors[start:start + block].to(op.device)).double())
        report(progress, task, min(start + block, len(vectors)), len(vectors))
    return torch.cat(out)


def _mean_and_stderr(samples: torch.Tensor) -> tuple[float, float]:
    values = samples.cpu().numpy()
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("inf")


def hutchinson(op: LinearOperator, probes: int = 100, seed: int = 0, block: int = 10,
               progress: Optional[ProgressFn] = None) -> TraceEstimate:
    """Hutchinson's estimate of tr(op) from ``probes`` Rademacher probes."""
    if probes < 2:
        raise OptionError("probes", probes, "need at least 2 probes for a standard error.")
    started = time.perf_counter()
    z = rademacher(probes, op.shape[0], seed).to(op.device)
    quad = (z * apply_in_blocks(op, z, block, progress)).sum(dim=1)
    value, stderr = _mean_and_stderr(quad)
    return TraceEstimate(value, stderr, probes, time.perf_counter() - started, "hutchinson")


def hutch_plus_plus(op: LinearOperator, products: int = 99, seed: int = 0, block: int = 10,
                    progress: Optional[ProgressFn] = None) -> TraceEstimate:
    """Hutch++ estimate of tr(op) from ``products`` products (a multiple of 3 is used: the
    largest one not above ``products``), with the standard error of its Hutchinson part."""
    third = products // 3
    if third < 2:
        raise OptionError("products", products, "Hutch++ needs at least 6 products.")
    started = time.perf_counter()
    size = op.shape[0]
    sketch = rademacher(third, size, seed).to(op.device)
    q, _ = torch.linalg.qr(apply_in_blocks(op, sketch, block, progress).T)  # (P, third), orthonormal columns
    low_rank = float(torch.sum(q.T * apply_in_blocks(op, q.T, block, progress)))
    g = rademacher(third, size, seed + 1).to(op.device)
    g = g - (g @ q) @ q.T
    remainder, stderr = _mean_and_stderr((g * apply_in_blocks(op, g, block, progress)).sum(dim=1))
    return TraceEstimate(low_rank + remainder, stderr, 3 * third, time.perf_counter() - started, "hutch++")


TRACE_METHODS = {"hutchinson": hutchinson, "hutch++": hutch_plus_plus}

"""The paper's Table 10 from stored ``eigs`` results: λ1 and the ratios λ1/λ2 … λ1/λk per
checkpoint, with the products and seconds spent and, where estimated, the trace."""

from __future__ import annotations

from typing import Optional, Sequence

from ..store.spectrum import EigsRecord
from .tables import Cell, Table


def table10(records: Sequence[EigsRecord], labels: Optional[Sequence[str]] = None) -> Table:
    """One row per record (``labels``: the row names, default the checkpoints as given to eigs),
    as many ratio columns as the records have eigenvalues (the fewest of them)."""
    done = [r for r in records if r.spectrum is not None]
    k = min(len(r.spectrum.eigenvalues) for r in done) if done else 1
    with_trace = any(r.trace is not None for r in records)
    header: list = ["checkpoint", Cell("λ1", r"$\lambda_1$")]
    header += [Cell(f"λ1/λ{i}", rf"$\lambda_1/\lambda_{i}$") for i in range(2, k + 1)] + ["HVPs", "seconds"]
    header += [Cell("trace ± s.e.", r"trace $\pm$ s.e.")] if with_trace else []
    rows = []
    for label, r in zip(labels or [r.checkpoint for r in records], records):
        s = r.spectrum
        if s is None:
            rows.append([label, "unfinished"] + ["–"] * (len(header) - 2))
            continue
        cells = [label, f"{s.eigenvalues[0]:.4g}"]
        cells += [f"{s.eigenvalues[0] / v:.3g}" if v != 0 else "inf" for v in s.eigenvalues[1:k]]
        cells += [str(s.num_products), f"{s.seconds:.1f}" + ("" if s.converged else " (not converged)")]
        cells += [f"{r.trace.value:.4g} ± {r.trace.stderr:.2g}" if r.trace else "–"] if with_trace else []
        rows.append(cells)
    curvature = "Gauss-Newton" if records and all(r.options.get("curvature") == "ggn" for r in records) else "Hessian"
    caption = Cell(f"Top {curvature} eigenvalue λ1 and ratios λ1/λi (paper Table 10).",
                   rf"Top {curvature} eigenvalue $\lambda_1$ and ratios $\lambda_1/\lambda_i$ (paper Table 10).")
    return Table(header, rows, align="l" + "r" * (len(header) - 1), caption=caption, label="tab:eigs")

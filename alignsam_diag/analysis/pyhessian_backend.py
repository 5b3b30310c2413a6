"""PyHessian's own top-k eigenvalues through our plumbing (``eigs --backend pyhessian``).

PyHessian (Yao et al., PyPI 0.1) finds the top-k by power iteration with deflation and stops
when the Rayleigh quotient changes by less than ``tol`` (relative) between two products — not an
accuracy bound. This is how published Table-10 values were made, so users can reproduce them
side by side with ours. Its products are counted, and the true residual ‖Hv − λv‖ of each pair
it returns is measured with our operator (k extra products, not counted in its budget).
"""

from __future__ import annotations

import contextlib
import importlib
import time
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from .curvature import Batch, HessianOperator, LossFn
from .lanczos import Spectrum


@contextlib.contextmanager
def counted_products(hessian: object) -> Iterator[list[int]]:
    """Count PyHessian's products on ``hessian`` (a ``pyhessian.hessian`` instance) by wrapping
    the two functions it calls for them; yields a one-element counter list."""
    module = importlib.import_module("pyhessian.hessian")  # the module; the package re-exports the class

    count = [0]
    single, per_loader = module.hessian_vector_product, hessian.dataloader_hv_product

    def single_counted(*args, **kwargs):
        count[0] += 1
        return single(*args, **kwargs)

    def loader_counted(*args, **kwargs):
        count[0] += 1
        return per_loader(*args, **kwargs)

    module.hessian_vector_product, hessian.dataloader_hv_product = single_counted, loader_counted
    try:
        yield count
    finally:
        module.hessian_vector_product = single
        del hessian.dataloader_hv_product


def pyhessian_eigenvalues(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], k: int = 5,
                          tol: float = 1e-3, max_iter: int = 100, seed: int = 0) -> Spectrum:
    """PyHessian's ``hessian(...).eigenvalues(top_n=k, tol=tol, maxIter=max_iter)`` on ``batches``
    (one batch: its single-batch mode, which keeps the graph; several: its data-loader mode).

    The result lists PyHessian's values in its order (largest magnitude first, usually) with their
    true residuals; ``converged`` says whether they meet our criterion ‖Hv − λv‖ ≤ tol·|λ_max|.
    """
    try:
        from pyhessian import hessian
    except ImportError:
        raise UserError("--backend pyhessian needs the PyHessian package: "
                        "pip install 'alignsam-diag[peers]'.") from None
    cuda = next(model.parameters()).is_cuda
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        h = (hessian(model, loss_fn, data=batches[0], cuda=cuda) if len(batches) == 1
             else hessian(model, loss_fn, dataloader=batches, cuda=cuda))
        with counted_products(h) as count:
            values, vectors = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=k)
    seconds = time.perf_counter() - started
    for p in model.parameters():  # PyHessian leaves graph-carrying gradients behind
        p.grad = None
    flat = torch.stack([torch.cat([t.reshape(-1) for t in v]) for v in vectors]).double()
    eigenvalues = np.asarray(values, dtype=np.float64)
    with HessianOperator(model, loss_fn, batches) as op:
        hv = op.matmat(flat).double()
    lam = torch.from_numpy(eigenvalues).to(hv.device)
    residuals = (hv - lam[:, None] * flat.to(hv.device)).norm(dim=1).cpu().numpy()
    converged = bool(np.all(residuals <= tol * np.abs(eigenvalues).max()))
    return Spectrum(eigenvalues, residuals, flat, int(count[0]), seconds, converged, "LM", tol)

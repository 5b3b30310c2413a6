"""Top-k eigenpairs of a symmetric operator by Lanczos with full reorthogonalisation.

The operator is anything with ``shape``, ``device`` and ``matvec`` (see
:class:`~alignsam_diag.analysis.curvature.HessianOperator`). The Krylov basis and all
projection coefficients are kept in float64 whatever the operator's dtype. Each new product
H q_j is orthogonalised against the whole basis by classical Gram–Schmidt applied twice
("twice is enough"), which prevents the ghost copies of λ1 that plain Lanczos produces.

Every coefficient of that orthogonalisation is kept, so each product is expanded exactly in
the orthonormal basis: H q_j = Σ_i C[i, j] q_i. The Ritz values come from the symmetric
tridiagonal T (diagonal C[j, j], off-diagonal C[j+1, j]); for a Ritz pair (θ, v = Q s) the
residual is then the **true** ‖H v − θ v‖ = ‖C s − θ [s; 0]‖, computed from the products
already made (no extra products), including any asymmetry or rounding of the operator. The
run stops when every wanted pair has residual ≤ tol·|λ_max| (|λ_max| = largest |Ritz value|),
checked after every product (the check costs O(m³) with m ≤ a few hundred: negligible).
If the Krylov space is exhausted (an invariant subspace), the run continues from a fresh random
direction orthogonal to the basis. Like any single-vector Krylov method it finds one copy of a
repeated eigenvalue per direction that reaches it, so multiplicities can be under-reported.

The run's :class:`LanczosState` can be handed to a callback after each product and saved, and
a run started from a saved state continues exactly where it stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

import numpy as np
import torch

from ..errors import OptionError, UserError
from ..memory import require_memory
from ..progress import ProgressFn, report
from ..spectrum_types import SavedLanczos, Spectrum

WHICH: dict[str, str] = {"LM": "largest magnitude", "LA": "largest algebraic", "SA": "smallest algebraic"}
BREAKDOWN = 1e-10  # a new direction shorter than this fraction of ‖Hq‖ means the Krylov space is exhausted


class LinearOperator(Protocol):
    """What the algorithms need from an operator (a symmetric P×P matrix)."""

    shape: tuple[int, int]
    device: torch.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor: ...


def random_unit_vector(size: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A seeded Gaussian unit vector (size,) in float64, drawn on the CPU so that the same seed
    gives the same vector on every device."""
    v = torch.randn(size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (v / v.norm()).to(device)


@dataclass
class LanczosState:
    """Everything needed to continue a Lanczos run.

    basis: (capacity, P) float64 on the operator's device; rows 0 … steps are the orthonormal
        q_0 … q_steps, and q_steps is the next vector to multiply.
    coeffs: (capacity, capacity) float64 on the CPU; column j (< steps) holds H q_j in the basis.
    steps: products absorbed so far. restarts: fresh directions drawn after the Krylov space
        was exhausted. seed: of the start vector (restart r uses seed + r + 1).
    seconds: wall time spent so far, over all sessions of the run.
    limit: the most products the run may take (:func:`lanczos` sets min(max_iter, P)); a store
        can reserve room for limit + 1 basis rows once and then write only the new ones.
    """

    basis: torch.Tensor
    coeffs: torch.Tensor
    steps: int = 0
    restarts: int = 0
    seed: int = 0
    seconds: float = 0.0
    limit: int = 0

    @classmethod
    def start(cls, size: int, seed: int, device: torch.device | str, first: Optional[torch.Tensor] = None,
              capacity: int = 32, limit: Optional[int] = None) -> "LanczosState":
        """A fresh run from ``first`` (normalised here) or from a seeded Gaussian vector, of at
        most ``limit`` products (default: P)."""
        q0 = random_unit_vector(size, seed, device) if first is None else first.to(device, torch.float64)
        capacity = min(capacity, size + 1)
        basis = torch.zeros(capacity, size, dtype=torch.float64, device=device)
        basis[0] = q0 / q0.norm()
        return cls(basis, torch.zeros(capacity, capacity, dtype=torch.float64), seed=seed,
                   limit=size if limit is None else limit)

    @classmethod
    def restore(cls, saved: SavedLanczos) -> "LanczosState":
        """The state a file kept (:meth:`saved`), ready to continue."""
        steps = saved.steps
        full = torch.zeros(steps + 1, steps + 1, dtype=torch.float64)
        full[:, :steps] = saved.coeffs
        return cls(saved.basis.to(torch.float64).clone(), full, steps, saved.restarts, saved.seed, saved.seconds,
                   saved.limit)

    @property
    def size(self) -> int:
        return self.basis.shape[1]

    def saved(self) -> SavedLanczos:
        """What a file keeps of the run (views, not copies): what :meth:`restore` needs."""
        return SavedLanczos(self.basis[: self.steps + 1], self.coeffs[: self.steps + 1, : self.steps],
                            self.restarts, self.seed, self.seconds, self.limit)

    def next_vector(self) -> torch.Tensor:
        return self.basis[self.steps]

    def absorb(self, product: torch.Tensor) -> None:
        """Take H q_steps (P,), orthogonalise it against the basis and append the next vector."""
        j = self.steps
        w = product.to(self.basis.device, torch.float64).clone()
        scale = float(w.norm())
        h = self._orthogonalise(w)
        beta = float(w.norm())
        if j + 1 >= self.size:  # the basis spans everything: no next vector exists
            beta, w = 0.0, torch.zeros_like(w)
        elif beta <= BREAKDOWN * scale:  # invariant subspace: continue with a fresh direction
            self.restarts += 1
            beta = 0.0
            w = random_unit_vector(self.size, self.seed + self.restarts, w.device)
            self._orthogonalise(w)
        self._reserve(j + 2)
        self.coeffs[: j + 1, j] = h.cpu()
        self.coeffs[j + 1, j] = beta
        norm = w.norm()
        self.basis[j + 1] = w / norm if norm > 0 else w
        self.steps = j + 1

    def tridiagonal(self) -> np.ndarray:
        """T (steps, steps): diagonal C[j, j], off-diagonal C[j+1, j]."""
        m = self.steps
        c = self.coeffs[: m + 1, :m].numpy()
        off = np.diag(c, -1)[: m - 1]
        return np.diag(np.diag(c)) + np.diag(off, 1) + np.diag(off, -1)

    def ritz_residuals(self, theta: np.ndarray, s: np.ndarray) -> np.ndarray:
        """True residuals ‖H v_i − θ_i v_i‖ of the Ritz pairs (theta (r,), s (steps, r))."""
        c = self.coeffs[: self.steps + 1, : self.steps].numpy()
        padded = np.vstack([s, np.zeros((1, s.shape[1]))])
        return np.linalg.norm(c @ s - theta * padded, axis=0)

    def _orthogonalise(self, w: torch.Tensor) -> torch.Tensor:
        """Remove from w (in place) its components along q_0 … q_steps, twice; return them."""
        q = self.basis[: self.steps + 1]
        h = q @ w
        w -= h @ q
        again = q @ w
        w -= again @ q
        return h + again

    def _reserve(self, rows: int) -> None:
        """Grow the buffers (doubling) so that ``rows`` basis rows fit."""
        capacity = self.basis.shape[0]
        if rows <= capacity:
            return
        new = min(max(rows, 2 * capacity), self.size + 1)
        basis = torch.zeros(new, self.size, dtype=torch.float64, device=self.basis.device)
        basis[:capacity] = self.basis
        coeffs = torch.zeros(new, new, dtype=torch.float64)
        coeffs[:capacity, :capacity] = self.coeffs
        self.basis, self.coeffs = basis, coeffs


def select(theta: np.ndarray, which: str, k: int) -> np.ndarray:
    """Indices of the k wanted values of ``theta`` in ``which`` order."""
    key = {"LM": -np.abs(theta), "LA": -theta, "SA": theta}[which]
    return np.argsort(key, kind="stable")[:k]


def wanted_pairs(state: LanczosState, which: str, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(θ (k,), s (steps, k), residuals (k,), |λ_max|) for the current Krylov space."""
    theta, s = np.linalg.eigh(state.tridiagonal())
    chosen = select(theta, which, k)
    return theta[chosen], s[:, chosen], state.ritz_residuals(theta[chosen], s[:, chosen]), float(np.abs(theta).max())


def warm_start(vectors: torch.Tensor) -> torch.Tensor:
    """A start vector (P,) float64 for :func:`lanczos` from approximate eigenvectors (m, P): the sum
    of the rows, each scaled to unit length, so that each is an equal part of the first Krylov
    vector (their signs do not matter)."""
    rows = vectors.to(torch.float64)
    norms = rows.norm(dim=-1, keepdim=True)
    if rows.ndim != 2 or not bool(torch.all(norms > 0)):
        raise UserError("start vectors must be nonzero rows of a (m, P) array.")
    return (rows / norms).sum(dim=0)


def check_options(k: int, which: str, tol: float, max_iter: int, size: Optional[int] = None,
                  device: Optional[torch.device | str] = None) -> None:
    """Raise a one-line :class:`UserError` for invalid :func:`lanczos` options (``size``: the
    operator's dimension, when known) or, given the ``device`` of a fresh run, when its float64
    basis of min(max_iter, size) + 1 vectors cannot fit there."""
    if which not in WHICH:
        raise OptionError("which", which, "choose LM (largest magnitude), LA (largest) or SA (smallest).")
    if k < 1:
        raise OptionError("k", k, "must be at least 1.")
    if size is not None and k > size:
        raise OptionError("k", k, f"must be at most the number of parameters ({size}).")
    if max_iter < k:
        raise OptionError("max_iter", max_iter, f"must be at least {{k}} ({k}).", mentions=("k",))
    if not 0 < tol < math.inf:
        raise OptionError("tol", tol, "must be a positive number.")
    if size is not None and device is not None:
        rows = min(max_iter, size) + 1
        require_memory(rows * size * 8, f"a Lanczos basis of {rows} float64 vectors of {size:,} parameters",
                       "lower --max-iter or restrict --params", device)


def lanczos(op: LinearOperator, k: int = 5, which: str = "LM", tol: float = 1e-3, max_iter: int = 100,
            seed: int = 0, *, start: Optional[torch.Tensor] = None,
            state: Optional[LanczosState | SavedLanczos] = None,
            on_step: Optional[Callable[[LanczosState], None]] = None, eigenvectors: bool = False,
            progress: Optional[ProgressFn] = None) -> Spectrum:
    """The k eigenpairs of ``op`` wanted by ``which`` (LM | LA | SA).

    Stops when every wanted Ritz pair has ‖Hv − λv‖ ≤ tol·|λ_max|, after ``max_iter`` products,
    or when the Krylov space is the whole space. ``start`` (P,) is the first Krylov vector
    (default: a Gaussian one drawn with ``seed``); a vector close to the wanted eigenvectors'
    span — e.g. the sum of eigenvectors of a subsample's Hessian, see :func:`warm_start` —
    needs fewer products. ``state`` continues a run (same operator and seed): a
    :class:`LanczosState` or what a file kept of one (:class:`SavedLanczos`); ``on_step(state)`` is called after every product (save it there to make the run
    resumable; an exception raised there stops the run). ``progress`` gets task ``"lanczos"``.
    """
    size = op.shape[0]
    if isinstance(state, SavedLanczos):
        state = LanczosState.restore(state)
    check_options(k, which, tol, max_iter, size, op.device if state is None else None)
    limit = min(max_iter, size)
    if start is not None and start.shape != (size,):
        raise UserError(f"the start vector has shape {tuple(start.shape)}; the operator needs ({size},).")
    if state is None:
        state = LanczosState.start(size, seed, op.device, first=start, limit=limit)
    elif state.size != size:
        raise UserError(f"the saved Lanczos state has {state.size} parameters, the model {size}; "
                        "it belongs to another model — use another --out file.")
    else:
        state.limit = limit  # this run's, whatever the saved run had room for
    while True:
        if state.steps >= k:
            theta, s, residuals, lam_max = wanted_pairs(state, which, k)
            converged = bool(np.all(residuals <= tol * lam_max))
            report(progress, "lanczos", state.steps, limit, log=True, lambda1=float(theta[0]),
                   residual=float(residuals.max() / max(lam_max, 1e-300)),
                   ritz=" ".join(f"{t:.5g}" for t in theta))
            if converged or state.steps >= limit:
                break
        else:
            report(progress, "lanczos", state.steps, limit, log=True)
        started = time.perf_counter()
        state.absorb(op.matvec(state.next_vector()))
        state.seconds += time.perf_counter() - started
        if on_step is not None:
            on_step(state)
    vectors = None
    if eigenvectors:
        vectors = torch.from_numpy(np.ascontiguousarray(s.T)).to(state.basis.device) @ state.basis[: state.steps]
    return Spectrum(theta, residuals, vectors, state.steps, state.seconds, converged, which, tol)

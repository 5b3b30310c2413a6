"""Lanczos top-k against numpy's eigh of the dense Hessian: LM/LA/SA on three tiny models in
float64 and float32, true residuals, eigenvectors, a negative largest-magnitude eigenvalue,
no ghost eigenvalues on long runs, Krylov exhaustion, and input checks."""

import numpy as np
import pytest
import torch
from torch import nn

from alignsam_diag.analysis.curvature import HessianOperator
from alignsam_diag.analysis.lanczos import lanczos, select, warm_start
from alignsam_diag.errors import UserError
from test_hessian_operator import CASES, batches_of, dense_hessian, tiny_case


def exact_top(dense: np.ndarray, which: str, k: int) -> np.ndarray:
    values = np.linalg.eigvalsh(dense)
    return values[select(values, which, k)]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("which", ["LM", "LA", "SA"])
@pytest.mark.parametrize("dtype, tol, rtol", [(torch.float64, 1e-6, 1e-6), (torch.float32, 1e-3, 1e-4)])
def test_top_k_matches_dense_eigh(name, which, dtype, tol, rtol):
    model, loss, x, y = tiny_case(name, dtype)
    dense = dense_hessian(model, loss, x, y)
    with HessianOperator(model, loss, batches_of(x, y, 8)) as op:
        result = lanczos(op, k=5, which=which, tol=tol, max_iter=op.shape[0])
    assert result.converged
    np.testing.assert_allclose(result.eigenvalues, exact_top(dense, which, 5), rtol=rtol)
    assert result.num_products < op.shape[0] or name == "least-squares"


@pytest.mark.parametrize("name", CASES)
def test_reported_residuals_are_true_residuals(name):
    model, loss, x, y = tiny_case(name)
    dense = dense_hessian(model, loss, x, y)
    with HessianOperator(model, loss, [(x, y)], keep_graph=True) as op:
        result = lanczos(op, k=5, which="LM", tol=1e-4, max_iter=op.shape[0], eigenvectors=True)
    v = result.eigenvectors.numpy()
    np.testing.assert_allclose(v @ v.T, np.eye(5), atol=1e-12)
    true = np.linalg.norm(v @ dense - result.eigenvalues[:, None] * v, axis=1)
    np.testing.assert_allclose(result.residuals, true, rtol=1e-6, atol=1e-13 * abs(result.eigenvalues[0]))
    assert np.all(result.residuals <= 1e-4 * abs(result.eigenvalues[0]))
    values, vectors = np.linalg.eigh(dense)
    top = vectors[:, select(values, "LM", 2)].T  # well separated, so the vectors are determined
    np.testing.assert_allclose(np.abs(np.sum(top * v[:2], axis=1)), 1.0, atol=1e-8)


class TwoBlocks(nn.Module):
    """loss = ½ mean(a²) − 1.5 mean(b²) with (a, b) = linear(x): the Hessian is
    blockdiag(XᵀX/n, −3 XᵀX/n), so its largest-magnitude eigenvalues are negative."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 1, bias=False)
        self.b = nn.Linear(6, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], dim=1)


def saddle_loss(out: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    return 0.5 * out[:, 0].pow(2).mean() - 1.5 * out[:, 1].pow(2).mean()


def test_largest_magnitude_can_be_negative():
    torch.manual_seed(0)
    model = TwoBlocks().double()
    x = torch.randn(30, 6, dtype=torch.float64) * torch.linspace(0.8, 1.2, 6, dtype=torch.float64)
    y = torch.zeros(30, dtype=torch.float64)
    dense = dense_hessian(model, saddle_loss, x, y)
    with HessianOperator(model, saddle_loss, [(x, y)]) as op:
        lm = lanczos(op, k=3, which="LM", tol=1e-8, max_iter=12)
        la = lanczos(op, k=3, which="LA", tol=1e-8, max_iter=12)
    assert np.all(lm.eigenvalues < 0) and np.all(la.eigenvalues > 0)
    np.testing.assert_allclose(lm.eigenvalues, exact_top(dense, "LM", 3), rtol=1e-10)
    np.testing.assert_allclose(la.eigenvalues, exact_top(dense, "LA", 3), rtol=1e-10)


def test_no_ghost_eigenvalues_on_a_long_float32_run():
    """Plain Lanczos in float32 repeats λ1 after many steps; with reorthogonalisation the
    top 5 stay the true top 5 even when run to the full dimension."""
    model, loss, x, y = tiny_case("cnn-bn", torch.float32)
    dense = dense_hessian(model, loss, x, y)
    with HessianOperator(model, loss, [(x, y)], keep_graph=True) as op:
        result = lanczos(op, k=5, which="LA", tol=1e-12, max_iter=op.shape[0])
    assert result.num_products == op.shape[0] and not result.converged
    np.testing.assert_allclose(result.eigenvalues, exact_top(dense, "LA", 5), rtol=1e-4)


def test_exhausted_krylov_space_continues_with_fresh_directions():
    """Least squares with fewer samples (5) than weights (12): rank 5, so the Krylov space of
    the start vector is exhausted after 6 products. The run continues with fresh orthogonal
    directions (here all in the null space) and finds the top 8 = 5 positive values and 3 zeros.
    (Like any single-vector Krylov method it finds one copy of a repeated eigenvalue per
    direction drawn, so the 7-fold zero shows up only as often as directions are added.)"""
    model, loss, x, y = tiny_case("least-squares", n=5)
    dense = dense_hessian(model, loss, x, y)
    with HessianOperator(model, loss, [(x, y)]) as op:
        result = lanczos(op, k=8, which="LA", tol=1e-8, max_iter=12, eigenvectors=True)
    assert result.converged and result.num_products == 8
    np.testing.assert_allclose(result.eigenvalues, exact_top(dense, "LA", 8), atol=1e-12 * result.eigenvalues[0])
    v = result.eigenvectors.numpy()
    np.testing.assert_allclose(v @ v.T, np.eye(8), atol=1e-12)


@pytest.mark.parametrize("kwargs, message", [
    (dict(k=0), "k = 0"), (dict(k=13), "k = 13"), (dict(which="BE"), "which = BE"),
    (dict(k=5, max_iter=3), "max_iter = 3"), (dict(tol=0.0), "tol = "),
])
def test_bad_arguments_are_user_errors(kwargs, message):
    model, loss, x, y = tiny_case("least-squares")
    with HessianOperator(model, loss, [(x, y)]) as op:
        with pytest.raises(UserError, match=message):
            lanczos(op, **kwargs)


def test_warm_start_from_exact_eigenvectors_needs_k_products():
    """A start vector inside the span of the top-k eigenvectors is an invariant Krylov space:
    k products give the exact top-k."""
    model, loss, x, y = tiny_case("mlp-tanh")
    dense = dense_hessian(model, loss, x, y)
    values, vectors = np.linalg.eigh(dense)
    top = torch.from_numpy(vectors[:, select(values, "LM", 5)].T.copy())
    with HessianOperator(model, loss, [(x, y)]) as op:
        result = lanczos(op, k=5, tol=1e-10, start=warm_start(top))
    assert result.converged and result.num_products == 5
    np.testing.assert_allclose(result.eigenvalues, exact_top(dense, "LM", 5), rtol=1e-10)


def test_warm_start_from_a_subsample_is_exact_and_cheaper():
    """Eigenvectors of a 40-sample Hessian start the run on all 200 samples: the same eigenvalues
    as the dense Hessian, in fewer products than a cold start."""
    model, loss, x, y = tiny_case("mlp-tanh", n=200)
    dense = dense_hessian(model, loss, x, y)
    with HessianOperator(model, loss, [(x[:40], y[:40])]) as sub:
        guess = lanczos(sub, k=5, tol=1e-2, eigenvectors=True).eigenvectors
    with HessianOperator(model, loss, batches_of(x, y, 64)) as op:
        cold = lanczos(op, k=5, tol=1e-8, max_iter=op.shape[0])
        warm = lanczos(op, k=5, tol=1e-8, max_iter=op.shape[0], start=warm_start(guess))
    assert warm.converged and cold.converged
    np.testing.assert_allclose(warm.eigenvalues, exact_top(dense, "LM", 5), rtol=1e-6)
    assert warm.num_products < cold.num_products, (warm.num_products, cold.num_products)


def test_start_vector_of_the_wrong_size_is_a_user_error():
    model, loss, x, y = tiny_case("least-squares")
    with HessianOperator(model, loss, [(x, y)]) as op:
        with pytest.raises(UserError, match=r"start vector has shape \(5,\)"):
            lanczos(op, k=2, start=torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize("vectors", [torch.ones(4), torch.zeros(2, 3)], ids=["one-dimensional", "zero-row"])
def test_warm_start_refuses_what_is_not_nonzero_rows(vectors):
    with pytest.raises(UserError, match="nonzero rows"):
        warm_start(vectors)

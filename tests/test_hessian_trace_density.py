"""Hutchinson, Hutch++ and the SLQ density against the exact spectrum of tiny models' dense
Hessians: trace within 3 standard errors (and honest standard errors), the density integrates
to 1 and reproduces the spectrum's first two moments, the quadrature is exact per run."""

import numpy as np
import pytest

from alignsam_diag.analysis.curvature import HessianOperator
from alignsam_diag.analysis.density import quadrature, spectral_density
from alignsam_diag.analysis.trace import hutch_plus_plus, hutchinson, rademacher
from test_hessian_operator import dense_hessian, tiny_case


@pytest.fixture(scope="module")
def cnn():
    """The BatchNorm CNN (P = 123) in float64 and its dense Hessian."""
    model, loss, x, y = tiny_case("cnn-bn")
    return model, loss, [(x[:12], y[:12]), (x[12:], y[12:])], dense_hessian(model, loss, x, y)


def test_hutchinson_within_three_standard_errors_and_stderr_is_honest(cnn):
    model, loss, batches, dense = cnn
    with HessianOperator(model, loss, batches) as op:
        est = hutchinson(op, probes=200, seed=1, block=50)
        assert op.num_products == 200
    assert abs(est.value - np.trace(dense)) <= 3 * est.stderr
    # Rademacher variance of zᵀHz is 2(‖H‖_F² − Σ H_ii²)
    exact_stderr = np.sqrt(2 * (np.sum(dense ** 2) - np.sum(np.diag(dense) ** 2)) / 200)
    assert 0.7 < est.stderr / exact_stderr < 1.3


def test_hutch_plus_plus_within_three_standard_errors_and_beats_hutchinson(cnn):
    model, loss, batches, dense = cnn
    with HessianOperator(model, loss, batches) as op:
        plus = hutch_plus_plus(op, products=60, seed=2)
        plain = hutchinson(op, probes=60, seed=2)
        assert op.num_products == 120
    assert abs(plus.value - np.trace(dense)) <= 3 * plus.stderr
    assert plus.stderr < plain.stderr / 2


def test_hutch_plus_plus_is_exact_when_the_sketch_spans_everything():
    model, loss, x, y = tiny_case("least-squares")  # P = 12
    with HessianOperator(model, loss, [(x, y)]) as op:
        est = hutch_plus_plus(op, products=36)
    assert est.value == pytest.approx(float(np.trace((x.T @ x).numpy() / len(x))), rel=1e-12)
    assert est.stderr < 1e-12 * est.value


def test_density_integrates_to_one_and_matches_the_first_two_moments(cnn):
    model, loss, batches, dense = cnn
    spectrum = np.linalg.eigvalsh(dense)
    with HessianOperator(model, loss, batches) as op:
        result = spectral_density(op, steps=30, runs=40, seed=0)
        assert op.num_products == result.num_products == 30 * 40
    np.testing.assert_allclose(result.weights.sum(axis=1), 1.0, rtol=1e-12)
    assert np.trapezoid(result.density, result.grid) == pytest.approx(1.0, abs=1e-6)
    first, second = result.moments()
    per_run = [np.sum(result.weights * result.nodes ** p, axis=1) for p in (1, 2)]
    stderr = [np.std(m, ddof=1) / np.sqrt(len(m)) for m in per_run]
    assert abs(first - spectrum.mean()) <= 3 * stderr[0]
    assert abs(second - np.mean(spectrum ** 2)) <= 3 * stderr[1]
    # the broadened density has the same mean and a variance larger by sigma²
    mean = np.trapezoid(result.grid * result.density, result.grid)
    square = np.trapezoid(result.grid ** 2 * result.density, result.grid)
    assert mean == pytest.approx(first, rel=1e-6, abs=1e-9 * np.abs(spectrum).max())
    assert square == pytest.approx(second + result.sigma ** 2, rel=1e-6)


def test_quadrature_is_exact_for_each_start_vector(cnn):
    """Σ τ_i θ_i^p = v̂ᵀ H^p v̂ for p = 0 … 3 (exact for degrees below 2·steps)."""
    model, loss, batches, dense = cnn
    with HessianOperator(model, loss, batches) as op:
        nodes, weights = quadrature(op, steps=4, runs=3, seed=5)
    for r in range(3):
        v = rademacher(1, dense.shape[0], 5 + r)[0].numpy()
        v /= np.linalg.norm(v)
        for p in range(4):
            exact = v @ np.linalg.matrix_power(dense, p) @ v
            assert np.sum(weights[r] * nodes[r] ** p) == pytest.approx(exact, rel=1e-9)


def test_full_length_quadrature_nodes_are_the_eigenvalues():
    model, loss, x, y = tiny_case("least-squares")  # P = 12, distinct eigenvalues
    with HessianOperator(model, loss, [(x, y)]) as op:
        nodes, weights = quadrature(op, steps=50, runs=1)
    assert nodes.shape == (1, 12)
    np.testing.assert_allclose(nodes[0], np.linalg.eigvalsh((x.T @ x).numpy() / len(x)), rtol=1e-10)

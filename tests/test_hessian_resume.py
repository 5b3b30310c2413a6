"""Resumable Lanczos through the HDF5 store: a run interrupted after m products and restarted
from the saved state (saved whole, or appended product by product) ends exactly like an
uninterrupted run; the store's round trip and ``read_eigenvectors``."""

import h5py
import numpy as np
import pytest
import torch

from alignsam_diag.analysis.curvature import HessianOperator
from alignsam_diag.analysis.density import spectral_density
from alignsam_diag.analysis.lanczos import lanczos
from alignsam_diag.analysis.trace import hutchinson
from alignsam_diag.errors import UserError
from alignsam_diag.store.spectrum import EigsRecord, read_eigenvectors, read_records, save_state, write_record
from test_hessian_operator import batches_of, tiny_case


class Interrupted(Exception):
    pass


@pytest.fixture
def operator():
    model, loss, x, y = tiny_case("cnn-bn")
    with HessianOperator(model, loss, batches_of(x, y, 7)) as op:
        yield op


def record_for(op, **parts) -> EigsRecord:
    return EigsRecord("runs/a/last.pt", {"k": 4, "which": "LM"}, op.param_names, op.shape[0], **parts)


@pytest.mark.parametrize("writer", [write_record, save_state], ids=["whole", "appended"])
@pytest.mark.parametrize("stop_after", [1, 6, 11])
def test_interrupted_run_resumes_to_the_uninterrupted_result(operator, tmp_path, stop_after, writer):
    reference = lanczos(operator, k=4, which="LM", tol=1e-9, max_iter=60, seed=3, eigenvectors=True)
    path = tmp_path / "eigs.h5"

    def save_then_stop(state):
        writer(path, record_for(operator, state=state.saved()))
        if state.steps == stop_after:
            raise Interrupted

    with pytest.raises(Interrupted):
        lanczos(operator, k=4, which="LM", tol=1e-9, max_iter=60, seed=3, on_step=save_then_stop)
    saved = read_records(path)["runs/a/last.pt"].state
    assert saved.steps == stop_after
    before = operator.num_products
    resumed = lanczos(operator, k=4, which="LM", tol=1e-9, max_iter=60, seed=3, state=saved, eigenvectors=True)
    assert operator.num_products - before == reference.num_products - stop_after
    assert resumed.num_products == reference.num_products
    np.testing.assert_array_equal(resumed.eigenvalues, reference.eigenvalues)
    np.testing.assert_allclose(resumed.residuals, reference.residuals, rtol=1e-9)
    torch.testing.assert_close(resumed.eigenvectors, reference.eigenvectors, rtol=0, atol=1e-14)


def test_a_finished_state_resumes_without_products(operator):
    done = lanczos(operator, k=3, tol=1e-6, max_iter=60)
    state = None

    def keep(s):
        nonlocal state
        state = s

    lanczos(operator, k=3, tol=1e-6, max_iter=60, on_step=keep)
    before = operator.num_products
    again = lanczos(operator, k=3, tol=1e-6, max_iter=60, state=state)
    assert operator.num_products == before
    np.testing.assert_array_equal(again.eigenvalues, done.eigenvalues)


def test_round_trip_keeps_other_groups_and_every_part(operator, tmp_path):
    path = tmp_path / "eigs.h5"
    spectrum = lanczos(operator, k=3, tol=1e-6, max_iter=60, eigenvectors=True)
    trace = hutchinson(operator, probes=4)
    density = spectral_density(operator, steps=5, runs=2)
    other = EigsRecord("other.pt", {}, operator.param_names, operator.shape[0], spectrum=spectrum)
    write_record(path, other)
    write_record(path, record_for(operator, spectrum=spectrum, trace=trace, density=density))
    records = read_records(path)
    assert set(records) == {"other.pt", "runs/a/last.pt"}
    r = records["runs/a/last.pt"]
    assert r.options == {"k": 4, "which": "LM"} and r.param_names == operator.param_names
    np.testing.assert_array_equal(r.spectrum.eigenvalues, spectrum.eigenvalues)
    assert (r.spectrum.num_products, r.spectrum.converged, r.spectrum.which) == (spectrum.num_products, True, "LM")
    assert r.trace == trace
    np.testing.assert_array_equal(r.density.density, density.density)
    assert r.state is None
    r.trace = None
    write_record(path, r)  # a record read back (no vectors in memory) keeps the stored vectors
    names, vectors = read_eigenvectors(path, "runs/a/last.pt")
    assert names == operator.param_names and vectors.dtype == torch.float32
    assert vectors.shape == (3, sum(p.numel() for p in operator.params))
    torch.testing.assert_close(vectors, spectrum.eigenvectors.float())
    assert read_records(path)["runs/a/last.pt"].trace is None


def test_read_eigenvectors_errors_are_one_line(operator, tmp_path):
    path = tmp_path / "eigs.h5"
    with pytest.raises(UserError, match="no such file"):
        read_eigenvectors(path)
    write_record(path, record_for(operator, spectrum=lanczos(operator, k=2, tol=1e-3, max_iter=60)))
    with pytest.raises(UserError, match="--save-vectors"):
        read_eigenvectors(path)
    write_record(path, EigsRecord("b.pt", {}, operator.param_names, operator.shape[0]))
    with pytest.raises(UserError, match="holds 2 checkpoints"):
        read_eigenvectors(path)
    foreign = tmp_path / "other.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    with pytest.raises(UserError, match="not an eigs result file"):
        read_records(foreign)

"""The Gauss-Newton operator against dense matrices written from the formulas (float64): the
Hessian itself for a linear model with cross-entropy, G = Σ_i J_iᵀ H_i J_i / N with
H_i = diag(p_i) − p_i p_iᵀ for a tiny MLP with BatchNorm, positive semi-definite; and
``eigs --curvature ggn`` end to end against the dense spectrum of a checkpoint's GGN."""

import json

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian, jacrev

from alignsam_diag.analysis.curvature import HessianOperator
from alignsam_diag.analysis.ggn import GaussNewtonOperator
from alignsam_diag.inputs import load_inputs
from conftest import assert_one_clear_line, invoke

# torch's first forward-mode call (torch.func.hessian here) scripts its decompositions, with a warning
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.* is deprecated:FutureWarning")


def dense(op):
    """The operator as a (P, P) matrix, one product per column."""
    return op.matmat(torch.eye(op.shape[0], dtype=torch.float64))


def flat_function(model, names, shapes, sizes, x):
    """Outputs of ``model`` on ``x`` as a function of the flat parameter vector (P,)."""
    def outputs(flat):
        return functional_call(model, {n: c.view(s) for n, c, s in zip(names, flat.split(sizes), shapes)}, (x,))
    return outputs


def dense_ggn(model, x, y):
    """Σ_i J_iᵀ (diag(p_i) − p_i p_iᵀ) J_i / N from the Jacobian of the logits (N, C, P)."""
    names, params = zip(*model.named_parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    outputs = flat_function(model, names, [p.shape for p in params], [p.numel() for p in params], x)
    jac = jacrev(outputs)(flat)  # (N, C, P)
    p = torch.softmax(outputs(flat).detach(), dim=1)
    h = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (N, C, C)
    return torch.einsum("ncp,ncd,ndq->pq", jac, h, jac) / len(y), jac, h


def batches_of(x, y, cut):
    return [(x[:cut], y[:cut]), (x[cut:], y[cut:])]


def test_ggn_is_the_hessian_for_a_linear_model():
    torch.manual_seed(0)
    model = nn.Linear(5, 4).double()
    x, y = torch.randn(30, 5, dtype=torch.float64), torch.randint(0, 4, (30,))
    names, params = zip(*model.named_parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    outputs = flat_function(model, names, [p.shape for p in params], [p.numel() for p in params], x)
    exact = hessian(lambda w: F.cross_entropy(outputs(w), y))(flat)
    with GaussNewtonOperator(model, F.cross_entropy, batches_of(x, y, 13)) as op:  # unequal batches
        np.testing.assert_allclose(dense(op), exact, atol=1e-12)


def test_ggn_against_dense_jt_h_j_for_a_tiny_mlp_with_batchnorm():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    model.eval()
    x, y = torch.randn(25, 4, dtype=torch.float64), torch.randint(0, 3, (25,))
    exact, _, _ = dense_ggn(model, x, y)
    with GaussNewtonOperator(model, F.cross_entropy, batches_of(x, y, 10)) as op:
        op.check_determinism()
        rebuilt = dense(op)
        op.plan_graphs(keep_graph=True)
        kept = dense(op)
    with HessianOperator(model, F.cross_entropy, batches_of(x, y, 10)) as op:
        hess = dense(op)
    np.testing.assert_allclose(rebuilt, exact, atol=1e-12)
    np.testing.assert_allclose(kept, exact, atol=1e-12)
    values = torch.linalg.eigvalsh(exact)
    assert float(values.min()) > -1e-12 * float(values.max())  # positive semi-definite
    assert float((hess - exact).abs().max()) > 1e-3 * float(exact.abs().max())  # and not the Hessian
    assert float(torch.linalg.eigvalsh(hess).min()) < -1e-6


def test_eigs_curvature_ggn_end_to_end(checkpoints, tmp_path):
    """λ1, λ2 of the GGN of a BatchNorm CNN on 64 digits samples against the dense spectrum: the
    nonzero eigenvalues of JᵀHJ are those of H^½ J Jᵀ H^½ (N·C × N·C)."""
    out = tmp_path / "ggn.h5"
    args = ["eigs", checkpoints[0], "--samples", "64", "--batch-size", "40", "--k", "2", "--which", "LA",
            "--tol", "1e-6", "--device", "cpu", "--out", out, "--quiet"]
    result = invoke(*args, "--curvature", "ggn", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)[0]
    assert report["curvature"] == "ggn" and report["converged"]
    inputs = load_inputs(checkpoints[0], samples=64, batch_size=64)
    model = inputs.checkpoint.model.double().eval()
    x, y = inputs.batches[0]
    _, jac, h = dense_ggn(model, x.double(), y)
    values, vectors = torch.linalg.eigh(h)
    root = vectors @ torch.diag_embed(values.clamp_min(0).sqrt()) @ vectors.transpose(1, 2)  # H_i^½
    scaled = torch.einsum("ncd,ndp->ncp", root, jac).reshape(-1, jac.shape[-1]) / np.sqrt(64)
    exact = torch.linalg.eigvalsh(scaled @ scaled.T).flip(0)[:2]
    np.testing.assert_allclose(report["eigenvalues"], exact, rtol=1e-4)
    assert_one_clear_line(invoke(*args), "curvature")  # the file holds GGN results: no Hessian mixed in
    quick = ["eigs", checkpoints[0], "--samples", "64", "--device", "cpu"]
    assert_one_clear_line(invoke(*quick, "--curvature", "ggn", "--backend", "pyhessian"), "drop --curvature ggn")
    assert_one_clear_line(invoke(*quick, "--curvature", "fisher"), "--curvature fisher")


def test_eigs_files_from_before_curvature_still_resume_as_hessian(checkpoints, tmp_path):
    """A stored record without the ``curvature`` option (written before it existed) holds Hessian
    results: the same command reads it back instead of refusing it."""
    out = tmp_path / "old.h5"
    args = ["eigs", checkpoints[0], "--samples", "48", "--k", "1", "--device", "cpu", "--out", out, "--quiet", "--json"]
    first = invoke(*args)
    assert first.exit_code == 0, first.stderr
    with h5py.File(out, "r+") as f:
        group = f[str(checkpoints[0]).replace("/", "|")]
        options = json.loads(group.attrs["options"])
        assert options.pop("curvature") == "hessian"
        group.attrs["options"] = json.dumps(options)
    again = invoke(*args)
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout) == json.loads(first.stdout)

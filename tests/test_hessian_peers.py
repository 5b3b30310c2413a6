"""Our operator and eigenvalues beside the peer packages: hessian-eigenthings' Hessian-vector
products are ours to rounding; PyHessian's top eigenvalues through ``eigs --backend pyhessian``
come with counted products and true residuals."""

import numpy as np
import torch

from alignsam_diag.analysis.curvature import HessianOperator
from alignsam_diag.analysis.lanczos import lanczos
from alignsam_diag.analysis.pyhessian_backend import pyhessian_eigenvalues
from test_hessian_operator import batches_of, dense_hessian, tiny_case


def test_products_equal_hessian_eigenthings():
    from hessian_eigenthings import HessianOperator as PeerOperator
    from hessian_eigenthings import supervised_loss

    model, loss, x, y = tiny_case("cnn-bn")
    batches = batches_of(x, y, 5)  # equal sizes: the peer averages batches without weights
    peer = PeerOperator(model.eval(), batches, supervised_loss(loss))
    vectors = torch.randn(3, peer.size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with HessianOperator(model, loss, batches) as op:
        ours = op.matmat(vectors)
    torch.testing.assert_close(ours, torch.stack([peer.matvec(v) for v in vectors]), rtol=1e-12, atol=1e-14)


def test_pyhessian_backend_counts_products_and_measures_true_residuals():
    model, loss, x, y = tiny_case("mlp-tanh", torch.float32)
    dense = dense_hessian(model, loss, x, y)
    result = pyhessian_eigenvalues(model, loss, [(x, y)], k=2, tol=1e-3, seed=0)
    assert result.num_products >= 4  # at least two products per eigenvalue
    v = result.eigenvectors.numpy()
    true = np.linalg.norm(v @ dense - result.eigenvalues[:, None] * v, axis=1)
    np.testing.assert_allclose(result.residuals, true, rtol=1e-3, atol=1e-6)
    with HessianOperator(model, loss, [(x, y)]) as op:
        ours = lanczos(op, k=2, tol=1e-6, max_iter=op.shape[0])
    np.testing.assert_allclose(result.eigenvalues[0], ours.eigenvalues[0], rtol=1e-2)
    assert all(p.grad is None for p in model.parameters())

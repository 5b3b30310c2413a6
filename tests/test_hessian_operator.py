"""The Hessian-vector-product operator against dense Hessians (torch.func.hessian) and the
analytic XᵀX/n of least squares: single-batch, data-set (unequal last batch), block and
parameter-subset modes; eval mode and its restoration; the determinism check.

The tiny models and the dense oracle defined here are imported by the other test_hessian_* files.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from alignsam_diag.analysis.curvature import HessianOperator, select_parameters
from alignsam_diag.errors import UserError


def half_mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """½·mean((out − y)²): the least-squares loss whose Hessian is XᵀX/n."""
    return 0.5 * F.mse_loss(out.squeeze(-1), y)


def tiny_case(name: str, dtype: torch.dtype = torch.float64, n: int = 20):
    """(model, loss_fn, x, y) of one of the tiny oracle models, reproducible by name."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    if name == "mlp-tanh":
        model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
        x, y, loss = torch.randn(n, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen), F.cross_entropy
    elif name == "cnn-bn":
        model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Tanh(), nn.Flatten(),
                              nn.Linear(2 * 4 * 4, 3))
        with torch.no_grad():  # non-trivial running statistics and affine parameters
            model[1].running_mean.uniform_(-0.5, 0.5)
            model[1].running_var.uniform_(0.5, 2.0)
            model[1].weight.uniform_(0.5, 1.5)
            model[1].bias.uniform_(-0.3, 0.3)
        x, y, loss = torch.randn(n, 1, 4, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen), F.cross_entropy
    elif name == "least-squares":
        model = nn.Linear(12, 1, bias=False)
        x = torch.randn(n, 12, generator=gen) * torch.linspace(0.3, 3.0, 12)  # spread-out spectrum
        y, loss = torch.randn(n, generator=gen), half_mse
    else:
        raise ValueError(name)
    return model.to(dtype), loss, x.to(dtype), (y.to(dtype) if y.is_floating_point() else y)


CASES = ("mlp-tanh", "cnn-bn", "least-squares")


def dense_hessian(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, names=None) -> np.ndarray:
    """The exact Hessian (P, P) in float64 of the mean loss on (x, y), eval mode, w.r.t. the
    parameters ``names`` (all by default), by torch.func.hessian."""
    model64 = copy.deepcopy(model).double().eval()
    named = dict(model64.named_parameters())
    names = list(named) if names is None else names
    fixed = {k: v.detach() for k, v in named.items() if k not in names}
    sizes = [named[k].numel() for k in names]
    flat = torch.cat([named[k].detach().reshape(-1) for k in names])

    def loss_of(theta: torch.Tensor) -> torch.Tensor:
        params = {k: t.view_as(named[k]) for k, t in zip(names, theta.split(sizes))}
        out = functional_call(model64, {**params, **fixed, **dict(model64.named_buffers())}, (x.double(),))
        return loss_fn(out, y.double() if y.is_floating_point() else y)

    return torch.func.hessian(loss_of)(flat).numpy()


def batches_of(x, y, size):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("keep_graph", [True, False])
def test_single_batch_matches_dense(name, keep_graph):
    model, loss, x, y = tiny_case(name)
    dense = dense_hessian(model, loss, x, y)
    with HessianOperator(model, loss, [(x, y)], keep_graph=keep_graph) as op:
        h = op.matmat(torch.eye(op.shape[0], dtype=torch.float64)).numpy()
        assert op.num_products == op.shape[0]
    np.testing.assert_allclose(h, dense, rtol=1e-10, atol=1e-12)


def test_least_squares_hessian_is_gram_matrix():
    model, loss, x, y = tiny_case("least-squares")
    with HessianOperator(model, loss, [(x, y)]) as op:
        h = op.matmat(torch.eye(12, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(h, (x.T @ x).numpy() / len(x), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", CASES)
def test_dataset_mode_with_unequal_last_batch_is_full_data_mean(name):
    model, loss, x, y = tiny_case(name, n=23)
    batches = batches_of(x, y, 8)  # 8 + 8 + 7 samples
    assert [len(b[1]) for b in batches] == [8, 8, 7]
    with HessianOperator(model, loss, batches) as op:
        h = op.matmat(torch.eye(op.shape[0], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(h, dense_hessian(model, loss, x, y), rtol=1e-10, atol=1e-12)


def test_block_equals_single_products():
    model, loss, x, y = tiny_case("cnn-bn")
    with HessianOperator(model, loss, batches_of(x, y, 6)) as op:
        vectors = torch.randn(4, op.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        block = op.matmat(vectors)
        singles = torch.stack([op.matvec(v) for v in vectors])
        assert op.num_products == 8
    torch.testing.assert_close(block, singles, rtol=1e-12, atol=1e-14)


def test_parameter_subset_is_dense_sub_hessian():
    model, loss, x, y = tiny_case("cnn-bn")
    with HessianOperator(model, loss, [(x, y)], params=["1.*", "4.bias"]) as op:
        assert op.param_names == ["1.weight", "1.bias", "4.bias"]
        h = op.matmat(torch.eye(op.shape[0], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(h, dense_hessian(model, loss, x, y, op.param_names), rtol=1e-10, atol=1e-12)


def test_unmatched_pattern_is_a_user_error():
    model, *_ = tiny_case("mlp-tanh")
    with pytest.raises(UserError, match="no trainable parameter matches"):
        select_parameters(model, "layer9.*")


def test_eval_mode_for_the_lifetime_then_restored():
    model, loss, x, y = tiny_case("cnn-bn")
    model.train()
    model[1].eval()  # a mixed state must come back exactly
    stats = model[1].running_mean.clone()
    features = model[0](x).detach()
    reference = torch.nn.functional.batch_norm(features, model[1].running_mean, model[1].running_var, model[1].weight,
                                               model[1].bias, training=False, eps=model[1].eps)
    with HessianOperator(model, loss, [(x, y)]) as op:
        assert not any(m.training for m in model.modules())
        torch.testing.assert_close(model[1](features), reference, rtol=1e-12, atol=1e-12)  # BatchNorm as its affine form
        op.matvec(torch.ones(op.shape[0], dtype=torch.float64))
    assert model.training and not model[1].training
    assert "forward" not in vars(model[1])  # the class's forward again
    torch.testing.assert_close(model[1].running_mean, stats, rtol=0, atol=0)


def test_float32_model_gives_float32_products_close_to_dense():
    model, loss, x, y = tiny_case("mlp-tanh", dtype=torch.float32)
    dense = dense_hessian(model, loss, x, y)
    with HessianOperator(model, loss, [(x.float(), y)]) as op:
        assert op.dtype == torch.float32
        h = op.matmat(torch.eye(op.shape[0])).double().numpy()
    np.testing.assert_allclose(h, dense, atol=1e-5 * np.abs(dense).max())


class NoisyModel(nn.Module):
    """Random noise in forward even in eval mode: its Hessian is not defined."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.dropout(x, 0.5, training=True))


def test_determinism_check_passes_for_a_deterministic_model():
    """Eval-mode BatchNorm, fixed batches: the two passes agree bit for bit, so even a zero
    tolerance passes (and the model is left as it was)."""
    model, loss, x, y = tiny_case("cnn-bn", dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with HessianOperator(model, loss, batches_of(x.float(), y, 7)) as op:
        op.check_determinism(rtol=0.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_determinism_check_stops_on_dropout_forced_on():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 4, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    with HessianOperator(NoisyModel(), F.cross_entropy, [(x, y)]) as op:
        with pytest.raises(UserError, match="not deterministic"):
            op.check_determinism()

"""The pitfalls of DESIGN §5: BatchNorm statistics, parameters without a gradient in a later
pass, and mixed precision — for every variant."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from alignsam_diag import optim
from alignsam_diag.errors import UserError
from test_optim_common import (BN_SHAPE, EXERCISE, MLP_SHAPE, MULTI_PASS, SGD_SETTINGS, VARIANTS, bn_net,
                               closure_for, flat, make_batches, mlp, train)


@pytest.mark.parametrize("name", VARIANTS)
def test_batchnorm_statistics_are_those_of_one_clean_pass(name: str) -> None:
    model = bn_net()
    batches = make_batches(1, BN_SHAPE, dtype=torch.float32)
    clean = copy.deepcopy(model)
    with torch.no_grad():
        clean(batches.train[0][0])
    train(name, model, batches, **EXERCISE.get(name, {}))
    buffers = dict(model.named_buffers())
    assert any(n.endswith("num_batches_tracked") for n in buffers)
    for buffer_name, expected in clean.named_buffers():
        assert torch.equal(buffers[buffer_name], expected), buffer_name


def test_without_a_model_every_pass_updates_batchnorm() -> None:
    """What the docstring promises without ``model=``: all four Align-SAM passes count."""
    model = bn_net()
    batches = make_batches(1, BN_SHAPE, dtype=torch.float32)
    optimizer = optim.create("align-sam", model.parameters(), lr=0.1)
    optimizer.step(closure_for(model, batches.train[0], batches.aux[0]))
    assert int(model[1].num_batches_tracked) == 4


class SpareInFirstPass(nn.Module):
    """An MLP plus a ``spare`` bias that only the first forward pass of each step uses."""

    def __init__(self) -> None:
        super().__init__()
        self.body = mlp(torch.float64)
        self.spare = nn.Parameter(torch.linspace(-1.0, 1.0, 3, dtype=torch.float64))
        self.first = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x) + self.spare if self.first else self.body(x)
        self.first = False
        return out


@pytest.mark.parametrize("name", MULTI_PASS)
def test_parameter_without_gradient_in_a_later_pass_is_restored_exactly(name: str) -> None:
    model = SpareInFirstPass()
    batches = make_batches(1, MLP_SHAPE)
    spare, body = model.spare.detach().clone(), flat(model.body)
    train(name, model, batches, rho=0.5, **EXERCISE.get(name, {}))
    assert model.spare.grad is None  # the last pass gave it none, so the base step skipped it
    assert torch.equal(model.spare.detach(), spare)
    assert (flat(model.body) - body).abs().max() > 1e-3


@pytest.mark.parametrize("name", VARIANTS)
def test_bf16_autocast_steps_like_float32(name: str) -> None:
    batches = make_batches(1, BN_SHAPE, dtype=torch.float32)
    updates = {}
    for precision in (None, torch.bfloat16):
        model = bn_net()
        start = flat(model)
        optimizer = optim.create(name, model.parameters(), model=model, amp="bf16" if precision else None,
                                 **SGD_SETTINGS, **EXERCISE.get(name, {}))
        loss = optimizer.step(closure_for(model, batches.train[0], batches.aux[0], autocast=precision))
        assert torch.isfinite(loss)
        updates[precision] = flat(model) - start
    cosine = torch.nn.functional.cosine_similarity(updates[None], updates[torch.bfloat16], dim=0)
    assert torch.isfinite(updates[torch.bfloat16]).all()
    assert cosine > 0.95


@pytest.mark.parametrize("name", MULTI_PASS)
def test_fp16_is_refused_for_several_passes(name: str) -> None:
    with pytest.raises(UserError, match="use amp bf16"):
        optim.create(name, mlp().parameters(), lr=0.1, amp="fp16")


def test_fp16_is_allowed_for_the_single_pass_base_optimizer() -> None:
    assert optim.create("sgd", mlp().parameters(), lr=0.1, amp="fp16").single_pass
    with pytest.raises(UserError, match="amp = fp8"):
        optim.create("sgd", mlp().parameters(), lr=0.1, amp="fp8")

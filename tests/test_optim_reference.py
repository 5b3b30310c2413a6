"""Our SAM, GSAM, Friendly-SAM and LookSAM against pytorch-optimizer's (4.1.0) implementations:
same model, batches and hyper-parameters, SGD with momentum and weight decay, several steps,
float32 tolerance.

LookSAM: pytorch-optimizer takes the projection g_v = g_s − (g_s·ĝ)ĝ and the reuse factor
‖g‖/‖g_v‖ per parameter tensor; the paper's Algorithm 1 (and DESIGN §5) takes them over the whole
parameter vector, as we do. The two agree when the model has one parameter tensor, where we
test against pytorch-optimizer; on a model with several tensors we prove they differ and test
against a hand computation of the paper's formula instead.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from pytorch_optimizer.lr_scheduler.proportion import ProportionScheduler
from pytorch_optimizer.optimizer.sam import GSAM, SAM, FriendlySAM, LookSAM
from torch import nn

from alignsam_diag import optim
from test_optim_common import MLP_SHAPE, SGD_SETTINGS, Batches, closure_for, flat, flat_loss, grad, make_batches, mlp

STEPS = 4
FLOAT32 = {"rtol": 1e-5, "atol": 1e-6}


def lr_factor(step: int) -> float:
    """A decaying LR schedule, so that GSAM's ρ_t changes from step to step."""
    return 1.0 - 0.2 * step


def run_reference(make: Callable[[nn.Module], torch.optim.Optimizer], model: nn.Module,
                  batches: Batches) -> list[torch.Tensor]:
    """pytorch-optimizer's protocol: gradients at θ first, then ``step(closure)``."""
    optimizer, trajectory = make(model), []
    for x, y in batches.train:
        def closure() -> torch.Tensor:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        optimizer.zero_grad()
        closure()
        optimizer.step(closure)
        trajectory.append(flat(model))
    return trajectory


def run_ours(name: str, model: nn.Module, batches: Batches, schedule: bool = False, **hyper) -> list[torch.Tensor]:
    optimizer = optim.create(name, model.parameters(), model=model, **SGD_SETTINGS, **hyper)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor) if schedule else None
    trajectory = []
    for train_batch, aux_batch in zip(batches.train, batches.aux):
        optimizer.step(closure_for(model, train_batch, aux_batch))
        if scheduler is not None:
            scheduler.step()
        trajectory.append(flat(model))
    return trajectory


def run_sgd(model: nn.Module, batches: Batches) -> list[torch.Tensor]:
    return run_ours("sgd", model, batches)


def assert_same_trajectory(ours: list[torch.Tensor], reference: list[torch.Tensor], sgd: list[torch.Tensor]) -> None:
    for step, (a, b) in enumerate(zip(ours, reference)):
        torch.testing.assert_close(a, b, **FLOAT32, msg=lambda m: f"step {step}: {m}")
    # the comparison can fail: the sharpness term moves the trajectory far beyond the tolerance
    assert (ours[-1] - sgd[-1]).abs().max() > 1e-3


def test_sam_matches_pytorch_optimizer() -> None:
    batches = make_batches(STEPS, MLP_SHAPE, dtype=torch.float32)
    reference = run_reference(lambda m: SAM(m.parameters(), torch.optim.SGD, rho=0.2, **SGD_SETTINGS),
                              mlp(torch.float32), batches)
    assert_same_trajectory(run_ours("sam", mlp(torch.float32), batches, rho=0.2), reference,
                           run_sgd(mlp(torch.float32), batches))


def test_friendly_sam_matches_pytorch_optimizer() -> None:
    batches = make_batches(STEPS, MLP_SHAPE, dtype=torch.float32)
    reference = run_reference(
        lambda m: FriendlySAM(m.parameters(), torch.optim.SGD, rho=0.2, sigma=0.7, lmbda=0.6, **SGD_SETTINGS),
        mlp(torch.float32), batches)
    assert_same_trajectory(run_ours("fsam", mlp(torch.float32), batches, rho=0.2, sigma=0.7, lam=0.6),
                           reference, run_sgd(mlp(torch.float32), batches))


def test_gsam_matches_pytorch_optimizer_with_rho_following_the_lr() -> None:
    batches = make_batches(STEPS, MLP_SHAPE, dtype=torch.float32)
    model = mlp(torch.float32)
    base = torch.optim.SGD(model.parameters(), **SGD_SETTINGS)
    scheduler = torch.optim.lr_scheduler.LambdaLR(base, lr_factor)
    rho_scheduler = ProportionScheduler(scheduler, max_lr=SGD_SETTINGS["lr"], min_lr=0.0, max_value=0.3, min_value=0.1)
    gsam = GSAM(model.parameters(), base, model, rho_scheduler, alpha=0.4)
    reference = []
    for x, y in batches.train:
        gsam.set_closure(F.cross_entropy, x, y)
        gsam.step()
        scheduler.step()
        gsam.update_rho_t()
        reference.append(flat(model))
    ours = run_ours("gsam", mlp(torch.float32), batches, schedule=True, rho=0.3, rho_min=0.1, alpha=0.4)
    assert_same_trajectory(ours, reference, run_sgd(mlp(torch.float32), batches))


def linear_model() -> nn.Module:
    """One parameter tensor: here per-tensor and whole-vector LookSAM coincide."""
    torch.manual_seed(0)
    return nn.Linear(6, 3, bias=False)


def test_looksam_matches_pytorch_optimizer_on_a_single_tensor_model() -> None:
    batches = make_batches(STEPS, MLP_SHAPE, dtype=torch.float32)  # k = 2: SAM steps 0, 2; reuse steps 1, 3
    reference = run_reference(
        lambda m: LookSAM(m.parameters(), torch.optim.SGD, rho=0.2, k=2, alpha=0.7, **SGD_SETTINGS),
        linear_model(), batches)
    assert_same_trajectory(run_ours("looksam", linear_model(), batches, rho=0.2, k=2, alpha=0.7),
                           reference, run_sgd(linear_model(), batches))


def looksam_by_hand(model: nn.Module, batches: Batches, rho: float, k: int, alpha: float) -> list[torch.Tensor]:
    """LookSAM as in the paper (whole-vector g_v) with SGD momentum + weight decay, written out
    on the flat parameter vector with autograd (float64)."""
    theta, buffer, g_v, trajectory = flat(model), None, None, []
    lr, momentum, weight_decay = SGD_SETTINGS["lr"], SGD_SETTINGS["momentum"], SGD_SETTINGS["weight_decay"]
    for t, batch in enumerate(batches.train):
        loss = flat_loss(model, batch)
        g = grad(loss, theta)
        if t % k == 0:
            g_s = grad(loss, theta + rho * g / g.norm())
            g_v = g_s - (g_s @ g) / (g @ g) * g
            d = g_s
        else:
            d = g + alpha * g.norm() / g_v.norm() * g_v
        d = d + weight_decay * theta
        buffer = d if buffer is None else momentum * buffer + d
        theta = theta - lr * buffer
        trajectory.append(theta)
    return trajectory


def test_looksam_follows_the_paper_where_pytorch_optimizer_differs() -> None:
    batches = make_batches(STEPS, MLP_SHAPE)
    hyper = {"rho": 0.2, "k": 2, "alpha": 0.7}
    by_hand = looksam_by_hand(mlp(torch.float64), batches, **hyper)
    ours = run_ours("looksam", mlp(torch.float64), batches, **hyper)
    for a, b in zip(ours, by_hand):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    # the proof that pytorch-optimizer's LookSAM is another definition on a multi-tensor model:
    # it agrees on the SAM step 0 (up to its float32 gradient norm) and departs on the first reuse step
    po = run_reference(lambda m: LookSAM(m.parameters(), torch.optim.SGD, lr=SGD_SETTINGS["lr"],
                                         momentum=SGD_SETTINGS["momentum"], weight_decay=SGD_SETTINGS["weight_decay"],
                                         **hyper), mlp(torch.float64), batches)
    torch.testing.assert_close(po[0], by_hand[0], rtol=0, atol=1e-8)
    assert (po[1] - by_hand[1]).abs().max() > 1e-4


def test_sam_matches_pytorch_optimizer_on_the_adamw_base() -> None:
    batches = make_batches(STEPS, MLP_SHAPE, dtype=torch.float32)
    adamw = {"lr": 0.01, "weight_decay": 0.05}
    reference = run_reference(lambda m: SAM(m.parameters(), torch.optim.AdamW, rho=0.2, betas=(0.9, 0.999), **adamw),
                              mlp(torch.float32), batches)
    model, ours = mlp(torch.float32), []
    optimizer = optim.create("sam", model.parameters(), base="adamw", momentum=0.9, model=model, rho=0.2, **adamw)
    for train_batch, aux_batch in zip(batches.train, batches.aux):
        optimizer.step(closure_for(model, train_batch, aux_batch))
        ours.append(flat(model))
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, **FLOAT32)

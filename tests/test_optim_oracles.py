"""Exact oracles: Align-SAM/Align-ASAM against Algorithm 1 computed here with autograd, and the
reductions of DESIGN §5 (a variant with a special hyper-parameter is another variant)."""

from __future__ import annotations

from typing import Any, Optional

import pytest
import torch
from torch import nn

from alignsam_diag import optim
from test_optim_common import (EXERCISE, MLP_SHAPE, SGD_SETTINGS, Batch, Flat, flat, flat_loss, grad, make_batches,
                               mlp, train)

def asam_scale(model: nn.Module, eta: float) -> Flat:
    """ASAM's T as a flat vector: |θ| + η on the entries of weight tensors, 1 on biases."""
    return torch.cat([(p.detach().abs() + eta if "weight" in n else torch.ones_like(p)).reshape(-1)
                      for n, p in model.named_parameters()])


def algorithm1_step(model: nn.Module, train_batch: Batch, aux_batch: Batch, rho: float, lam: float,
                    lr: float, scale: Optional[Flat] = None) -> Flat:
    """θ_{l+1} of the paper's Algorithm 1 (lines 5–9), with ASAM's T when ``scale`` is given."""
    theta = flat(model)
    loss_t, loss_a = flat_loss(model, train_batch), flat_loss(model, aux_batch)

    def direction(g: Flat) -> Flat:
        return g / g.norm() if scale is None else scale ** 2 * g / (scale * g).norm()

    g_a = grad(loss_a, theta)                                              # line 5
    g_a_tilde = grad(loss_a, theta + rho * direction(g_a))                 # line 6
    g_t = grad(loss_t, theta)                                              # line 7
    theta_tilde = theta + rho * (lam * direction(g_t) - direction(g_a_tilde))  # line 8
    return theta - lr * grad(loss_t, theta_tilde)                          # line 9


@pytest.mark.parametrize("name", ["align-sam", "align-asam"])
def test_align_step_equals_algorithm_1(name: str) -> None:
    model = mlp(torch.float64)
    batches = make_batches(1, MLP_SHAPE)
    rho, lam, lr, eta = 0.3, 2.0, 0.5, 0.01  # a large ρ, so that every term matters
    scale = asam_scale(model, eta) if name == "align-asam" else None
    expected = algorithm1_step(model, batches.train[0], batches.aux[0], rho, lam, lr, scale)
    hyper = {"rho": rho, "lam": lam, **({"eta": eta} if scale is not None else {})}
    before = flat(model)
    train(name, model, batches, lr=lr, momentum=0.0, weight_decay=0.0, **hyper)
    assert (flat(model) - before).abs().max() > 1e-3  # the step moved
    torch.testing.assert_close(flat(model), expected, rtol=0, atol=1e-10)


def test_align_asam_scale_differs_from_align_sam() -> None:
    """The ASAM oracle is not vacuous: with the same ρ, the two geometries give other steps."""
    batches = make_batches(1, MLP_SHAPE)
    models = {}
    for name in ("align-sam", "align-asam"):
        models[name] = mlp(torch.float64)
        train(name, models[name], batches, lr=0.5, momentum=0.0, rho=0.3)
    assert (flat(models["align-sam"]) - flat(models["align-asam"])).abs().max() > 1e-4


REDUCTIONS: list[tuple[str, dict[str, Any], str, dict[str, Any]]] = [
    ("gsam", {"alpha": 0.0}, "sam", {}),
    ("vasso", {"theta": 1.0}, "sam", {}),
    ("fsam", {"sigma": 0.0}, "sam", {}),
    ("looksam", {"k": 1}, "sam", {}),
    ("lookbehind-sam", {"k": 1, "alpha": 1.0}, "sam", {}),
    # ρ = 0: the base optimizer. (Lookbehind with k > 1 takes k base steps per batch by
    # design, so only k = 1, α = 1 reduces; LookSAM's reuse steps add a g_v that is exactly 0.)
    *[(name, {"rho": 0.0, **EXERCISE.get(name, {})}, "sgd", {})
      for name in ("sam", "asam", "align-sam", "align-asam", "gsam", "fsam", "vasso", "looksam")],
    ("lookbehind-sam", {"rho": 0.0, "k": 1, "alpha": 1.0}, "sgd", {}),
]


@pytest.mark.parametrize("name,hyper,same_as,same_hyper", REDUCTIONS,
                         ids=[f"{n}{h}={m}" for n, h, m, _ in REDUCTIONS])
def test_reduction(name: str, hyper: dict, same_as: str, same_hyper: dict) -> None:
    batches = make_batches(3, MLP_SHAPE)
    model, reference = mlp(torch.float64), mlp(torch.float64)
    train(name, model, batches, **{"rho": 0.1, **hyper})
    train(same_as, reference, batches, **({"rho": 0.1} if same_as != "sgd" else {}), **same_hyper)
    torch.testing.assert_close(flat(model), flat(reference), rtol=0, atol=1e-12)


def test_reductions_are_not_vacuous() -> None:
    """SAM with ρ = 0.1 on these batches is far from the base optimizer, and each special
    hyper-parameter above matters: the variants at their defaults differ from SAM."""
    batches = make_batches(3, MLP_SHAPE)
    sam = mlp(torch.float64)
    train("sam", sam, batches, rho=0.1)
    plain = mlp(torch.float64)
    train("sgd", plain, batches)
    assert (flat(sam) - flat(plain)).abs().max() > 1e-4
    for name in ("gsam", "vasso", "fsam", "looksam", "lookbehind-sam"):
        other = mlp(torch.float64)
        train(name, other, batches, rho=0.1, **EXERCISE.get(name, {}))
        assert (flat(other) - flat(sam)).abs().max() > 1e-5, name


def test_align_sam_without_auxiliary_radius_is_sam_with_train_radius() -> None:
    """DESIGN §5: written with two radii, Align-SAM with ρ_a = 0 is SAM with radius ρ_t."""
    batches = make_batches(3, MLP_SHAPE)
    model, reference = mlp(torch.float64), mlp(torch.float64)
    optimizer = optim.create("align-sam", model.parameters(), model=model, **SGD_SETTINGS)
    optimizer.rho_train, optimizer.rho_aux = 0.1, 0.0
    train("align-sam", model, batches, optimizer=optimizer)
    train("sam", reference, batches, rho=0.1)
    torch.testing.assert_close(flat(model), flat(reference), rtol=0, atol=1e-12)


def test_align_sam_radii_are_lambda_rho_and_rho() -> None:
    optimizer = optim.create("align-sam", mlp().parameters(), lr=0.1, rho=0.05, lam=2.0)
    assert (optimizer.rho_train, optimizer.rho_aux) == pytest.approx((0.1, 0.05))


def lookbehind_by_hand(model: nn.Module, batches, rho: float, k: int, alpha: Optional[float]) -> Flat:
    """Lookbehind-SAM as in its reference code (same batch for the k inner steps), with SGD
    momentum + weight decay, on the flat vector; ``alpha=None``: the adaptive per-tensor α."""
    lr, momentum, weight_decay = SGD_SETTINGS["lr"], SGD_SETTINGS["momentum"], SGD_SETTINGS["weight_decay"]
    sizes = [p.numel() for p in model.parameters()]
    theta, buffer = flat(model), None
    for batch in batches.train:
        loss = flat_loss(model, batch)
        slow, fast, point, g = theta, theta, theta, grad(loss, theta)
        for i in range(k):
            point = point + rho * g / g.norm()
            g = grad(loss, point)
            d = g + weight_decay * fast
            buffer = d if buffer is None else momentum * buffer + d
            fast = fast - lr * buffer
            if i == 0:
                first = fast
        if alpha is None:
            pieces = zip((first - slow).split(sizes), (fast - slow).split(sizes))
            weights = torch.cat([(1 + torch.nn.functional.cosine_similarity(a, b, dim=0)).expand(len(a)) / 2
                                 for a, b in pieces])
        else:
            weights = torch.full_like(theta, alpha)
        theta = slow + weights * (fast - slow)
    return theta


@pytest.mark.parametrize("adaptive_alpha", [False, True])
def test_lookbehind_matches_its_reference_algorithm(adaptive_alpha: bool) -> None:
    batches = make_batches(2, MLP_SHAPE)
    model = mlp(torch.float64)
    expected = lookbehind_by_hand(mlp(torch.float64), batches, rho=0.2, k=3, alpha=None if adaptive_alpha else 0.6)
    train("lookbehind-sam", model, batches, rho=0.2, k=3, alpha=0.6, adaptive_alpha=adaptive_alpha)
    torch.testing.assert_close(flat(model), expected, rtol=0, atol=1e-10)
    other = mlp(torch.float64)
    train("lookbehind-sam", other, batches, rho=0.2, k=3, alpha=0.6, adaptive_alpha=not adaptive_alpha)
    assert (flat(other) - expected).abs().max() > 1e-5

"""Variants that perturb along a running average of past gradients: Friendly-SAM and VaSSO.

Both take SAM's ascent g/‖g‖ with g replaced by a direction d built from the gradient history
(kept per parameter in ``state``), and step with ∇L(θ + ρ d/‖d‖) like SAM. On the first step
the history is the first gradient itself, as in both reference implementations.
"""

from __future__ import annotations

from typing import Any

from .base import OPTIMIZERS, Closure, SharpnessAware, check
from .vectors import Vector


class AveragedPerturbation(SharpnessAware):
    """SAM with the ascent direction :meth:`_direction` of the current gradient and the history."""

    def __init__(self, params: Any, *, rho: float, **base: Any) -> None:
        super().__init__(params, **base)
        self.rho = check("rho", rho, low=0.0)

    def _direction(self, grad: Vector) -> Vector:
        raise NotImplementedError

    def _descent_gradient(self, closure: Closure) -> None:
        direction = self._direction(self._gradient())
        with self._perturbed(self._ascent(direction, self.rho)):
            self._pass(closure, "train")


@OPTIMIZERS.register("fsam")
class FriendlySAM(AveragedPerturbation):
    """Friendly-SAM (Li et al. 2024): d = g − σ m_{t−1}, m_t = λ m_{t−1} + (1 − λ) g, with
    m_1 = g_1 (so d_1 = g_1). Removes the full-batch component m from the ascent.

    Args:
        rho: radius ρ.
        sigma: σ, how much of the gradient average to remove (σ = 0 is SAM).
        lam: λ, decay of the gradient average m.
    """

    def __init__(self, params: Any, *, rho: float = 0.05, sigma: float = 1.0, lam: float = 0.9, **base: Any) -> None:
        super().__init__(params, rho=rho, **base)
        self.sigma = check("sigma", sigma, low=0.0)
        self.lam = check("lam", lam, low=0.0, high=1.0)

    def _direction(self, grad: Vector) -> Vector:
        direction = []
        for p, g in zip(self._params(), grad):
            state = self.state[p]
            if "momentum" not in state:
                state["momentum"] = g.clone()
                direction.append(g)
                continue
            direction.append(g.add(state["momentum"], alpha=-self.sigma))
            state["momentum"].lerp_(g, 1.0 - self.lam)
        return direction


@OPTIMIZERS.register("vasso")
class VaSSO(AveragedPerturbation):
    """VaSSO (Li & Giannakis 2023): d_t = (1 − θ) d_{t−1} + θ g_t, d_1 = g_1; the averaged
    direction suppresses the variance of the stochastic ascent.

    Args:
        rho: radius ρ.
        theta: θ, weight of the newest gradient (θ = 1 is SAM).
    """

    def __init__(self, params: Any, *, rho: float = 0.05, theta: float = 0.9, **base: Any) -> None:
        super().__init__(params, rho=rho, **base)
        self.theta = check("theta", theta, low=0.0, high=1.0)

    def _direction(self, grad: Vector) -> Vector:
        direction = []
        for p, g in zip(self._params(), grad):
            state = self.state[p]
            if "direction" not in state:
                state["direction"] = g.clone()
            else:
                state["direction"].lerp_(g, self.theta)
            direction.append(state["direction"])
        return direction

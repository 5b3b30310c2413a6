"""Variants that perturb along a running average of past gradients: Friendly-SAM and VaSSO.

Both take SAM's ascent g/‖g‖ with g replaced by a direction d built from the gradient history
(kept per parameter in ``state``), and step with ∇L(θ + ρ d/‖d‖) like SAM. On the first step
the history is the first gradient itself, as in both reference implementations.
"""

from __future__ import annotations

from .base import Closure, SharpnessAware
from .variants import OPTIMIZERS
from .vectors import Vector


class AveragedPerturbation(SharpnessAware):
    """SAM with the ascent direction :meth:`_direction` of the current gradient and the history."""

    rho: float

    def _direction(self, grad: Vector) -> Vector:
        raise NotImplementedError

    def _descent_gradient(self, closure: Closure) -> None:
        direction = self._direction(self._gradient())
        with self._perturbed(self._ascent(direction, self.rho)):
            self._pass(closure, "train")


class FriendlySAM(AveragedPerturbation):
    """Friendly-SAM (Li et al. 2024): d = g − σ m_{t−1}, m_t = λ m_{t−1} + (1 − λ) g, with
    m_1 = g_1 (so d_1 = g_1). Removes the full-batch component m from the ascent.
    Hyper-parameters: ``rho``, ``sigma`` (σ = 0 is SAM) and ``lam`` (the decay λ of m)."""

    variant = OPTIMIZERS.get("fsam")
    sigma: float
    lam: float

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


class VaSSO(AveragedPerturbation):
    """VaSSO (Li & Giannakis 2023): d_t = (1 − θ) d_{t−1} + θ g_t, d_1 = g_1; the averaged
    direction suppresses the variance of the stochastic ascent. Hyper-parameters: ``rho`` and
    ``theta`` (θ = 1 is SAM)."""

    variant = OPTIMIZERS.get("vasso")
    theta: float

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

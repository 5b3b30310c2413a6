"""GSAM: surrogate-gap guided SAM (Zhuang et al. 2022)."""

from __future__ import annotations

from typing import Any

from . import vectors
from .base import Closure, SharpnessAware
from .variants import OPTIMIZERS


class GSAM(SharpnessAware):
    """SAM's perturbation; the base step uses g_s − α g⊥ with g_s = ∇L(θ + ρ_t ĝ) and
    g⊥ = g − (g·ĝ_s) ĝ_s the part of the clean gradient orthogonal to g_s.

    The radius follows the learning rate as in GSAM's ``ProportionScheduler`` with
    lr_min = 0: ρ_t = ρ_min + (ρ − ρ_min) · lr_t / lr_max, where lr_t is the current ``lr`` of
    the first parameter group and lr_max the one it had when the optimizer was created (the
    peak of any schedule attached afterwards).

    Hyper-parameters: ``rho`` (ρ_max, the radius at the peak learning rate), ``rho_min`` (the
    radius at learning rate 0, at most ``rho``; 0: ρ proportional to the LR) and ``alpha`` (α,
    the weight of the orthogonal correction; 0.4 in the paper, 0 is SAM).
    """

    variant = OPTIMIZERS.get("gsam")
    rho: float
    rho_min: float
    alpha: float

    def __init__(self, params: Any, **settings: Any) -> None:
        super().__init__(params, **settings)
        self.variant.param("rho_min").check(self.rho_min, high=self.rho)
        self.lr_max = self.param_groups[0]["lr"]

    def radius(self) -> float:
        """ρ_t at the current learning rate."""
        ratio = self.param_groups[0]["lr"] / self.lr_max if self.lr_max > 0 else 1.0
        return self.rho_min + (self.rho - self.rho_min) * ratio

    def _descent_gradient(self, closure: Closure) -> None:
        g = self._gradient()
        with self._perturbed(self._ascent(g, self.radius())):
            self._pass(closure, "train")
        g_s = self._gradient()
        along = vectors.dot(g, g_s) / vectors.dot(g_s, g_s).clamp_min(vectors.EPS ** 2)
        g_orthogonal = vectors.add_(vectors.scaled(g_s, -along), g)
        vectors.add_(g_s, g_orthogonal, alpha=-self.alpha)  # g_s are the .grad tensors the base step reads

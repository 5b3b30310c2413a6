"""SAM (Foret et al. 2021) and ASAM (Kwon et al. 2021)."""

from __future__ import annotations

from typing import Any

from .base import OPTIMIZERS, Closure, SharpnessAware, check
from .geometry import Elementwise


@OPTIMIZERS.register("sam")
class SAM(SharpnessAware):
    """Sharpness-aware minimisation: the base step uses ∇L(θ + ρ g/‖g‖). Two passes.

    Args:
        rho: perturbation radius ρ (0.05 for CIFAR-10, 0.1 for CIFAR-100 in the references).
    """

    def __init__(self, params: Any, *, rho: float = 0.05, **base: Any) -> None:
        super().__init__(params, **base)
        self.rho = check("rho", rho, low=0.0)

    def _descent_gradient(self, closure: Closure) -> None:
        with self._perturbed(self._ascent(self._gradient(), self.rho)):
            self._pass(closure, "train")


@OPTIMIZERS.register("asam")
class ASAM(SAM):
    """Adaptive SAM: SAM in ASAM's ball, e = ρ T²g/‖Tg‖ with T = |θ| + η on weights.

    Args:
        rho: radius ρ in the normalised ball (about 10× SAM's: 0.5 for CIFAR-10, 1.0 for CIFAR-100).
        eta: η, keeps T positive where a weight is zero (0.01 in the paper).
    """

    def __init__(self, params: Any, *, rho: float = 0.5, eta: float = 0.01, **base: Any) -> None:
        super().__init__(params, rho=rho, **base)
        self.geometry = Elementwise(check("eta", eta, low=0.0), self.model)

"""SAM (Foret et al. 2021) and ASAM (Kwon et al. 2021)."""

from __future__ import annotations

from typing import Any

from .base import Closure, SharpnessAware
from .geometry import Elementwise
from .variants import OPTIMIZERS


class SAM(SharpnessAware):
    """Sharpness-aware minimisation: the base step uses ∇L(θ + ρ g/‖g‖). Two passes.
    Hyper-parameter: ``rho`` (described, with its default and range, in :mod:`.variants`)."""

    variant = OPTIMIZERS.get("sam")
    rho: float

    def _descent_gradient(self, closure: Closure) -> None:
        with self._perturbed(self._ascent(self._gradient(), self.rho)):
            self._pass(closure, "train")


class ASAM(SAM):
    """Adaptive SAM: SAM in ASAM's ball, e = ρ T²g/‖Tg‖ with T = |θ| + η on weights.
    Hyper-parameters: ``rho`` (in the normalised ball, about 10× SAM's) and ``eta``."""

    variant = OPTIMIZERS.get("asam")
    eta: float

    def __init__(self, params: Any, **settings: Any) -> None:
        super().__init__(params, **settings)
        self.geometry = Elementwise(self.eta, self.model)

"""Align-SAM and Align-ASAM (the paper's Algorithm 1, DESIGN §4).

Per step, with the train batch B^t and an auxiliary batch B^a drawn independently of it:

    g_t = ∇L_{B^t}(θ)                                   (line 7, the clean pass)
    g_a = ∇L_{B^a}(θ)                                   (line 5)
    g̃_a = ∇L_{B^a}(θ + ρ_a g_a/‖g_a‖)                   (line 6)
    θ̃ = θ + ρ_t g_t/‖g_t‖ − ρ_a g̃_a/‖g̃_a‖              (line 8)
    θ ← base step with ∇L_{B^t}(θ̃), taken at θ          (line 9)

written with two radii as in the paper's convergence analysis: ρ_t = λρ on the train term and
ρ_a = ρ on the auxiliary term (with ρ_a = 0 it is SAM of radius ρ_t). Align-ASAM replaces
each g/‖g‖ by ASAM's T²g/‖Tg‖, T taken at θ. Cost: SAM plus two passes on B^a.
"""

from __future__ import annotations

from typing import Any

from . import vectors
from .base import Closure, SharpnessAware
from .geometry import Elementwise
from .variants import OPTIMIZERS


class AlignSAM(SharpnessAware):
    """Align-SAM. Asks the closure for ``"aux"``: the same B^a for both auxiliary passes.
    Hyper-parameters: ``rho`` (as SAM's) and ``lam``, the trade-off λ between the train and the
    auxiliary term (2 in all the paper's runs)."""

    variant = OPTIMIZERS.get("align-sam")
    rho: float
    lam: float

    def __init__(self, params: Any, **settings: Any) -> None:
        super().__init__(params, **settings)
        #: ρ_t = λρ, the radius of the train term.
        self.rho_train = self.lam * self.rho
        #: ρ_a = ρ, the radius of the auxiliary ascent and of the auxiliary term.
        self.rho_aux = self.rho

    def _descent_gradient(self, closure: Closure) -> None:
        g_train = self._gradient()
        self._pass(closure, "aux")
        with self._perturbed(self._ascent(self._gradient(), self.rho_aux)):
            self._pass(closure, "aux")
        g_aux_perturbed = self._gradient()
        offset = self._ascent(g_train, self.rho_train)
        vectors.add_(offset, self._ascent(g_aux_perturbed, self.rho_aux), alpha=-1.0)
        with self._perturbed(offset):
            self._pass(closure, "train")


class AlignASAM(AlignSAM):
    """Align-SAM in ASAM's ball (both perturbations). Hyper-parameters: ``rho`` (in the
    normalised ball, as ASAM's), ``lam`` and ASAM's ``eta``."""

    variant = OPTIMIZERS.get("align-asam")
    eta: float

    def __init__(self, params: Any, **settings: Any) -> None:
        super().__init__(params, **settings)
        self.geometry = Elementwise(self.eta, self.model)

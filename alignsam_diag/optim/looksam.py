"""LookSAM (Liu et al. 2022): SAM's extra pass only every k-th step."""

from __future__ import annotations

from typing import Any

from . import vectors
from .base import Closure, SharpnessAware
from .variants import OPTIMIZERS


class LookSAM(SharpnessAware):
    """On steps 0, k, 2k, …: SAM's g_s = ∇L(θ + ρ ĝ), stored as its part orthogonal to the
    clean gradient, g_v = g_s − (g_s·ĝ) ĝ, and the base step uses g_s. On the other steps: one
    pass only, and the base step uses g + α (‖g‖/‖g_v‖) g_v.

    As in the paper's Algorithm 1, the projection and the norms are over the whole parameter
    vector. (pytorch-optimizer's LookSAM takes them per parameter tensor; the two agree only
    for a model with a single parameter tensor; see tests/test_optim_reference.py.)

    Hyper-parameters: ``rho``, ``k`` (SAM's extra pass every k steps; 1 is SAM) and ``alpha``
    (α, the weight of the reused orthogonal part).
    """

    variant = OPTIMIZERS.get("looksam")
    rho: float
    k: int
    alpha: float

    def __init__(self, params: Any, **settings: Any) -> None:
        super().__init__(params, **settings)
        for group in self.param_groups:
            group.setdefault("looksam_step", 0)

    def _descent_gradient(self, closure: Closure) -> None:
        step = self.param_groups[0]["looksam_step"]
        g = self._gradient()
        params = self._params()
        if step % self.k == 0:
            with self._perturbed(self._ascent(g, self.rho)):
                self._pass(closure, "train")
            g_s = self._gradient()
            along = vectors.dot(g_s, g) / vectors.dot(g, g).clamp_min(vectors.EPS ** 2)
            for p, g_v in zip(params, vectors.add_(vectors.scaled(g, -along), g_s)):
                self.state[p]["orthogonal"] = g_v
        else:
            g_v = [self.state[p]["orthogonal"] for p in params]
            weight = self.alpha * vectors.norm(g) / vectors.norm(g_v).clamp_min(vectors.EPS)
            vectors.add_(g, vectors.scaled(g_v, weight))  # g are the .grad tensors the base step reads
        for group in self.param_groups:
            group["looksam_step"] = step + 1

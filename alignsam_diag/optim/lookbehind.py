"""Lookbehind-SAM (Mordido et al. 2024): k ascent steps back, one interpolated step forward."""

from __future__ import annotations

import torch

from . import vectors
from .base import Closure, SharpnessAware
from .variants import OPTIMIZERS
from .vectors import Vector


class LookbehindSAM(SharpnessAware):
    """Per step, on the one train batch (as the reference code does):

        a_0 = θ, fast_0 = θ
        for i = 1..k:  a_i = a_{i−1} + ρ ĝ(a_{i−1});  fast_i = base step from fast_{i−1} with g(a_i)
        θ ← φ + α (fast_k − φ),   φ = θ at the start of the step (the slow weights)

    The gradient at each ascent point serves both as that inner step's descent gradient and
    as the next ascent direction (the reference recomputes it on the same batch and point), so
    a step costs k + 1 passes and k base steps. With ``adaptive_alpha`` each parameter tensor
    gets α = (1 + cos(fast_1 − φ, fast_k − φ)) / 2, as in the reference code's ``alpha=-1``.

    Hyper-parameters: ``rho`` (the radius of each ascent step), ``k`` (ascent/descent steps per
    train batch; k = 1 with α = 1 is SAM), ``alpha`` (α, the step of the slow weights towards the
    fast ones) and ``adaptive_alpha`` (α per tensor from the alignment of the first and last fast
    step).
    """

    variant = OPTIMIZERS.get("lookbehind-sam")
    rho: float
    k: int
    alpha: float
    adaptive_alpha: bool

    def _update(self, closure: Closure) -> None:
        params = self._params()
        slow = vectors.clone(params)
        point, fast = vectors.clone(params), vectors.clone(params)
        first_fast: Vector = []
        grad = self._gradient()
        for i in range(self.k):
            vectors.add_(point, self._ascent(grad, self.rho))  # a_i
            vectors.copy_(params, point)
            self._pass(closure, "train")
            grad = self._gradient()  # g(a_i)
            vectors.copy_(params, fast)
            self._base_step()
            vectors.copy_(fast, params)  # fast_i
            if i == 0 and self.adaptive_alpha:
                first_fast = vectors.clone(fast)
        vectors.copy_(params, slow)
        if self.adaptive_alpha:
            for p, start, f1, fk in zip(params, slow, first_fast, fast):
                cosine = torch.nn.functional.cosine_similarity((f1 - start).flatten(), (fk - start).flatten(), dim=0)
                p.lerp_(fk, (1.0 + cosine) / 2.0)
        else:
            vectors.lerp_(params, fast, self.alpha)

"""Lookbehind-SAM (Mordido et al. 2024): k ascent steps back, one interpolated step forward."""

from __future__ import annotations

from typing import Any

import torch

from . import vectors
from .base import OPTIMIZERS, Closure, SharpnessAware, check
from .vectors import Vector


@OPTIMIZERS.register("lookbehind-sam")
class LookbehindSAM(SharpnessAware):
    """Per step, on the one train batch (as the reference code does):

        a_0 = θ, fast_0 = θ
        for i = 1..k:  a_i = a_{i−1} + ρ ĝ(a_{i−1});  fast_i = base step from fast_{i−1} with g(a_i)
        θ ← φ + α (fast_k − φ),   φ = θ at the start of the step (the slow weights)

    The gradient at each ascent point serves both as that inner step's descent gradient and
    as the next ascent direction (the reference recomputes it on the same batch and point), so
    a step costs k + 1 passes and k base steps. With ``adaptive_alpha`` each parameter tensor
    gets α = (1 + cos(fast_1 − φ, fast_k − φ)) / 2, as in the reference code's ``alpha=-1``.

    Args:
        rho: radius ρ of each ascent step.
        k: number of ascent/descent steps per train batch (k = 1, α = 1 is SAM).
        alpha: α, step of the slow weights towards the fast ones.
        adaptive_alpha: choose α per tensor from the alignment of the first and last fast step.
    """

    def __init__(self, params: Any, *, rho: float = 0.05, k: int = 2, alpha: float = 0.5,
                 adaptive_alpha: bool = False, **base: Any) -> None:
        super().__init__(params, **base)
        self.rho = check("rho", rho, low=0.0)
        self.k = check("k", k, low=1, integer=True)
        self.alpha = check("alpha", alpha, low=0.0, high=1.0)
        self.adaptive_alpha = bool(adaptive_alpha)

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

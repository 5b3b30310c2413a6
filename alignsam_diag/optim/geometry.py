"""The ball a SAM-family perturbation lives in.

SAM (Foret et al. 2021) perturbs within a Euclidean ball: the steepest ascent of radius ρ
is e = ρ g/‖g‖. ASAM (Kwon et al. 2021) normalises the ball by T = |θ| + η elementwise on
weight tensors and T = 1 on all other parameters, which makes the perturbation invariant to
rescaling the weights: e = ρ T²g/‖Tg‖ (so ‖T⁻¹e‖ = ρ).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import vectors
from .vectors import Vector


class Euclidean:
    """SAM's ball: e = ρ g/‖g‖."""

    def ascent(self, grad: Vector, params: Vector, radius: float) -> Vector:
        """The steepest ascent of length ``radius`` for gradient ``grad`` at ``params``."""
        return vectors.scaled(grad, radius / vectors.norm(grad).clamp_min(vectors.EPS))


class Elementwise:
    """ASAM's ball: e = ρ T²g/‖Tg‖ with T = |θ| + η on weight tensors, 1 elsewhere.

    Weight tensors are, as in the ASAM code, the parameters whose name in ``model`` contains
    ``"weight"`` (conv, linear and normalisation weights); biases and any other parameter get
    T = 1. Parameters not found in ``model`` (or all, without a model) count as weights when
    they have two or more dimensions.
    """

    def __init__(self, eta: float, model: Optional[nn.Module]) -> None:
        self.eta = eta
        self._names = {id(p): name for name, p in model.named_parameters()} if model is not None else {}

    def _is_weight(self, p: torch.Tensor) -> bool:
        name = self._names.get(id(p))
        return "weight" in name if name is not None else p.ndim > 1

    def ascent(self, grad: Vector, params: Vector, radius: float) -> Vector:
        scale = [p.abs().add_(self.eta) if self._is_weight(p) else None for p in params]
        tg = [g if t is None else t * g for g, t in zip(grad, scale)]
        factor = radius / vectors.norm(tg).clamp_min(vectors.EPS)
        return [(x if t is None else t * x) * factor for x, t in zip(tg, scale)]

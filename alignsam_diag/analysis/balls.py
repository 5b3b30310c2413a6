"""The perturbation sets of the sharpness measures, on flat parameter vectors (P,).

A :class:`Ball` is {δ : ‖δ ⊘ a‖ ≤ ρ} in ℓ2 or ℓ∞ with a = 1 (standard) or a = |w| elementwise
(adaptive, Kwon et al. 2021; Andriushchenko et al. 2023). Adaptive ℓ2 is an ellipsoid with
semi-axes ρ·|w_i|, adaptive ℓ∞ a box with half-widths ρ·|w_i|; a coordinate with a_i = 0 (a weight
that is exactly zero) cannot move. Everything a projected gradient ascent needs lives here: the
Euclidean projection onto the set (exact, also for the ellipsoid: :func:`project_ellipsoid`), the
ascent direction, random starting points and the set's own norm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

NORMS = ("l2", "linf")
GRAD_EPS = 1e-12  # added to ‖g‖ when normalising a gradient, as the reference code does


def project_ellipsoid(v: torch.Tensor, a: torch.Tensor, rho: float, max_iter: int = 100) -> torch.Tensor:
    """The Euclidean projection of ``v`` (P,) onto {δ : Σ_i (δ_i / a_i)² ≤ ρ², δ_i = 0 where a_i = 0}.

    Outside the ellipsoid the KKT conditions give δ_i = a_i² v_i / (a_i² + μ) with the Lagrange
    multiplier μ > 0 the root of ‖δ(μ) ⊘ a‖ = ρ. It is found by Newton's method on
    h(μ) = 1 / ‖δ(μ) ⊘ a‖, which is concave and increasing (Moré & Sorensen 1983, the
    trust-region secular equation: substituting δ = a ⊙ u turns the projection into a trust-region
    subproblem), so that from μ = 0 every iterate stays left of the root and the iteration
    converges monotonically and quadratically; it stops when μ no longer moves in float64. The
    result is finally scaled onto the set (a correction of order 1e-15). Computed in float64,
    returned in ``v``'s dtype."""
    a64, v64 = a.double(), v.double()
    movable = a64 > 0
    v64 = torch.where(movable, v64, torch.zeros_like(v64))
    a2 = a64.square()
    c = torch.where(movable, a2 * v64.square(), torch.zeros_like(v64))  # a_i² v_i²
    safe_a2 = torch.where(movable, a2, torch.ones_like(a2))
    size = float((c / safe_a2.square()).sum()) ** 0.5  # ‖v ⊘ a‖
    if size <= rho:
        return v64.to(v.dtype)
    mu, target = 0.0, 1.0 / rho
    for _ in range(max_iter):
        denom = safe_a2 + mu
        s = float((c / denom.square()).sum())
        h = s ** -0.5
        slope = s ** -1.5 * float((c / denom.pow(3)).sum())
        step = (target - h) / slope
        if not step > 1e-16 * max(mu, 1e-300):
            break
        mu += step
    delta = torch.where(movable, a2 * v64 / (safe_a2 + mu), torch.zeros_like(v64))
    size = float((delta[movable] / a64[movable]).square().sum()) ** 0.5
    if size > rho:
        delta = delta * (rho / size)
    return delta.to(v.dtype)


@dataclass
class Ball:
    """{δ : ‖δ ⊘ a‖ ≤ ρ} over P flat coordinates.

    norm: "l2" or "linf". rho: the radius (in units of |w| when adaptive). scale: a = |w| (P,)
    for the adaptive set, None for the standard one (a = 1)."""

    norm: str
    rho: float
    scale: Optional[torch.Tensor] = None

    def size(self, delta: torch.Tensor) -> float:
        """‖δ ⊘ a‖ in the ball's norm (ρ on its boundary); a coordinate with a_i = 0 counts 0 if
        δ_i = 0, infinity otherwise."""
        d = delta.double()
        if self.scale is not None:
            a = self.scale.double()
            d = torch.where(a > 0, d / torch.where(a > 0, a, torch.ones_like(a)),
                            torch.where(d == 0, 0.0, float("inf")).to(d))
        return float(d.norm() if self.norm == "l2" else d.abs().max())

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """The Euclidean projection of ``v`` (P,) onto the ball."""
        if self.norm == "linf":
            if self.scale is None:
                return v.clamp(-self.rho, self.rho)
            bound = self.rho * self.scale
            return torch.minimum(torch.maximum(v, -bound), bound)
        if self.scale is not None:
            return project_ellipsoid(v, self.scale, self.rho)
        size = float(v.norm())
        return v * (self.rho / size) if size > self.rho else v

    def __post_init__(self) -> None:
        #: the longest semi-axis over ρ: max a (1 for the standard ball)
        self.reach = 1.0 if self.scale is None or self.scale.numel() == 0 else float(self.scale.max())

    def ascent_direction(self, grad: torch.Tensor) -> torch.Tensor:
        """The step direction for gradient ``grad`` (P,), of unit length in the ball's units so
        that a step size of 2ρ spans it: ℓ2: (max a)·g/‖g‖; ℓ∞: a ⊙ sign(g) (the reference code's).

        ℓ2 steps along the gradient itself, so that a fixed point of the projected ascent
        δ = P(δ + η d) is a KKT point of the maximisation over the ellipsoid (g ∝ δ ⊘ a²). The
        reference steps along a ⊙ g/‖g‖ instead, whose fixed points satisfy a ⊙ g ∝ δ ⊘ a² —
        not optimal points; it stalls below the maximum (on a small CNN, adaptive ℓ2 at ρ = 0.5:
        0.167 against 0.243). The ℓ∞ box is separable, so its scaled sign step has the right
        fixed points."""
        if self.norm == "l2":
            return grad * (self.reach / (float(grad.norm()) + GRAD_EPS))
        step = grad.sign()
        return step if self.scale is None else step * self.scale

    def noise(self, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        """A random perturbation (P,) of the average case, in ``like``'s dtype and device:
        a ⊙ ρ ξ with ξ ~ N(0, I) (ℓ2: δ ~ N(0, ρ² diag(a²))) or ξ ~ U[−1, 1]^P (ℓ∞: uniform in
        the box), as the reference code draws them."""
        if self.norm == "linf":
            xi = torch.rand(like.shape, generator=generator, dtype=like.dtype, device=like.device) * 2 - 1
        else:
            xi = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
        point = self.rho * xi
        return point if self.scale is None else point * self.scale

    def random_point(self, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        """A random start (P,) of the worst case in ``like``'s dtype and device: uniform on the
        boundary in the ball's units (ℓ2: a ⊙ ρ ξ/‖ξ‖, ξ Gaussian over the coordinates that can
        move) or uniform in the box (ℓ∞: :meth:`noise`, as the reference code starts)."""
        if self.norm == "linf":
            return self.noise(generator, like)
        xi = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
        if self.scale is not None:
            xi = torch.where(self.scale > 0, xi, torch.zeros_like(xi))
        length = float(xi.norm())
        point = xi * (self.rho / length) if length > 0 else xi
        return point if self.scale is None else point * self.scale

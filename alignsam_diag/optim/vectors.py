"""Arithmetic on parameter-shaped vectors: lists of tensors, one per parameter.

Gradients, perturbations and parameter copies of the SAM family are such lists. These
helpers let the variants read like the papers' formulas (‖g‖, g·h, θ + e) and use
PyTorch's multi-tensor kernels, one launch per operation instead of one per tensor.
Norms and dot products are 0-dim tensors on the parameters' device, so no step ever
waits for the GPU to report a number.
"""

from __future__ import annotations

import torch

Vector = list[torch.Tensor]

#: Smallest norm a direction is divided by; only an all-zero vector ever meets it.
EPS = 1e-12


def norm(v: Vector) -> torch.Tensor:
    """‖v‖₂ over all entries of all tensors (0-dim)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(v)))


def dot(u: Vector, v: Vector) -> torch.Tensor:
    """u·v over all entries (0-dim)."""
    return torch.stack([torch.sum(a * b) for a, b in zip(u, v)]).sum()


def scaled(v: Vector, factor: float | torch.Tensor) -> Vector:
    """A new vector ``factor · v``."""
    return list(torch._foreach_mul(v, factor))


def add_(v: Vector, u: Vector, alpha: float = 1.0) -> Vector:
    """In place ``v ← v + alpha · u``; returns v."""
    torch._foreach_add_(v, u, alpha=alpha)
    return v


def lerp_(v: Vector, end: Vector, weight: float) -> None:
    """In place ``v ← v + weight · (end − v)``, exact at weight 0 and 1 and where v = end."""
    torch._foreach_lerp_(v, end, weight)


def clone(v: Vector) -> Vector:
    """Independent copies of the tensors of v (detached), made by one multi-tensor copy."""
    copies = [torch.empty_like(t, requires_grad=False) for t in v]
    with torch.no_grad():
        copy_(copies, v)
    return copies


def copy_(dst: Vector, src: Vector) -> None:
    """In place ``dst ← src`` (exact)."""
    torch._foreach_copy_(dst, src)


class Snapshot:
    """Exact copies of a list of tensors in storage kept from call to call, so that a copy
    taken every step allocates nothing once warm. Each :meth:`take` overwrites the last."""

    def __init__(self) -> None:
        self._storage: Vector = []

    def take(self, v: Vector) -> Vector:
        """Copies of v (valid until the next ``take``)."""
        same_layout = len(self._storage) == len(v) and all(
            s.shape == t.shape and s.dtype == t.dtype and s.device == t.device for s, t in zip(self._storage, v))
        if not same_layout:
            self._storage = [torch.empty_like(t, requires_grad=False) for t in v]
        with torch.no_grad():
            copy_(self._storage, v)
        return self._storage

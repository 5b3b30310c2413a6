"""The SAM family, Align-SAM included, behind one protocol.

>>> optimizer = create("align-sam", model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4,
...                    model=model, rho=0.05, lam=2.0)
>>> def closure(which):                      # "train" or "aux"
...     x, y = batch if which == "train" else aux_batch
...     loss = F.cross_entropy(model(x), y)
...     loss.backward()
...     return loss
>>> loss = optimizer.step(closure)          # every pass; the loss at the unperturbed θ

Variants by name (:data:`OPTIMIZERS`), each described in :mod:`.variants` (its hyper-parameters
with their defaults and ranges: :func:`hyperparameters`; ``OPTIMIZERS.get("gsam").hyper``).

The descriptions import no torch, so ``from alignsam_diag.optim import OPTIMIZERS`` is cheap; the
classes, :func:`create` and :data:`BASES` are imported (with torch) on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .variants import OPTIMIZERS, Hyper, Variant, hyperparameters

#: Names of the torch side that are not variant classes, and their modules.
_MODULES = {"create": "factory", "AMP_MODES": "factory", "BASES": "base", "Closure": "base",
            "SharpnessAware": "base"}


def __getattr__(name: str) -> Any:
    """A variant class (``SAM``, ``AlignSAM``, ...) or a name of :data:`_MODULES`, imported on first use."""
    if name in _MODULES:
        return getattr(import_module(f"{__name__}.{_MODULES[name]}"), name)
    for variant in map(OPTIMIZERS.get, OPTIMIZERS):
        if variant.implementation.endswith(f":{name}"):
            return variant.load()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AMP_MODES", "ASAM", "BASES", "GSAM", "OPTIMIZERS", "SAM", "AlignASAM", "AlignSAM", "Closure", "FriendlySAM",
    "Hyper", "LookSAM", "LookbehindSAM", "Plain", "SharpnessAware", "VaSSO", "Variant", "create", "hyperparameters",
]

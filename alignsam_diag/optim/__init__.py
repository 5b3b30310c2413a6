"""The SAM family, Align-SAM included, behind one protocol.

>>> optimizer = create("align-sam", model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4,
...                    model=model, rho=0.05, lam=2.0)
>>> def closure(which):                      # "train" or "aux"
...     x, y = batch if which == "train" else aux_batch
...     loss = F.cross_entropy(model(x), y)
...     loss.backward()
...     return loss
>>> loss = optimizer.step(closure)          # every pass; the loss at the unperturbed θ

Variants by name (:data:`OPTIMIZERS`), with their hyper-parameters (:func:`hyperparameters`):
``sgd`` (the base optimizer alone), ``sam`` (rho), ``asam`` (rho, eta), ``align-sam`` (rho, lam),
``align-asam`` (rho, lam, eta), ``gsam`` (rho, rho_min, alpha), ``fsam`` (rho, sigma, lam),
``vasso`` (rho, theta), ``looksam`` (rho, k, alpha), ``lookbehind-sam`` (rho, k, alpha,
adaptive_alpha). A name means the symbol of that variant's paper: ``lam`` is Align-SAM's
trade-off λ and Friendly-SAM's averaging λ; ``alpha`` and ``k`` are GSAM's, LookSAM's or
Lookbehind's own.
"""

from .align import AlignASAM, AlignSAM
from .averaged import FriendlySAM, VaSSO
from .base import BASES, OPTIMIZERS, Closure, Plain, SharpnessAware
from .factory import create, hyperparameters
from .gsam import GSAM
from .lookbehind import LookbehindSAM
from .looksam import LookSAM
from .sam import ASAM, SAM

__all__ = [
    "ASAM", "BASES", "GSAM", "OPTIMIZERS", "SAM", "AlignASAM", "AlignSAM", "Closure", "FriendlySAM",
    "LookSAM", "LookbehindSAM", "Plain", "SharpnessAware", "VaSSO", "create", "hyperparameters",
]

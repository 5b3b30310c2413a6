"""Build any SAM-family optimizer by name, with its hyper-parameters validated."""

from __future__ import annotations

import inspect
from typing import Any, Optional

from torch import nn

from ..errors import UserError
from .base import OPTIMIZERS, SharpnessAware

AMP_MODES = (None, "bf16", "fp16")


def hyperparameters(name: str) -> dict[str, Any]:
    """The variant's own hyper-parameters and their reference defaults, e.g.
    ``{"rho": 0.05, "lam": 2.0}`` for ``align-sam``; ``{}`` for ``sgd``."""
    shared = inspect.signature(SharpnessAware.__init__).parameters
    own = inspect.signature(OPTIMIZERS.get(name).__init__).parameters.values()
    return {p.name: p.default for p in own if p.kind is p.KEYWORD_ONLY and p.name not in shared}


def _flags(names: list[str]) -> str:
    return ", ".join("--" + n.replace("_", "-") for n in names) or "none"


def create(name: str, params: Any, base: str = "sgd", *, lr: float, momentum: float = 0.0,
           weight_decay: float = 0.0, nesterov: bool = False, model: Optional[nn.Module] = None,
           amp: Optional[str] = None, **hyper: Any) -> SharpnessAware:
    """The optimizer ``name`` (see :data:`OPTIMIZERS`) on base optimizer ``base``.

    ``hyper`` holds the variant's own hyper-parameters (:func:`hyperparameters`); one it does not
    take is an error. ``amp`` is the autocast mode the closure will use: ``"fp16"`` (which needs
    a GradScaler, and a scaler cannot unscale two passes) is refused for every variant that
    makes more than one pass. See :class:`~alignsam_diag.optim.base.SharpnessAware` for the rest.
    """
    cls = OPTIMIZERS.get(name)
    allowed = list(hyperparameters(name))
    unknown = sorted(set(hyper) - set(allowed))
    if unknown:
        raise UserError(f"{name} does not take {_flags(unknown)}; its hyper-parameters are: {_flags(allowed)}.")
    if amp not in AMP_MODES:
        raise UserError(f"--amp {amp}: choose bf16 or fp16 (or leave it off).")
    if amp == "fp16" and not cls.single_pass:
        raise UserError(f"--amp fp16 does not work with {name}: a GradScaler cannot unscale the gradients of "
                        f"its several passes per step; use --amp bf16.")
    return cls(params, base=base, lr=lr, momentum=momentum, weight_decay=weight_decay,
               nesterov=nesterov, model=model, **hyper)

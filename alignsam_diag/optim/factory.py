"""Build any SAM-family optimizer by name, with its hyper-parameters validated."""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from ..errors import OptionError
from .base import SharpnessAware
from .variants import OPTIMIZERS

AMP_MODES = (None, "bf16", "fp16")


def create(name: str, params: Any, base: str = "sgd", *, lr: float, momentum: float = 0.0,
           weight_decay: float = 0.0, nesterov: bool = False, model: Optional[nn.Module] = None,
           amp: Optional[str] = None, **hyper: Any) -> SharpnessAware:
    """The optimizer ``name`` (see :data:`OPTIMIZERS`) on base optimizer ``base``.

    ``hyper`` holds the variant's own hyper-parameters (:func:`hyperparameters`); one it does not
    take, or a value out of its range, is an error
    (:meth:`~alignsam_diag.optim.variants.Variant.resolve`). ``amp`` is the autocast mode the
    closure will use: ``"fp16"`` (which needs a GradScaler, and a scaler cannot unscale two
    passes) is refused for every variant that makes more than one pass. See :class:`~alignsam_diag.optim.base.SharpnessAware` for the rest.
    """
    variant = OPTIMIZERS.get(name)
    if amp not in AMP_MODES:
        raise OptionError("amp", amp, "choose bf16 or fp16 (or leave it off).")
    if amp == "fp16" and not variant.single_pass:
        raise OptionError("amp", amp, f"does not work with {name}: a GradScaler cannot unscale the gradients "
                          "of its several passes per step; use {amp} bf16.", mentions=("amp",))
    return variant.load()(params, base=base, lr=lr, momentum=momentum, weight_decay=weight_decay,
                          nesterov=nesterov, model=model, **hyper)

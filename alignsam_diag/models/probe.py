"""One forward pass that tells, before any work, whether a model fits the data."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError, first_line


@torch.no_grad()
def check_model_takes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str, hint: str) -> None:
    """Run ``model`` on the first two samples of ``x`` (N×C×H×W or N×D) in eval mode (no state
    changes; the mode is restored): it must accept their shape and give one row of class scores
    per sample, with an output for every label in ``y``. Otherwise a one-line :class:`UserError`
    naming ``name`` and ending in ``hint`` (what to change)."""
    shape = "×".join(map(str, x.shape[1:]))
    was_training = model.training
    try:
        out = model.eval()(x[:2])
    except (RuntimeError, ValueError) as err:
        reason = first_line(err)
        raise UserError(f"{name}: the model cannot take these samples (each {shape}): {reason}; {hint}.") from None
    finally:
        model.train(was_training)
    if out.dim() != 2:
        raise UserError(f"{name}: the model returns outputs of shape {tuple(out.shape)} for samples each {shape}; "
                        f"it must give one row of class scores per sample; {hint}.")
    if int(y.max()) >= out.shape[1]:
        raise UserError(f"{name}: the model has {out.shape[1]} outputs but the labels go up to {int(y.max())}; "
                        f"{hint} (or --num-classes).")
